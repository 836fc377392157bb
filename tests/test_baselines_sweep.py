"""The baseline comparison: each method trains its own stages; an alignment-stage defense changes
only the alignment the (plain) attack starts from."""
from __future__ import annotations

import pytest

from panacea_lab import settings
from panacea_lab.studies import baselines
from panacea_lab.config import AlignConfig, ConfigError, EvalConfig

EVAL = EvalConfig(n_harmful=4, n_task=4, max_new_tokens=8, tasks=("sentiment",))


def test_sweep_rows_and_stages(tiny_cfg, store, monkeypatch):
    tiny = settings.Setting("tiny", "test", defenses={"vaccine": {"rho": 1.0},
                                                      "lisa": {"align_steps": 1, "finetune_steps": 1,
                                                               "align_batch_size": 4}})
    monkeypatch.setitem(settings.SETTINGS, "tiny", tiny)
    align = AlignConfig(model=tiny_cfg, n_refusal=16, n_replay_per_task=2, epochs=1, batch_size=8)
    df = baselines.baseline_sweep([0.2], [0], methods=("none", "vaccine", "lisa"), align_cfg=align, eval_cfg=EVAL,
                                  store=store, setting="tiny", n=20, epochs=1)
    assert list(zip(df["method"], df["variant"])) == [("none", "w"), ("vaccine", "w"), ("lisa", "w"), ("none", "fresh")]
    assert list(df["label"]) == ["SFT (no defense)", "Vaccine", "Lisa", "SFT (no defense) (fresh adapter)"]
    aligns = [d for d in (store.root / "align").iterdir() if not d.name.startswith(".")]
    attacks = [d for d in (store.root / "attack").iterdir() if not d.name.startswith(".")]
    assert len(aligns) == 2  # SFT and Vaccine alignments; Lisa reuses SFT's
    assert len(attacks) == 4  # the undefended attack once as each method's official adapter mode
    assert ((df["HS"] + df["refusal"] + df["other"]).round(6) == 100).all()


def test_unknown_method_is_named():
    with pytest.raises(ConfigError, match="rmu"):
        baselines.baseline_sweep([0.1], [0], methods=("none", "rmu"))
    assert baselines.aligned_with(AlignConfig(), "lisa") == AlignConfig()  # Lisa acts in fine-tuning


def test_each_method_fine_tunes_as_its_official_scripts():
    from panacea_lab import defenses
    from panacea_lab.defenses.registry import Defense

    align = AlignConfig()
    modes = {m: baselines.baseline_configs(m, [0.1], [0], "sentiment", "default", align)[0][2].adapter
             for m in ("none", "vaccine", "repnoise", "booster", "lisa")}
    assert modes == {"none": "continue", "vaccine": "fresh", "repnoise": "fresh", "booster": "continue",
                     "lisa": "fresh"}
    assert defenses.get("panacea").finetune_adapter == "continue"
    assert defenses.get("antidote").finetune_adapter == "fresh"
    forced = baselines.baseline_configs("vaccine", [0.1], [0], "sentiment", "default", align, adapter="continue")
    assert forced[0][2].adapter == "continue"  # an explicit override wins
    vaccine = defenses.get("vaccine")
    with pytest.raises(ConfigError, match="finetune_adapter"):
        Defense(name="vaccine", stage=vaccine.stage, config=vaccine.config, label="x", rule=vaccine.rule,
                finetune_adapter="merge")
