"""`panacea-lab run SPEC`: compute what the run store lacks for one experiment and write its results file.

The same sweep functions as the command line's, fed from the spec instead of flags, so a committed
file and the command it records give the same rows. Three modes:

- run: every missing stage is computed (one progress line per stage: done of total, time left), then
  results/<name>.csv is written atomically with the spec and the provenance in its `#` header;
- dry run: the sweep is walked against the store without computing anything; each missing stage is
  listed with an estimate from the durations of stages of its kind already in the store;
- check: the rows are recomputed from the store alone (training nothing) and compared run by run with
  the committed file; any difference fails. Runs the store lacks are counted and, unless `strict`,
  left out of the comparison.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from panacea_lab.experiments.spec import Spec, load_spec
from panacea_lab.training.store import RESULT, RunStore


class _Unknown(dict):
    """What a planned stage returns in place of its result: NaN metrics, no task scores, and a norm of
    its own (so that the controls of two planned runs are two configs, as they will be), any other key
    as another _Unknown."""

    def __init__(self, norm: float = 1.0):
        super().__init__()
        self.norm = norm

    def __missing__(self, key):
        return {"HS": math.nan, "refusal": math.nan, "other": math.nan, "FA": {}, "eps_norm": self.norm,
                "train_seconds": math.nan}.get(key, _Unknown(self.norm))


class PlanStore(RunStore):
    """A read-only view of a store that records, instead of computing, every stage it lacks."""

    planning = True  # what a kind asks before work that reads a stage's files (it lists the stage instead)

    def __init__(self, root):
        super().__init__(root, read_only=True)
        self.missing: dict[str, str] = {}  # key -> stage
        self.present: dict[str, str] = {}

    def load(self, stage, cfg):
        from panacea_lab.config import config_hash

        hit = super().load(stage, cfg)
        if hit is not None:
            self.present[config_hash(cfg)] = _kind(stage, cfg)
        return hit

    def cached(self, stage, cfg, compute, inputs=None):
        from panacea_lab.config import config_hash

        hit = self.load(stage, cfg)
        if hit is None:
            self.missing[config_hash(cfg)] = _kind(stage, cfg)
        return hit if hit is not None else _Unknown(1.0 + 1e-6 * len(self.missing))

    def artifact(self, stage, cfg, name):
        if self.load(stage, cfg) is None:
            raise LookupError(f"stage {stage!r} is not in the store: its artifact {name!r} cannot be read")
        return super().artifact(stage, cfg, name)


def _kind(stage: str, cfg) -> str:
    """A stage's kind for time estimates: the stage and the defense it trains under, if any."""
    config = getattr(cfg, "config", cfg)
    defense = getattr(config, "defense", None)
    return f"{stage} {defense.name}" if defense is not None else stage


def stage_durations(root: Path) -> dict[str, float]:
    """Median seconds per stage kind over the entries the store holds (their recorded timings)."""
    seen: dict[str, list[float]] = {}
    for result in Path(root).glob(f"*/*/{RESULT}"):
        try:
            record = json.loads(result.read_text())
        except (OSError, ValueError):
            continue
        seconds = (record.get("timings") or {}).get("stage_seconds")
        if seconds is None:
            continue
        defense = (record.get("config") or {}).get("defense")
        kind = f"{record.get('stage')} {defense['name']}" if isinstance(defense, dict) else record.get("stage")
        seen.setdefault(kind, []).append(float(seconds))
    return {k: statistics.median(v) for k, v in seen.items()}


def configs(spec: Spec):
    """(align config, eval config, attack overrides) as the command line builds them for the same
    choices (`studies.recipe`: the setting's recipe, its LoRA on the embedded model only, real data's
    alignment sizes), with the spec's own fields on top."""
    from panacea_lab.config import AlignConfig, EvalConfig
    from panacea_lab.studies import recipe

    model = recipe.model_config(spec.setting, spec.model, **spec.model_options)
    align_cfg = AlignConfig(model=model, data=spec.data, **{**recipe.align_fields(spec.setting, spec.data),
                                                            **spec.align})
    ev = dict(spec.eval)
    n_eval = ev.pop("n_eval", EvalConfig().n_harmful)
    ev.pop("second_test", None)
    eval_cfg = EvalConfig(n_harmful=n_eval, n_task=n_eval, tasks=(spec.task,), **ev)
    return align_cfg, eval_cfg, recipe.attack_overrides(spec.setting, **spec.attack)


def rows(spec: Spec, store: RunStore) -> pd.DataFrame:
    """The spec's rows, every stage through `store` (a PlanStore computes nothing)."""
    df = _rows(spec, store)
    return df.assign(**{"HS+": df["HS"] + df["other"]}) if spec.hs_plus and "HS" in df else df


def _rows(spec: Spec, store: RunStore) -> pd.DataFrame:
    from panacea_lab.experiments import kinds
    from panacea_lab.pipeline.preflight import check_run_store, preflight

    align_cfg, eval_cfg, overrides = configs(spec)
    check_run_store(store)
    preflight(align_cfg, eval_cfg, align=align_cfg)
    ctx = kinds.Context(spec, align_cfg, eval_cfg, overrides, store)
    return kinds.keep_rows(kinds.KINDS[spec.sweep](ctx), spec.keep)


def plan(spec: Spec, root) -> tuple[PlanStore, pd.DataFrame]:
    """Walk the sweep against the store without computing: (the store's record of hits and misses, rows)."""
    store = PlanStore(root)
    return store, rows(spec, store)


