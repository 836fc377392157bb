"""Where eps moves a model: the loss of the aligned refusals, of harmful compliance and of the user's
task, under the undefended fine-tuning, under Panacea's w + eps, and under w plus a random direction
of eps's norm (the aligned model as the reference).

Panacea trains eps to raise the harmful loss, nothing more. Whether that brings refusals back or
breaks answers is a question about the other losses: if eps raises compliance's loss well beyond
that of the refusals the aligned model learnt, the removed compliance can turn into refusals; if it
raises both together, the model has nowhere to go but *other*. Measuring both in the embedded world
and on a real model says which of the two each world is in.

The probed run may be of any trained defense with a post-fine-tuning half (`Defense.post_half`); its
record names the half, the control and the norm. The `model` names written into the probe files are
the half's label ("Panacea w + eps") and the control's printed label ("same-norm random direction").
"""
from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from panacea_lab import defenses
from panacea_lab.tables.grid_tables import SETTING, spread
from panacea_lab.config import AttackConfig
from panacea_lab.data.batching import IGNORE_INDEX, collate, encode
from panacea_lab.data.world import Example
from panacea_lab.defenses.registry import UNDEFENDED
from panacea_lab.pipeline.context import EvalContext, get_tokenizer, world_of
from panacea_lab.pipeline.evaluations import apply_post
from panacea_lab.pipeline.stages import attack, load_stage_model
from panacea_lab.training.loss import lm_loss
from panacea_lab.training.store import RunStore


