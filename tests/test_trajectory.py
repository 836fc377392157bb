"""HS along fine-tuning steps: scoring checkpoints in place must not change the run it scores."""
from __future__ import annotations

import pytest

from panacea_lab import pipeline
from panacea_lab.config import AlignConfig, AttackConfig, ConfigError, EvalConfig
from panacea_lab.studies.trajectory import Trajectory, trajectory

EVAL = EvalConfig(n_harmful=6, n_task=6, max_new_tokens=12, tasks=("sentiment",))


def _attack(tiny_cfg):
    align = AlignConfig(model=tiny_cfg, n_refusal=24, n_replay_per_task=4, epochs=1, batch_size=8)
    return AttackConfig(align=align, n=30, p=0.2, epochs=2, lr=1e-3, batch_size=10)


def test_trajectory_scores_checkpoints_without_disturbing_the_run(tiny_cfg, store):
    cfg = _attack(tiny_cfg)
    traj = trajectory(Trajectory(run=cfg, every=4, eval=EVAL), store)
    assert [p["step"] for p in traj["points"]] == [0, 4, 6]  # 6 steps; the last one is always scored
    assert traj["n_harmful"] == 6

    plain = pipeline.attack(cfg, store)  # the same run, trained without the hook
    assert [r["loss"] for r in traj["train"]["log"]] == [r["loss"] for r in plain["train"]["log"]]
    first, last = traj["points"][0], traj["points"][-1]
    aligned = pipeline.evaluate("align", cfg.align, store, EVAL)
    finished = pipeline.evaluate("attack", cfg, store, EVAL)
    assert (first["HS"], first["FA_sentiment"]) == (aligned["HS"], aligned["FA"]["sentiment"])
    assert (last["HS"], last["other"], last["FA_sentiment"]) == (finished["HS"], finished["other"],
                                                                  finished["FA"]["sentiment"])


def test_trajectory_rejects_a_zero_interval():
    with pytest.raises(ConfigError, match="every"):
        Trajectory(every=0)


def test_panacea_trajectory_scores_w_and_w_plus_the_current_eps(panacea_run, store):
    """Each checkpoint of a Panacea run is scored as w and as w + that step's eps; the last pair equals
    the finished run evaluated without and with its stored eps, and w + eps at step 0 is the aligned model."""
    from panacea_lab.defenses.panacea import EpsConfig

    traj = trajectory(Trajectory(run=panacea_run, every=1, eval=EVAL), store)
    assert [p["step"] for p in traj["points_eps"]] == [p["step"] for p in traj["points"]] == [0, 1, 2]
    assert traj["points_eps"][0] == traj["points"][0]
    keys = ("HS", "refusal", "other", "FA_sentiment")
    pipeline.attack(panacea_run, store)  # the same run, trained without the hook, stored with its eps
    finished_w = pipeline.evaluate("attack", panacea_run, store, EVAL)
    finished_eps = pipeline.evaluate("attack", panacea_run, store, EVAL, post=EpsConfig())
    row = lambda ev: (ev["HS"], ev["refusal"], ev["other"], ev["FA"]["sentiment"])  # noqa: E731
    assert tuple(traj["points"][-1][k] for k in keys) == row(finished_w)
    assert tuple(traj["points_eps"][-1][k] for k in keys) == row(finished_eps)


def test_a_plain_trajectory_has_no_eps_points(tiny_cfg, store):
    traj = trajectory(Trajectory(run=_attack(tiny_cfg), every=4, eval=EVAL), store)
    assert "points_eps" not in traj
