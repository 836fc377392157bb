"""Defenses: one module per defense, each exporting its validated config and one `Defense` record.

Registry (defenses/registry.py): the pipeline, the CLI, the sweeps, the overhead profiler and the
notebooks find every defense here. Adding one is a module plus one line below (docs/ARCHITECTURE.md).

May import: panacea_lab.config, data, models, training.loop.
"""
from panacea_lab.defenses import antidote, booster, harmful_ascent, lisa, panacea, random_noise, repnoise, vaccine
from panacea_lab.defenses.registry import REGISTRY, UNDEFENDED, Defense, get, label, names, of, register

for _record in (vaccine.DEFENSE, repnoise.DEFENSE, booster.DEFENSE,  # alignment stage
                panacea.DEFENSE, lisa.DEFENSE,  # fine-tuning stage
                random_noise.NOISE, antidote.DEFENSE, panacea.EPS,  # post-fine-tuning
                random_noise.RANDOM_DIRECTION, harmful_ascent.DEFENSE, panacea.EPS_CONTROL):  # controls
    register(_record)

__all__ = ["REGISTRY", "UNDEFENDED", "Defense", "get", "label", "names", "of", "register"]

from panacea_lab.defenses.registry import printed_label, trained_with_half  # noqa: E402

__all__ += ["printed_label", "trained_with_half"]
