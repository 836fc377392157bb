"""Score w + a restricted eps of one trained Panacea run live, in about a second (notebook 04's explorer).

The cached path (`pipeline.evaluate(..., EpsConfig(...))`) rebuilds the model for each setting and
stores the result; a person moving sliders needs an answer in seconds instead. Here the model, its w
and its eps stay in memory: each scoring adds the restricted eps to the LoRA tensors, evaluates a
small fixed subset without the store, and copies the saved tensors back (`perturb.applied`), so w is
bit for bit what it was. The weights scored are exactly those the cached path scores for the same
`EpsConfig`, so the two give the same numbers.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import pandas as pd
import torch
from safetensors.torch import load_file

from panacea_lab.studies.layer_ablation import check_trained_run, eps_parts
from panacea_lab.config import AttackConfig, EvalConfig
from panacea_lab.defenses.panacea import EpsConfig
from panacea_lab.defenses.perturb import applied, norms_by_layer_module, restrict
from panacea_lab.evaluation.evaluate import evaluate_model
from panacea_lab.pipeline.context import get_tokenizer, world_of
from panacea_lab.pipeline.stages import artifact, attack, load_stage_model
from panacea_lab.training.store import RunStore


def explorer_eval(task: str, n: int = 50, **kw) -> EvalConfig:
    """The explorer's small fixed subset: the first n harmful test prompts and n samples of the task."""
    return EvalConfig(n_harmful=n, n_task=n, tasks=(task,), **kw)


class LiveEps:
    """One Panacea run held in memory, scored under any restriction of its eps."""

    def __init__(self, run: AttackConfig, store: RunStore, eval_cfg: EvalConfig | None = None):
        check_trained_run(run)
        attack(run, store)  # cached: trains only when the run is not in the store yet
        self.run, self.eval_cfg = run, eval_cfg or explorer_eval(run.task)
        self.model = load_stage_model("attack", run, store)
        self.eps = load_file(str(artifact(store, "attack", run, "eps.safetensors")))
        self.layers, self.modules = eps_parts(self.eps)
        self.tokenizer, self.world = get_tokenizer(run.align.model), world_of(run.align)
        self._cells = norms_by_layer_module(self.eps).groupby(["layer", "module"], as_index=False)["sq_norm"].sum()

    def post(self, layer_scales: Sequence[float] | None = None, modules: Iterable[str] | None = None) -> EpsConfig:
        """The `EpsConfig` of per-layer factors and the modules switched on (None: all), written the
        shortest way (all factors 1 -> none given; every module on -> all), so equal settings share a key."""
        scales = tuple(float(s) for s in layer_scales or ())
        scales = () if all(s == 1 for s in scales) else scales
        if modules is None:
            return EpsConfig(layer_scales=scales)
        on = tuple(modules)
        if not on:  # nothing switched on: w alone
            return EpsConfig(scale=0.0, layer_scales=scales)
        return EpsConfig(modules=() if set(on) >= set(self.modules) else on, layer_scales=scales)

    def delta(self, post: EpsConfig) -> dict[str, torch.Tensor]:
        return restrict(self.eps, post.layers, post.modules, post.layer_scales, post.scale)

    def score(self, post: EpsConfig) -> dict:
        """HS / refusal / other / FA_<task> of w + the restricted eps on the small subset, and the seconds taken."""
        t0 = time.perf_counter()
        with torch.no_grad(), applied(self.model, self.delta(post)):
            ev = evaluate_model(self.model, self.tokenizer, self.world, self.eval_cfg)
        out = {m: ev[m] for m in ("HS", "refusal", "other")}
        out.update({f"FA_{task}": v for task, v in ev["FA"].items()})
        return {**out, "seconds": time.perf_counter() - t0}

    def applied_shares(self, post: EpsConfig) -> pd.DataFrame:
        """Per (layer, module): the applied part's squared norm over ||eps||^2 (0 where switched off),
        the frame `plots.coefficient_heatmap(..., value="applied_share", normalise=None)` draws."""
        part = self.delta(post)
        cells = self._cells.copy()
        if part:
            got = norms_by_layer_module(part).groupby(["layer", "module"])["sq_norm"].sum()
            cells["applied_share"] = [got.get((layer, module), 0.0) for layer, module in
                                      zip(cells["layer"], cells["module"])]
        else:
            cells["applied_share"] = 0.0
        cells["applied_share"] /= float(self._cells["sq_norm"].sum())
        return cells
