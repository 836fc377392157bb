"""End to end on tiny settings: align -> poisoned fine-tuning -> evaluate, cached and reproducible."""
from __future__ import annotations

import pytest

from panacea_lab import pipeline
from panacea_lab.pipeline.stages import artifact
from panacea_lab.config import AlignConfig, AttackConfig, EvalConfig
from panacea_lab.studies.sweeps import attack_sweep, summarize
from panacea_lab.training.store import RunStore

EVAL = EvalConfig(n_harmful=8, n_task=6, max_new_tokens=16, tasks=("sentiment", "arithmetic"))


def _align(tiny_cfg):
    return AlignConfig(model=tiny_cfg, n_refusal=24, n_replay_per_task=4, epochs=1, batch_size=8)


def _attack(tiny_cfg, **kw):
    return AttackConfig(align=_align(tiny_cfg), **{"n": 30, "p": 0.2, "epochs": 1, "batch_size": 10, **kw})


def test_pipeline_results_and_reuse(tiny_cfg, store, monkeypatch):
    cfg = _attack(tiny_cfg)
    res = pipeline.attack(cfg, store)
    assert res["n_harmful"] == 6 and res["train"]["steps"] == 3
    assert (artifact(store, "align", cfg.align, "adapter") / "adapter_model.safetensors").exists()
    ev = pipeline.evaluate("attack", cfg, store, EVAL)
    assert ev["HS"] + ev["refusal"] + ev["other"] == pytest.approx(100.0)
    assert set(ev["FA"]) == {"sentiment", "arithmetic"}

    def boom(*a, **k):
        raise AssertionError("a cached stage was recomputed")

    monkeypatch.setattr("panacea_lab.pipeline.stages.train_loop", boom)
    monkeypatch.setattr("panacea_lab.pipeline.evaluations.evaluate_model", boom)
    assert pipeline.attack(cfg, store) == res
    assert pipeline.evaluate("attack", cfg, store, EVAL) == ev


def test_fresh_adapter_starts_from_the_merged_aligned_model(tiny_cfg, store):
    cfg = _attack(tiny_cfg, adapter="fresh", p=0.0)
    pipeline.attack(cfg, store)
    model = pipeline.load_stage_model("attack", cfg, store)
    aligned = pipeline.load_stage_model("align", cfg.align, store)
    # the attack adapter starts at B = 0 and only it trained: the merged aligned weights are its base
    w_attack = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    aligned.merge_adapter()
    w_aligned = aligned.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert w_attack.allclose(w_aligned, atol=1e-6)


@pytest.mark.slow
def test_same_seed_same_numbers_in_separate_stores(tiny_cfg, tmp_path):
    runs = []
    for name in ("a", "b"):
        store = RunStore(tmp_path / name)
        runs.append(attack_sweep([0.0, 0.2], [0], align_cfg=_align(tiny_cfg), eval_cfg=EVAL, store=store,
                                 include_reference=False, n=30, epochs=1))
    cols = ["HS", "refusal", "other", "FA_sentiment", "FA_arithmetic"]
    assert runs[0][cols].equals(runs[1][cols])
    table = summarize(runs[0])
    assert list(table.index) == ["fine-tuned p=0", "fine-tuned p=0.2"]


def test_a_merged_evaluation_scores_the_same_transformed_model_without_the_adapter(tiny_cfg, store, monkeypatch):
    import dataclasses

    from panacea_lab import defenses
    from panacea_lab.pipeline import evaluations

    cfg = _attack(tiny_cfg)
    pipeline.attack(cfg, store)
    noise = defenses.get("noise").make(std=0.05)  # a transform of the LoRA tensors, applied before the merge
    plain = pipeline.evaluate("attack", cfg, store, EVAL, noise)
    seen, score = [], evaluations.evaluate_model
    monkeypatch.setattr(evaluations, "evaluate_model", lambda model, *a, **k: seen.append(model) or score(model, *a, **k))
    merged = pipeline.evaluate("attack", cfg, store, dataclasses.replace(EVAL, merge=True), noise)
    assert len(seen) == 1 and not hasattr(seen[0], "peft_config")  # generated without the adapter's layers
    same = ("HS", "refusal", "other", "FA", "samples")  # the embedded world keeps sample answers: compare those
    assert {k: merged[k] for k in same} == {k: plain[k] for k in same}
    assert pipeline.evaluate("attack", cfg, store, EVAL)["samples"] != plain["samples"]  # the transform is seen
