"""Which layers and modules of Panacea's eps carry the safety: eps restricted, one cached evaluation each.

Safety coefficients (`coefficients.py`) say where eps's norm sits; they do not say where it acts. This
sweep applies eps to part of the model only — one layer, every layer but one, the first or last k,
one module type (q, k, v, o, gate, up, down: those present), the k layers holding most of eps's norm
or every layer but them — and evaluates each of one trained run,
beside a random direction of the same norm over exactly the same tensors (`eps_control`). A part
whose eps removes as much harm as the whole, while its control does not, is where the direction
matters; a part that holds much of the norm but changes nothing is not.

Rows are typed like every sweep's (`sweeps.result_row`): method the run's trained defense (Panacea)
with variant "w" and "w+<its post half>" (w+eps) for eps, method the half's part control (eps_control,
registered as "<half>_control") with variant "control", `param` the kind of restriction (layer,
all_but_layer, first_k, last_k, module, top_k, all_but_top_k) and `value` its layer, k or module; `share` is the restricted
eps's share of ||eps||^2 and `norm` its L2 norm (what the control matches).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
from safetensors.torch import load_file

from panacea_lab import defenses
from panacea_lab.studies.sweeps import result_row
from panacea_lab.config import AttackConfig, ConfigError, DefenseConfig, EvalConfig
from panacea_lab.defenses.perturb import PROJECTIONS, global_norm, parse_param_name, restrict
from panacea_lab.pipeline.evaluations import evaluate
from panacea_lab.pipeline.preflight import preflight
from panacea_lab.pipeline.stages import artifact, attack
from panacea_lab.training.store import RunStore

KINDS = ("layer", "all_but_layer", "first_k", "last_k", "module", "top_k", "all_but_top_k")
DEFAULT_KINDS = KINDS[:5]  # the top-k kinds need a k list; they run when asked for
TOP_K = (1, 3)
_WHAT = {"top_k": "on the top {} layers by share", "all_but_top_k": "without the top {} layers by share",
         "layer": "on layer {}", "all_but_layer": "without layer {}", "first_k": "on the first {} layers",
         "last_k": "on the last {} layers", "module": "on {}", "all": "on every layer"}


@dataclass(frozen=True)
class Restriction:
    """One part of eps: the kind of restriction (`param`), its `value`, and what it keeps."""

    param: str
    value: int | str | None
    layers: tuple[int, ...] = ()
    modules: tuple[str, ...] = ()

    def post(self, control_seed: int | None = None, half: str | None = None) -> DefenseConfig:
        """The transform that applies this part of eps (or, given a seed, its same-norm control); `half`:
        the post-fine-tuning half restricted, by default that of the registry's first trained defense."""
        half = half or defenses.get(defenses.trained_with_half()[0]).post_half
        if control_seed is None:
            return defenses.get(half).make(layers=self.layers, modules=self.modules)
        return defenses.get(part_control(half)).make(layers=self.layers, modules=self.modules, seed=control_seed)

    def describe(self) -> str:
        return _WHAT[self.param].format(self.value)


def eps_parts(eps) -> tuple[list[int], list[str]]:
    """The decoder layers and module types eps covers (modules in q, k, v, o, gate, up, down order)."""
    parsed = [parse_param_name(n) for n in eps]
    present = {m for _, m, _ in parsed}
    modules = [m for m in PROJECTIONS if m in present] + sorted(present - set(PROJECTIONS))
    return sorted({layer for layer, _, _ in parsed} - {-1}), modules


def rank_layers(layer_shares: dict[int, float], layers: Sequence[int] | None = None) -> list[int]:
    """Layers by their share of ||eps||^2, largest first (ties: the lower index first): the order the
    top-k restrictions, and any table of them, take their k layers from."""
    return sorted(layer_shares if layers is None else layers, key=lambda i: (-layer_shares[i], i))


def restrictions(layers: Sequence[int], modules: Sequence[str], kinds: Iterable[str] = DEFAULT_KINDS,
                 layer_shares: dict[int, float] | None = None, top_k: Sequence[int] = TOP_K) -> list[Restriction]:
    """Every restriction of `kinds` over these layers and modules; first/last k run over k = 1..n-1
    (k = n is the whole eps, the reference row); top_k / all_but_top_k over the k of `top_k` below n,
    ranking the layers by `layer_shares` (each layer's share of ||eps||^2; ties by layer index)."""
    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ConfigError(f"kinds = {kinds!r}: {bad[0]!r} is unknown; use some of {', '.join(KINDS)}")
    layers = sorted(layers)
    out: list[Restriction] = []
    for kind in kinds:
        if kind == "layer":
            out += [Restriction(kind, i, (i,)) for i in layers]
        elif kind == "all_but_layer":
            out += [Restriction(kind, i, tuple(j for j in layers if j != i)) for i in layers if len(layers) > 1]
        elif kind == "first_k":
            out += [Restriction(kind, k, tuple(layers[:k])) for k in range(1, len(layers))]
        elif kind == "last_k":
            out += [Restriction(kind, k, tuple(layers[-k:])) for k in range(1, len(layers))]
        elif kind in ("top_k", "all_but_top_k"):
            if layer_shares is None:
                raise ConfigError(f"kinds = {kinds!r}: {kind} ranks layers by their share of eps; pass layer_shares")
            ranked = rank_layers(layer_shares, layers)
            for k in (k for k in top_k if 0 < k < len(layers)):
                top = set(ranked[:k])
                kept = top if kind == "top_k" else set(layers) - top
                out.append(Restriction(kind, k, tuple(sorted(kept))))
        else:
            out += [Restriction(kind, m, (), (m,)) for m in modules]
    return out


