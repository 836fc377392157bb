"""Named settings: the one place where calibrated defaults live, selected by name everywhere.

A setting gives each defense's parameters (and, where it needs them, the attack's strength). The
CLI's `--setting`, every notebook's `setting` parameter and the sweeps read these. A config class's
own defaults are the official code's (each defense module cites the file and line), so:

- "paper": every defense at its config's defaults, i.e. the Panacea paper's baseline settings.
- "embedded": the embedded world's deviations from "paper", each with its reason below.
- "authors": each defense at its own authors' repository defaults where those differ from the
  Panacea scripts (Booster: lambda 5, alpha 0.1, script/alignment/smooth_align.sh:14-15 of git-disl/Booster).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from panacea_lab.config import ATTACK_PRESETS, ConfigError, DefenseConfig


@dataclass(frozen=True)
class Setting:
    name: str
    about: str
    attack_preset: str = "default"
    defenses: dict[str, dict] = field(default_factory=dict)
    # a training recipe: ModelConfig / AlignConfig / AttackConfig fields this setting changes
    model: dict = field(default_factory=dict)
    align: dict = field(default_factory=dict)
    attack: dict = field(default_factory=dict)

    def defense(self, name: str, **overrides) -> DefenseConfig:
        """Defense `name`'s config under this setting; keyword overrides win."""
        from panacea_lab import defenses  # the registry imports torch: only when a config is built

        return defenses.get(name).make(**{**self.defenses.get(name, {}), **overrides})

    def param(self, defense: str, field_name: str):
        """A defense parameter's value under this setting (e.g. Panacea's lam)."""
        return getattr(self.defense(defense), field_name)


EMBEDDED = {
    # the paper's lambda 1e-3 leaves HS 15 on this world (README "How lambda = 0.1 was found")
    "panacea": {"rho": 1.0, "lam": 0.1},
    # the embedded attack is 300 steps, not 20 x 1000: the official 10% alignment share in cycles of
    # 100 steps, so that 3 cycles happen (the official run has 20)
    "lisa": {"align_steps": 10, "finetune_steps": 90},
    # Vaccine, RepNoise, Booster, Antidote: the official values. RepNoise's official loss and weights
    # still let the embedded model learn to refuse (measured in the repnoise module's docstring).
}

SETTINGS = {
    "embedded": Setting("embedded", "the embedded world's calibrated defaults", defenses=EMBEDDED),
    "paper": Setting("paper", "the official code's defaults for every defense (the Panacea paper's baselines)"),
    # the paper's training recipe on the embedded world (w-yibo/Panacea script/finetune/panacea_gsm8k.sh:
    # constant lr, weight decay 0.1, 20 epochs; train.py: LoRA r 32, alpha 4 on q/k/v) with the official
    # defenses; alignment keeps the embedded world's data size and lr (the paper's is 5000 samples at 5e-4)
    "paper-recipe": Setting("paper-recipe", "the paper's training recipe and the official defenses",
                            defenses={"panacea": {"rho": 1.0, "lam": 1e-3}},
                            model={"lora_r": 32, "lora_alpha": 4, "lora_targets": ("q_proj", "k_proj", "v_proj")},
                            align={"schedule": "constant", "weight_decay": 0.1},
                            attack={"schedule": "constant", "weight_decay": 0.1, "epochs": 20.0}),
    "authors": Setting("authors", "each defense's own repository defaults where they differ from Panacea's",
                       defenses={"booster": {"lam": 5.0, "alpha": 0.1}}),
}
DEFAULT_SETTING = "embedded"

# Step rules profiled beside the registry's (studies.overhead): amortized Panacea (the exact step every
# 4th step, SFT between) and the two-pass step (eps from the previous step's harmful pass).
PROFILE_VARIANTS = {"panacea_k4": ("panacea", {"recompute_every": 4}),
                    "panacea_two_pass": ("panacea", {"step": "two_pass", "h_const": True})}


def get(name: str = DEFAULT_SETTING) -> Setting:
    if name not in SETTINGS:
        raise ConfigError(f"setting = {name!r}: unknown; use one of {', '.join(SETTINGS)}")
    setting = SETTINGS[name]
    if setting.attack_preset not in ATTACK_PRESETS:
        raise ConfigError(f"setting {name!r}: attack_preset = {setting.attack_preset!r} is not in ATTACK_PRESETS")
    return setting
