"""What a run store holds, one line per stored stage (`panacea-lab runs`): its stage, key, a short
summary of its config and, for an evaluation, its metrics, so a run can be found and exported by its
key without retyping the flags that made it.

Only `result.json` is read (its artifacts are not hashed here: listing stays fast on a large store)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from panacea_lab.training.store import RESULT

STAGES = ("align", "attack", "eval")


@dataclass(frozen=True)
class Stored:
    stage: str
    key: str
    summary: str
    metrics: str
    finished: str


def _defense(cfg: dict | None) -> str:
    if not cfg:
        return "none"
    knobs = ",".join(f"{k}={v}" for k, v in cfg.items() if k != "name" and v is not None and v is not False)
    return f"{cfg['name']}({knobs})" if knobs else cfg["name"]


def _model(align: dict) -> str:
    return Path(str(align.get("model", {}).get("path", "?"))).name


def summarize(stage: str, config: dict) -> str:
    """A config in one line: the fields a reader tells runs apart by."""
    if stage == "align":
        return f"model={_model(config)} data={config.get('data')} seed={config.get('seed')} defense={_defense(config.get('defense'))}"
    if stage == "attack":
        return (f"model={_model(config['align'])} data={config['align'].get('data')} task={config.get('task')} "
                f"n={config.get('n')} p={config.get('p')} seed={config.get('seed')} lr={config.get('lr')} "
                f"adapter={config.get('adapter')} defense={_defense(config.get('defense'))}")
    if stage == "eval":
        target = config.get("target") or {}
        of = (f"{config.get('stage')} p={target.get('p')} seed={target.get('seed')} "
              f"defense={_defense(target.get('defense'))}" if config.get("stage") == "attack" else config.get("stage"))
        post = _defense(config.get("post")) if config.get("post") else "w"
        split = (config.get("eval") or {}).get("split", "test")
        return f"of {of} | post={post} split={split}"
    return ""


def _metrics(record: dict) -> str:
    if "HS" not in record:
        return ""
    fa = " ".join(f"FA_{t}={v:.1f}" for t, v in (record.get("FA") or {}).items())
    return f"HS={record['HS']:.1f} refusal={record['refusal']:.1f} other={record['other']:.1f} {fa}".strip()


def stored_runs(root: str | Path, stages=STAGES) -> list[Stored]:
    """Every readable entry of `stages` in the store at `root`, oldest first; unreadable ones are skipped."""
    out = []
    for stage in stages:
        for result in sorted(Path(root, stage).glob(f"*/{RESULT}")):
            try:
                record = json.loads(result.read_text())
                config = record["config"]
            except (ValueError, KeyError, OSError, TypeError):
                continue  # a damaged entry: the stage that needs it moves it aside and recomputes
            finished = (record.get("provenance") or {}).get("finished_at", "")
            out.append(Stored(stage, result.parent.name, summarize(stage, config), _metrics(record), finished))
    return sorted(out, key=lambda s: (s.finished, s.stage, s.key))


def find_run(root: str | Path, key: str) -> tuple[str, dict]:
    """(stage, record) of the trained run whose key starts with `key` (a unique prefix is enough)."""
    hits = [p for stage in ("align", "attack") for p in Path(root, stage).glob(f"{key}*/{RESULT}")]
    if not hits:
        raise FileNotFoundError(f"no align or attack run with key {key!r} in {root}: `panacea-lab runs` lists them")
    if len(hits) > 1:
        raise FileNotFoundError(f"key {key!r} names {len(hits)} runs ({', '.join(p.parent.name for p in hits)}): "
                                "give more of it")
    return hits[0].parent.parent.name, json.loads(hits[0].read_text())