def part_control(half: str) -> str:
    """The control of a post-fine-tuning half restricted to part of the model: the control registered
    as "<half>_control", a same-norm random direction over exactly the tensors the part touches."""
    name = f"{half}_control"
    if name not in defenses.REGISTRY or not defenses.get(name).control:
        raise ConfigError(f"{half}: no part control registered as {name!r}; the layer ablation needs one")
    return name


def share_of(eps, post: DefenseConfig) -> tuple[float, float]:
    """(share of ||eps||^2, L2 norm) of the part of eps that `post` applies."""
    part = global_norm(restrict(eps, post.layers, post.modules, post.layer_scales, post.scale))
    return part ** 2 / global_norm(eps) ** 2, part


def check_trained_run(run: AttackConfig) -> None:
    """Refuse a run without a trained defense read through a post-fine-tuning half (it stores eps)."""
    if run.defense is None or not defenses.of(run.defense).post_half:
        trained = defenses.trained_with_half()
        raise ConfigError(f"defense = {getattr(run.defense, 'name', None)!r}: the ablation needs a run trained "
                          f"under {' or '.join(defenses.label(t) for t in trained)} (it stores eps); pass "
                          f"defense=settings.get(setting).defense({trained[0]!r}, ...)")




def layer_shares_of(eps) -> dict[int, float]:
    """Each decoder layer's share of ||eps||^2 (parameters outside the layers count in the total only)."""
    from panacea_lab.tables.coefficients import safety_coefficients

    shares = safety_coefficients(eps, ("layer",))
    return {int(layer): float(share) for layer, share in zip(shares["layer"], shares["share"]) if layer != -1}


def layer_ablation(run: AttackConfig, store: RunStore | None = None, eval_cfg: EvalConfig | None = None,
                   kinds: Iterable[str] = DEFAULT_KINDS, control: bool = True,
                   top_k: Sequence[int] = TOP_K) -> pd.DataFrame:
    """Evaluations of one Panacea run with eps restricted every way of `kinds` (each cached).

    Reference rows first: w alone (share 0), w + the whole eps (param "all", share 1) and its
    same-norm control; then, per restriction, eps and (with `control`) its control of equal norm
    drawn from the run's seed.
    """
    store, eval_cfg = store or RunStore(), eval_cfg or EvalConfig(tasks=(run.task,))
    check_trained_run(run)
    record = defenses.of(run.defense)
    half = record.post_half
    preflight(run, eval_cfg, align=run.align)
    attack(run, store)
    eps = load_file(str(artifact(store, "attack", run, "eps.safetensors")))
    ident = {"p": run.p, "seed": run.seed}

    def row(post: DefenseConfig | None, param: str | None, value, what: str) -> dict:
        share, norm = share_of(eps, post) if post is not None else (0.0, 0.0)
        ev = evaluate("attack", run, store, eval_cfg, post)
        if post is None:
            return result_row(ev, method=record.name, variant="w", label=f"{record.label} w", share=share, norm=norm,
                              **ident)
        if defenses.of(post).control:  # shown as the defense's own same-norm control, on these tensors only
            shown = defenses.label(record.controls[0] if record.controls else post.name)
            return result_row(ev, method=post.name, variant="control", label=f"{shown} {what}",
                              param=param, value=value, share=share, norm=norm, **ident)
        return result_row(ev, method=record.name, variant=f"w+{half}", label=f"{half} {what}",
                          param=param, value=value, share=share, norm=norm, **ident)

    rows = [row(None, None, None, "")]
    parts = restrictions(*eps_parts(eps), kinds=kinds, layer_shares=layer_shares_of(eps), top_k=top_k)
    for part in [Restriction("all", None), *parts]:
        rows.append(row(part.post(half=half), part.param, part.value, part.describe()))
        if control:
            rows.append(row(part.post(control_seed=run.seed, half=half), part.param, part.value, part.describe()))
    return pd.DataFrame(rows)


def layer_ablations(runs: Iterable[AttackConfig], store: RunStore | None = None, eval_cfg: EvalConfig | None = None,
                    **kw) -> pd.DataFrame:
    """`layer_ablation` of several runs (e.g. one per seed), every run checked before any stage starts."""
    runs, store = list(runs), store or RunStore()
    if not runs:
        raise ConfigError("runs = []: pass at least one Panacea run")
    eval_cfg = eval_cfg or EvalConfig(tasks=(runs[0].task,))
    for run in runs:
        check_trained_run(run)
    preflight(*runs, eval_cfg, align=runs[0].align)
    return pd.concat([layer_ablation(run, store, eval_cfg, **kw) for run in runs], ignore_index=True)

