"""The answer-loss probe: token-weighted answer NLL, and each probed model built as the pipeline builds it."""
from __future__ import annotations

import pytest
import torch

from panacea_lab import pipeline
from panacea_lab.studies.answer_loss import answer_nll, loss_shift, probe_sets, probe_table
from panacea_lab.data.batching import collate, encode
from panacea_lab.defenses.panacea import EpsConfig
from panacea_lab.pipeline.context import EvalContext, get_tokenizer
from panacea_lab.pipeline.evaluations import apply_post


def test_answer_nll_is_the_models_own_loss_weighted_by_answer_tokens(panacea_run, store):
    pipeline.attack(panacea_run, store)
    model = pipeline.load_stage_model("attack", panacea_run, store)
    tok, max_length = get_tokenizer(panacea_run.align.model), panacea_run.align.model.max_length
    short, long = sorted(probe_sets(panacea_run, 8)["refusal"], key=lambda e: len(e.output))[::7][:2]
    own = []
    for ex in (short, long):
        batch = collate([encode(tok, ex, max_length)], tok.pad_token_id)
        with torch.no_grad():
            own.append((model(**batch.as_kwargs()).loss.item(), int((batch.labels[:, 1:] != -100).sum())))
        assert answer_nll(model, tok, [ex], max_length) == pytest.approx(own[-1][0], rel=1e-5)
    weighted = sum(loss * n for loss, n in own) / sum(n for _, n in own)
    assert own[0][1] != own[1][1]  # two lengths, so weighting by tokens differs from a plain mean
    assert answer_nll(model, tok, [short, long], max_length, batch_size=2) == pytest.approx(weighted, rel=1e-5)
    model.panacea_loss = "bucketed"  # a real model's training loss: the same number up to rounding
    assert answer_nll(model, tok, [short, long], max_length, batch_size=2) == pytest.approx(weighted, rel=1e-4)
    with pytest.raises(ValueError, match="at least one"):
        answer_nll(model, tok, [], max_length)


def test_the_probe_scores_eps_on_the_stored_run_and_its_control_at_eps_norm(panacea_run, store):
    rows = loss_shift(panacea_run, store, n=6)
    assert set(rows["model"]) == {"aligned", "attacked", "Panacea w + eps", "same-norm random direction"}
    assert set(rows["answers"]) == {"refusal", "compliance", "task"} and rows["n"].eq(6).all()
    model = apply_post(pipeline.load_stage_model("attack", panacea_run, store), EpsConfig(),
                       EvalContext(panacea_run.align, store, "attack", panacea_run, 0, []))
    tok = get_tokenizer(panacea_run.align.model)
    compliance = probe_sets(panacea_run, 6)["compliance"]
    eps_row = rows.query("model == 'Panacea w + eps' and answers == 'compliance'")["nll"].item()
    assert eps_row == pytest.approx(answer_nll(model, tok, compliance, panacea_run.align.model.max_length), rel=1e-6)
    by_model = rows.query("answers == 'compliance'").set_index("model")["nll"]
    assert by_model["Panacea w + eps"] != by_model["attacked"] != by_model["same-norm random direction"]
    assert rows["eps_norm"].iloc[0] == pytest.approx(0.4, rel=1e-5)
    table = probe_table(rows)  # each model against the attacked one: three rows, "attacked" not among them
    assert len(table.splitlines()) == 5 and "| attacked |" not in table


def test_the_probe_needs_a_panacea_run(panacea_run, store):
    import dataclasses

    with pytest.raises(ValueError, match="Panacea run"):
        loss_shift(dataclasses.replace(panacea_run, defense=None), store)