def estimate(store: PlanStore) -> tuple[float, list[str]]:
    """Seconds the missing stages would take (from the store's own durations; unknown kinds count 0)."""
    durations = stage_durations(store.root)
    lines, total = [], 0.0
    kinds: dict[str, int] = {}
    for kind in store.missing.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    for kind, count in sorted(kinds.items()):
        each = durations.get(kind)
        total += (each or 0.0) * count
        lines.append(f"  {count:3d} x {kind:<24} {'no timing in the store yet' if each is None else f'~{each:.0f} s each'}")
    return total, lines


def write(spec: Spec, df: pd.DataFrame, path: Path | None = None, source: str = "") -> tuple[Path, bool]:
    """(the file, whether it was written): rows and spec equal to what the file holds leave it as it is,
    so recomputing a committed experiment from a filled store leaves the repository clean."""
    import io

    from panacea_lab.tables.export_rows import write_rows

    path = path or spec.output
    if path.is_file():
        held = [line for line in path.read_text().splitlines(keepends=True) if not line.startswith("# ")
                or line.startswith("# spec:")]
        spec_line = f"# spec: {json.dumps(spec.describe(), default=str)}\n"
        body = io.StringIO()
        df.to_csv(body, index=False)
        if "".join(held) == spec_line + body.getvalue():
            return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    command = f"panacea-lab run {source or f'experiments/{spec.name}.yaml'}"
    return write_rows(df, path, command=command, extra={"spec": spec.describe()}), True


def check(spec: Spec, root, strict: bool = False) -> tuple[bool, str]:
    """Recompute the rows from the store (training nothing) and compare them with the committed file.

    When the store holds every stage, the rows are recomputed in full; otherwise the rows whose stages
    it holds (a kind whose rows read stored files, e.g. the answer-loss probe, needs all of them)."""
    from panacea_lab.tables.compare_rows import compare
    from panacea_lab.tables.export_rows import read_rows

    if not spec.output.is_file():
        return False, f"{spec.output} does not exist: run the spec first"
    store, df = plan(spec, root)  # a plan's rows are the stored rows wherever the store holds the stages
    if not store.missing and df.empty:  # a kind that reads stored files only lists its stages when planning
        df = rows(spec, RunStore(root, read_only=True))
    complete = df[df["HS"].notna()] if "HS" in df else df
    if complete.empty:  # nothing to compare is not a difference; --strict makes it a failure
        return not strict, (f"{spec.name}: not checked: the store holds none of the rows' stages "
                            f"({len(store.missing)} missing)")
    from panacea_lab.experiments.kinds import ROW_KEYS

    result = compare(read_rows(spec.output), complete, *ROW_KEYS.get(spec.sweep, (None, None)))
    absent = len(df) - len(complete)
    ok = not result["differs"] and not result["lacks"] and not result["added"] and result["matched"] > 0
    ok = ok and (not strict or (absent == 0 and result["missing"] == 0))
    said = (f"{spec.name}: {result['matched']} rows recomputed from the store and compared; differing: "
            f"{result['differs'] or 'none'}; rows the store cannot give: {absent} "
            f"({len(store.missing)} stages missing); committed rows not produced by the spec: "
            f"{max(result['missing'] - absent, 0)}; rows the file lacks: {result['added']}")
    return ok, said


def run(path, root=None, dry_run: bool = False, do_check: bool = False, strict: bool = False,
        output=None, out=None) -> int:
    """The `panacea-lab run` command; returns the exit status."""
    out = out or sys.stdout
    spec = load_spec(path)
    root = Path(root) if root is not None else RunStore().root
    if do_check:
        ok, said = check(spec, root, strict)
        print(said, file=out)
        return 0 if ok else 1
    store, _ = plan(spec, root)
    seconds, lines = estimate(store)
    total = len(store.missing) + len(store.present)
    known = "no timing" not in "".join(lines)
    when = (f" (about {seconds / 60:.0f} min from the store's timings)" if known else
            f" (at least {seconds / 60:.0f} min: some kinds have no timing in the store yet)" if seconds else
            " (no timings in the store yet to estimate from)")
    print(f"{spec.name}: {total} stages, {len(store.present)} in the store, {len(store.missing)} to compute"
          + (when if store.missing else ""), file=out)
    if dry_run:
        print("\n".join(lines) if lines else "  nothing to compute", file=out)
        return 0
    t0 = time.perf_counter()
    df = rows(spec, _Progress(root, store.missing, seconds, out))
    written, changed = write(spec, df, Path(output) if output else None, source=str(path))
    print(f"rows: {written} ({len(df)} rows, {time.perf_counter() - t0:.0f} s)"
          + ("" if changed else "; the file already held them, left as it is"), file=out)
    return 0


class _Progress(RunStore):
    """The real store, saying after each computed stage how many of the missing ones are done and
    about how long the rest will take."""

    def __init__(self, root, missing: dict, seconds: float, out):
        super().__init__(root)
        self.todo, self.done, self.seconds, self.out, self.t0 = len(missing), 0, seconds, out, time.perf_counter()

    def cached(self, stage, cfg, compute, inputs=None):
        hit = self.load(stage, cfg)
        if hit is not None:
            return hit
        result = super().cached(stage, cfg, compute, inputs)
        self.done += 1
        self.todo = max(self.todo, self.done)
        spent = time.perf_counter() - self.t0
        left = spent / self.done * (self.todo - self.done)
        print(f"  {self.done}/{self.todo} stages computed ({_kind(stage, cfg)}); about {left / 60:.0f} min left",
              file=self.out, flush=True)
        return result