@torch.no_grad()
def answer_nll(model, tokenizer, examples: list[Example], max_length: int, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over every answer token of `examples` (token-weighted: long answers
    count by their length, as in training), computed by the training loss itself (`lm_loss`)."""
    if not examples:
        raise ValueError("answer_nll needs at least one example")
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        rows = [encode(tokenizer, ex, max_length) for ex in examples[start:start + batch_size]]
        batch = collate(rows, tokenizer.pad_token_id).to(device)
        n = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
        total, tokens = total + lm_loss(model, batch).float().item() * n, tokens + n
    return total / tokens


SETS = ("refusal", "compliance", "task")  # the probed answers, in table order
# the probed run's settings, as the probe files name them (Panacea's fields: a defense without one
# leaves it empty)
KNOBS = ("rho", "lam", "h_const")


def probe_sets(run: AttackConfig, n: int) -> dict[str, list[Example]]:
    """The answers probed: the aligned model's refusals (its alignment pool), the defender's harmful
    compliance (the pool eps was trained to resist) and the user's task test samples; n of each."""
    world = world_of(run.align)
    return {"refusal": world.alignment[:n], "compliance": world.defender_pool[:n],
            "task": world.task_test[run.task][:n]}


def _verdicts() -> dict[str, str]:
    """{grid variant: probe model name} of each trained defense's w + post half (Panacea: w+eps)."""
    halves = dict.fromkeys(defenses.get(t).post_half for t in defenses.trained_with_half())
    return {f"w+{half}": defenses.label(half) for half in halves}


def loss_shift(run: AttackConfig, store: RunStore, n: int = 32) -> pd.DataFrame:
    """The answer loss of each probe set under the aligned model, the undefended fine-tuning, the
    defense's w + its post half (Panacea's w + eps) and w + its first control (a same-norm random
    direction), for one finished run `run` of a trained defense with a post half (n answers per set:
    on a 135M model on 2 CPU cores, about 50 s per run)."""
    pcfg = run.defense
    record = defenses.of(pcfg) if pcfg is not None else None
    if record is None or not record.post_half:
        wanted = " or ".join(defenses.label(t) for t in defenses.trained_with_half())
        raise ValueError(f"loss_shift needs a {wanted} run: an AttackConfig whose defense has a post-fine-tuning "
                         f"half (defense = {getattr(pcfg, 'name', None)!r})")
    norm = record.control_norm(attack(run, store))
    undefended = dataclasses.replace(run, defense=None)
    attack(undefended, store)
    sets = probe_sets(run, n)
    tokenizer, max_length = get_tokenizer(run.align.model), run.align.model.max_length
    models = {"aligned": ("align", run.align, None), "attacked": ("attack", undefended, None),
              defenses.label(record.post_half): ("attack", run, defenses.get(record.post_half).make())}
    for name in record.controls[:1]:
        control = defenses.get(name)
        models[defenses.printed_label(name)] = ("attack", run if control.control_on == "defended" else undefended,
                                                control.make(norm=norm, seed=run.seed))
    rows = []
    for name, (stage, cfg, post) in models.items():
        model = load_stage_model(stage, cfg, store)
        model = apply_post(model, post, EvalContext(run.align, store, stage, cfg, run.seed, []))
        for answers, examples in sets.items():
            rows.append({"model": name, "answers": answers, "nll": answer_nll(model, tokenizer, examples, max_length),
                         "n": len(examples)})
    ident = {"data": run.align.data, "p": run.p, "seed": run.seed, **{k: getattr(pcfg, k, None) for k in KNOBS},
             "eps_norm": norm}
    return pd.DataFrame(rows).assign(**ident)


KEYS = ["data", "p", *KNOBS, "seed", "answers"]  # one probed run's answer set


def shifts(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of every model but the attacked one, with `delta`: the loss minus the attacked model's
    on the same answers of the same run (NaN where the run has no attacked row)."""
    if missing := [k for k in KEYS + ["model", "nll"] if k not in rows or rows[k].isna().any()]:
        raise ValueError(f"answer-loss rows without {missing}: each probe file must carry them (written by loss_shift)")
    base = rows[rows["model"].eq("attacked")].set_index(KEYS)["nll"]
    rows = rows[~rows["model"].eq("attacked")]
    return rows.assign(delta=rows["nll"].to_numpy() - base.reindex(rows.set_index(KEYS).index).to_numpy())


def margin_vs_hs(rows: pd.DataFrame, grid: pd.DataFrame, harmful_set: str = "test") -> pd.DataFrame:
    """Per probed Panacea run (panacea_setting, p, seed, and its lambda): eps's margin (compliance's
    loss shift minus the refusals') beside the run's HS change against the undefended model of the same
    seed in `grid` (`grid_tables.read_grid`): do the runs where refusals gain most lose the most harm?
    Runs that only one side holds (or that a name gives another lambda there) are left out."""
    if SETTING not in rows:
        raise ValueError(f"answer-loss rows without {SETTING}: pair only probes that notebook 06 wrote")
    run, verdicts = [SETTING, "p", "seed", "lam"], _verdicts()
    probed = shifts(rows).loc[lambda d: d["model"].isin(list(verdicts.values()))]
    if probed.duplicated([*run, "answers"]).any():
        raise ValueError("a probed run appears twice among the answer-loss rows: pass each probe file once")
    per = probed.pivot_table(index=run, columns="answers", values="delta", aggfunc="first")
    margin = (per["compliance"] - per["refusal"]).rename("margin")
    at = grid[grid["harmful_set"].eq(harmful_set)]
    none = at[at["method"].eq(UNDEFENDED) & at["variant"].eq("w")].set_index(["p", "seed"])["HS"]
    hs = at[at["variant"].isin(list(verdicts))].set_index(run)["HS"]
    change = (hs - none.reindex(hs.index.droplevel([0, 3])).to_numpy()).rename("HS_change")
    return pd.concat([margin, change], axis=1, join="inner").dropna().reset_index()


def probe_table(rows: pd.DataFrame) -> str:
    """Markdown: per world, harmful ratio and Panacea setting, each model's answer loss minus the
    attacked model's (mean ± std over seeds; nats per answer token) on refusals, compliance and the task."""
    rows = shifts(rows)
    lines = ["| world | p | Panacea | model | seeds | refusal | compliance | task | compliance - refusal |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = rows.sort_values(["data", "p"], kind="stable")  # one world's ratios together, in order
    for (data, p, rho, lam, h_const, model), at in rows.groupby(["data", "p", "rho", "lam", "h_const", "model"],
                                                               sort=False):
        per_set = {a: at[at["answers"].eq(a)].set_index("seed")["delta"] for a in SETS}
        margin = per_set["compliance"] - per_set["refusal"]  # > 0: refusals gain on compliance
        cells = [spread(v, digits=2, one_digits=2) for v in (*per_set.values(), margin)]
        knobs = f"rho {rho:g}, lambda {lam:g}" + (", h_const" if h_const else "")
        seeds = at.loc[at["delta"].notna(), "seed"].nunique()  # a seed without its attacked model counts out
        lines.append(f"| {data} | {p:g} | {knobs} | {model} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