def test_the_probe_table_pairs_each_seed_with_its_own_attacked_model():
    import pandas as pd

    from panacea_lab.studies.answer_loss import probe_table

    rows = []
    for p, shift in ((0.1, 0.0), (0.05, 1.0)):  # the larger ratio first: the table orders them
        for seed, (base_ref, base_comp, eps_ref, eps_comp) in enumerate([(1.0, 0.5, 2.0, 4.5), (3.0, 0.5, 4.0, 2.5)]):
            for model, ref, comp in (("attacked", base_ref, base_comp), ("Panacea w + eps", eps_ref, eps_comp + shift)):
                rows += [{"data": "w", "p": p, "rho": 1.0, "lam": 0.1, "h_const": False, "seed": seed, "model": model,
                          "answers": a, "nll": v} for a, v in (("refusal", ref), ("compliance", comp), ("task", 1.0))]
    table = probe_table(pd.DataFrame(rows)).splitlines()
    # refusal +1 at both seeds; compliance +4 and +2; their difference +3 and +1: 2.00 ± 1.41
    at_01 = "| w | 0.1 | rho 1, lambda 0.1 | Panacea w + eps | 2 | 1.00 ± 0.00 | 3.00 ± 1.41 | 0.00 ± 0.00 | 2.00 ± 1.41 |"
    at_005 = "| w | 0.05 | rho 1, lambda 0.1 | Panacea w + eps | 2 | 1.00 ± 0.00 | 4.00 ± 1.41 | 0.00 ± 0.00 | 3.00 ± 1.41 |"
    assert table[2:] == [at_005, at_01]  # each ratio against its own attacked model, in order of p
    assert not any("attacked" in line for line in table)
    frame = pd.DataFrame(rows)
    lone = frame[~(frame["model"].eq("attacked") & frame["seed"].eq(1) & frame["p"].eq(0.1))]
    assert "| w | 0.1 | rho 1, lambda 0.1 | Panacea w + eps | 1 | 1.00 | 4.00 | 0.00 | 3.00 |" in probe_table(lone)
    with pytest.raises(ValueError, match=r"without \['p'\]"):  # a file without the ratio is refused, not dropped
        probe_table(frame.drop(columns="p"))


def test_each_runs_margin_is_paired_with_its_own_hs_change():
    import pandas as pd

    from panacea_lab.studies.answer_loss import margin_vs_hs

    rows, grid = [], []
    for seed, (comp, ref, hs_none, hs_eps) in enumerate([(2.0, 0.5, 90.0, 70.0), (1.0, 0.9, 80.0, 79.0)]):
        for model, c, r in (("attacked", 1.0, 1.0), ("Panacea w + eps", 1.0 + comp, 1.0 + ref)):
            rows += [{"data": "w", "p": 0.1, "rho": 1.0, "lam": 0.01, "h_const": True, "seed": seed, "model": model,
                      "panacea_setting": "chosen", "answers": a, "nll": v} for a, v in (("refusal", r), ("compliance", c))]
        for harmful_set, shift in (("test", 0.0), ("strongreject", -50.0)):
            grid += [{"method": "none", "variant": "w", "p": 0.1, "seed": seed, "harmful_set": harmful_set,
                      "HS": hs_none + shift, "panacea_setting": None, "lam": None},
                     {"method": "panacea", "variant": "w+eps", "p": 0.1, "seed": seed, "harmful_set": harmful_set,
                      "HS": hs_eps, "panacea_setting": "chosen", "lam": 0.01}]
    # "paper" probed at lambda 1e-3 but graded at 1e-2: another run under the same name, never paired
    rows += [{**r, "panacea_setting": "paper", "lam": 0.001} for r in rows if r["seed"] == 0]
    grid.append({**grid[-3], "panacea_setting": "paper", "seed": 0, "HS": 10.0})
    pairs = margin_vs_hs(pd.DataFrame(rows), pd.DataFrame(grid)).set_index("seed")
    assert pairs["margin"].round(6).tolist() == [1.5, 0.1]  # compliance's shift minus the refusals'
    assert pairs["HS_change"].tolist() == [-20.0, -1.0]  # AdvBench (test) rows, each seed against its own
    assert (pairs["panacea_setting"] == "chosen").all()
    with pytest.raises(ValueError, match="panacea_setting"):
        margin_vs_hs(pd.DataFrame(rows).drop(columns="panacea_setting"), pd.DataFrame(grid))
    with pytest.raises(ValueError, match="appears twice"):
        margin_vs_hs(pd.DataFrame(rows + rows[-4:]), pd.DataFrame(grid))

