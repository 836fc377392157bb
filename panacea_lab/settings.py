"""Named settings: the one place where calibrated defaults live, selected by name everywhere.

A setting gives each defense's parameters (and, where it needs them, the attack's strength). The
CLI's `--setting`, every notebook's `setting` parameter and the sweeps read these; a config class's
own defaults stay the paper family's published values.

- "embedded": the embedded world's calibration (README "How lambda = 0.1 was found"): Panacea at
  lambda 0.1 (the paper's 1e-3 leaves HS 15 there), Lisa's 10% alignment share over the 300-step attack.
- "paper": every defense at its config's defaults, i.e. the values of the official code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from panacea_lab import defenses
from panacea_lab.config import ATTACK_PRESETS, ConfigError, DefenseConfig


@dataclass(frozen=True)
class Setting:
    name: str
    about: str
    attack_preset: str = "default"
    defenses: dict[str, dict] = field(default_factory=dict)

    def defense(self, name: str, **overrides) -> DefenseConfig:
        """Defense `name`'s config under this setting; keyword overrides win."""
        return defenses.get(name).make(**{**self.defenses.get(name, {}), **overrides})

    def param(self, defense: str, field_name: str):
        """A defense parameter's value under this setting (e.g. Panacea's lam)."""
        return getattr(self.defense(defense), field_name)


SETTINGS = {
    "embedded": Setting("embedded", "the embedded world's calibrated defaults",
                        defenses={"panacea": {"rho": 1.0, "lam": 0.1},
                                  "lisa": {"align_steps": 30, "finetune_steps": 270}}),
    "paper": Setting("paper", "the official code's defaults for every defense"),
}
DEFAULT_SETTING = "embedded"


def get(name: str = DEFAULT_SETTING) -> Setting:
    if name not in SETTINGS:
        raise ConfigError(f"setting = {name!r}: unknown; use one of {', '.join(SETTINGS)}")
    setting = SETTINGS[name]
    if setting.attack_preset not in ATTACK_PRESETS:
        raise ConfigError(f"setting {name!r}: attack_preset = {setting.attack_preset!r} is not in ATTACK_PRESETS")
    return setting
