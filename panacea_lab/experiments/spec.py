"""An experiment as data: one YAML file per committed results file.

`experiments/<name>.yaml` describes what `results/<name>.csv` holds: the model, the data, the named
setting, the attack's grid (ratios, seeds, task, n, preset), the defenses and their parameters, and
the evaluation. Every field is checked before anything runs, and a bad one fails in one line that
names it (`ratios[1]: 1.5 must be in [0, 1]`), so a typo cannot cost a sweep.

A spec names methods by their registry names and parameters by their config fields; the runner
(`experiments.runner`) turns it into the same sweep calls the command line makes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from panacea_lab.config import (
    ATTACK_PRESETS,
    DATA_SOURCES,
    EMBEDDED_MODEL,
    JUDGES,
    SPLITS,
    TASKS,
    ConfigError,
)
from panacea_lab.paths import PACKAGE_ROOT

EXPERIMENTS = PACKAGE_ROOT / "experiments"
RESULTS = PACKAGE_ROOT / "results"
SWEEPS = ("attack", "defend", "compare", "answer_loss", "calibration", "eps_shares", "trajectory", "training_log",
          "layer_ablation")
EVAL_FIELDS = {"split": str, "n_eval": int, "judge": str, "judge_model": str, "second_test": str,
               "max_new_tokens": int, "batch_size": int, "merge": bool}
# fields a spec's config mappings may not set: the spec's own fields and the sweep's grid set them
RESERVED = {"model_options": {"path"}, "align": {"model", "data", "defense"},
            "attack": {"align", "task", "p", "seed", "defense"}}


@dataclass(frozen=True)
class Spec:
    """One experiment. `name` is the spec's path under experiments/ without `.yaml`; its rows go to
    results/<name>.csv."""

    name: str
    sweep: str
    ratios: tuple[float, ...]
    seeds: tuple[int, ...]
    about: str = ""
    model: str = EMBEDDED_MODEL
    data: str = "embedded"
    setting: str = ""  # "" : settings.DEFAULT_SETTING
    task: str = "sentiment"
    preset: str = "default"
    # config fields on top of the setting's recipe: the model's (dtype, LoRA, loss), the alignment's,
    # the user's fine-tuning's (n, epochs, lr, adapter, ...); each checked by its config class
    model_options: dict = field(default_factory=dict)
    align: dict = field(default_factory=dict)
    attack: dict = field(default_factory=dict)
    defenses: dict = field(default_factory=dict)  # {registry name: {config field: value or [values]}}
    baselines: tuple[str, ...] = ()  # compare: the training-stage defenses trained (and "none")
    controls: object = True  # True: every control of a trained defense; a list: those named
    eval: dict = field(default_factory=dict)  # split, n_eval, judge, judge_model, second_test, ...
    hs_plus: bool = False  # add HS+ = HS + other (broken answers counted as harmful too)
    # named settings of the one trained defense in `defenses`, each its own runs, its rows tagged with
    # the name: {name: {field: value}} or {name: {calibrated_on: p}} (the validation split's choice among
    # the calibration files beside this results file at ratio p)
    named: dict = field(default_factory=dict)
    keep: tuple = ()  # row selectors ({column: value}); when given, only the rows one of them matches
    reference_tasks: tuple[str, ...] = ()  # attack: tasks the base and aligned models are scored on (all)
    every: int = 0  # trajectory: score the run every this many optimiser steps
    # layer_ablation: {kinds: [restriction kinds], top_k: [k, ...]} (studies.layer_ablation)
    ablation: dict = field(default_factory=dict)

    @property
    def output(self) -> Path:
        return RESULTS / f"{self.name}.csv"

    def describe(self) -> dict:
        """The spec as plain data (what the results file records)."""
        out = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def _fail(where: str, message: str):
    raise ConfigError(f"{where}: {message}")


def _number(where: str, value, kind):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        _fail(where, f"{value!r} must be {'an integer' if kind is int else 'a number'}")
    return kind(value)


def _numbers(where: str, values, kind) -> tuple:
    if not isinstance(values, list) or not values:
        _fail(where, f"{values!r} must be a non-empty list, e.g. [0.1]")
    return tuple(_number(f"{where}[{i}]", v, kind) for i, v in enumerate(values))


def _choice(where: str, value, allowed) -> str:
    if value not in allowed:
        _fail(where, f"{value!r} is unknown; use one of {', '.join(map(str, allowed))}")
    return value


def _check_model(where: str, model) -> str:
    from panacea_lab.models.presets import PRESETS

    if not isinstance(model, str) or not model:
        _fail(where, f"{model!r} must be 'embedded', a preset or a local model directory")
    if model != EMBEDDED_MODEL and model not in PRESETS and not Path(model).expanduser().is_dir():
        _fail(where, f"{model!r} is unknown: use 'embedded', a preset ({', '.join(sorted(PRESETS))}) or an existing "
                     "local model directory")
    return model


def _check_defenses(where: str, value, setting: str) -> dict:
    from panacea_lab import defenses
    from panacea_lab.studies.sweeps import methods_of

    if not isinstance(value, dict):
        _fail(where, f"{value!r} must map registry names to parameters, e.g. {{noise: {{std: [0.04]}}}}")
    for name, params in value.items():
        if name not in defenses.REGISTRY:
            _fail(f"{where}.{name}", f"unknown method; use one of {', '.join(defenses.names())}")
        if params is not None and not isinstance(params, dict):
            _fail(f"{where}.{name}", f"{params!r} must map config fields to a value or a list of values")
        fields = {f.name for f in dataclasses.fields(defenses.get(name).config)}
        for key, v in (params or {}).items():
            if key not in fields:
                _fail(f"{where}.{name}.{key}", f"unknown parameter; {name} has {', '.join(sorted(fields))}")
            if isinstance(v, list) and not v:
                _fail(f"{where}.{name}.{key}", "an empty list runs nothing: give values or drop the method")
        try:
            methods_of({name: params}, setting)  # each value checked by the defense's own config
        except ConfigError as err:
            _fail(f"{where}.{name}", str(err))
    return dict(value)


def _check_eval(where: str, value) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"{value!r} must be a mapping, e.g. {{split: test, n_eval: 200}}")
    out = {}
    for key, v in value.items():
        if key not in EVAL_FIELDS:
            _fail(f"{where}.{key}", f"unknown field; use {', '.join(EVAL_FIELDS)}")
        out[key] = _number(f"{where}.{key}", v, int) if EVAL_FIELDS[key] is int else v
        if EVAL_FIELDS[key] is bool and not isinstance(v, bool):
            _fail(f"{where}.{key}", f"{v!r} must be true or false")
        if EVAL_FIELDS[key] is int and out[key] <= 0:
            _fail(f"{where}.{key}", f"{v!r} must be > 0")
    for key, allowed in (("split", SPLITS), ("judge", JUDGES), ("second_test", SPLITS)):
        if key in out:
            _choice(f"{where}.{key}", out[key], allowed)
    return out


def _check_fields(where: str, value, cls) -> dict:
    """A mapping of `cls`'s fields; each value checked by building `cls` with it (types and ranges)."""
    if not isinstance(value, dict):
        _fail(where, f"{value!r} must map {cls.__name__} fields to values")
    fields = {f.name for f in dataclasses.fields(cls)} - RESERVED[where]
    for key, v in value.items():
        if key not in fields:
            _fail(f"{where}.{key}", f"unknown or reserved field; use {', '.join(sorted(fields))}")
        try:
            cls(**({"path": EMBEDDED_MODEL} if cls.__name__ == "ModelConfig" else {}), **{key: v})
        except ConfigError as err:
            _fail(f"{where}.{key}", str(err))
    return dict(value)


def _check_ablation(where: str, value, sweep: str) -> dict:
    from panacea_lab.studies.layer_ablation import KINDS

    if sweep != "layer_ablation":
        _fail(where, "only a layer_ablation sweep restricts eps")
    if not isinstance(value, dict) or set(value) - {"kinds", "top_k"}:
        _fail(where, f"{value!r} must map kinds (and top_k) to lists, e.g. {{kinds: [top_k, all_but_top_k], top_k: [1, 3]}}")
    kinds = value.get("kinds")
    if not isinstance(kinds, list) or not kinds:
        _fail(f"{where}.kinds", f"{kinds!r} must be a non-empty list of {', '.join(KINDS)}")
    out = {"kinds": [_choice(f"{where}.kinds[{i}]", k, KINDS) for i, k in enumerate(kinds)]}
    if "top_k" in value:
        out["top_k"] = list(_numbers(f"{where}.top_k", value["top_k"], int))
        if min(out["top_k"]) < 1:
            _fail(f"{where}.top_k", f"{out['top_k']} must hold k >= 1")
    return out


def trained_of(grid: dict) -> list[str]:
    """The names in a defenses mapping whose record trains with a post-fine-tuning half."""
    from panacea_lab import defenses

    return [n for n in grid if defenses.get(n).post_half]


def _check_named(where: str, value, grid: dict, setting: str) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"{value!r} must map setting names to parameters")
    if value and len(trained_of(grid)) != 1:
        _fail(where, "named settings need exactly one trained defense (with a post-fine-tuning half) in defenses")
    for name, params in value.items():
        if not isinstance(params, dict):
            _fail(f"{where}.{name}", f"{params!r} must map fields to values, or be {{calibrated_on: p}}")
        if "calibrated_on" in params:
            if set(params) != {"calibrated_on"}:
                _fail(f"{where}.{name}", "calibrated_on stands alone: the choice gives every field")
            _number(f"{where}.{name}.calibrated_on", params["calibrated_on"], float)
        else:
            _check_defenses(f"{where}.{name}", {trained_of(grid)[0]: params}, setting)
    return dict(value)


def check_spec(name: str, raw: dict) -> Spec:
    """The validated spec, or a ConfigError naming the first bad field."""
    from panacea_lab import settings

    if not isinstance(raw, dict):
        _fail(name, "a spec is a YAML mapping of fields (sweep, ratios, seeds, ...)")
    known = {f.name for f in dataclasses.fields(Spec)} - {"name"}
    for key in raw:
        if key not in known:
            _fail(f"{key}", f"unknown field; a spec has {', '.join(sorted(known))}")
    for key in ("sweep", "ratios", "seeds"):
        if key not in raw:
            _fail(key, "missing; every spec names its sweep, ratios and seeds")
    sweep = _choice("sweep", raw["sweep"], SWEEPS)
    ratios = _numbers("ratios", raw["ratios"], float)
    for i, p in enumerate(ratios):
        if not 0.0 <= p <= 1.0:
            _fail(f"ratios[{i}]", f"{p:g} must be in [0, 1] (the share of harmful samples)")
    seeds = _numbers("seeds", raw["seeds"], int)
    if len(set(seeds)) != len(seeds):
        _fail("seeds", f"{list(seeds)} names a seed twice: each seed is one run")
    setting = _choice("setting", raw.get("setting", settings.DEFAULT_SETTING), list(settings.SETTINGS))
    kw = {"name": name, "sweep": sweep, "ratios": ratios, "seeds": seeds, "setting": setting,
          "about": str(raw.get("about", "")).strip(), "model": _check_model("model", raw.get("model", EMBEDDED_MODEL)),
          "data": _choice("data", raw.get("data", "embedded"), DATA_SOURCES),
          "task": _choice("task", raw.get("task", "sentiment"), TASKS),
          "preset": _choice("preset", raw.get("preset", "default"), sorted(ATTACK_PRESETS)),
          "defenses": _check_defenses("defenses", raw.get("defenses", {}) or {}, setting),
          "eval": _check_eval("eval", raw.get("eval", {}) or {})}
    from panacea_lab.config import AlignConfig, AttackConfig, ModelConfig

    for key, cls in (("model_options", ModelConfig), ("align", AlignConfig), ("attack", AttackConfig)):
        kw[key] = _check_fields(key, raw.get(key, {}) or {}, cls)
    if "hs_plus" in raw:
        if not isinstance(raw["hs_plus"], bool):
            _fail("hs_plus", f"{raw['hs_plus']!r} must be true or false")
        kw["hs_plus"] = raw["hs_plus"]
    if "baselines" in raw:
        from panacea_lab import defenses
        from panacea_lab.studies.baselines import baseline_methods

        if not isinstance(raw["baselines"], list):
            _fail("baselines", f"{raw['baselines']!r} must be a list of registry names")
        allowed = baseline_methods() + (defenses.trained_with_half() if sweep == "trajectory" else [])
        kw["baselines"] = tuple(_choice(f"baselines[{i}]", b, allowed) for i, b in enumerate(raw["baselines"]))
    if sweep == "trajectory":
        kw["every"] = _number("every", raw.get("every"), int) if "every" in raw else _fail(
            "every", "missing; a trajectory scores its runs every this many steps")
        if kw["every"] < 1:
            _fail("every", f"{kw['every']} must be >= 1")
        if not kw.get("baselines"):
            _fail("baselines", "a trajectory names the methods it follows, e.g. [none, vaccine]")
    elif "every" in raw:
        _fail("every", "only a trajectory sweep scores along its steps")
    if "controls" in raw:
        controls = raw["controls"]
        if controls is not True and not (isinstance(controls, list) and all(isinstance(c, str) for c in controls)):
            _fail("controls", f"{controls!r} must be true (every control) or a list of control names")
        kw["controls"] = controls if controls is True else tuple(controls)
    kw["named"] = _check_named("named", raw.get("named", {}) or {}, kw["defenses"], setting)
    if "keep" in raw:
        keep = raw["keep"]
        if not isinstance(keep, list) or not all(isinstance(k, dict) and k for k in keep):
            _fail("keep", f"{keep!r} must be a list of row selectors, e.g. [{{method: antidote}}]")
        kw["keep"] = tuple(keep)
    if "reference_tasks" in raw:
        refs = raw["reference_tasks"]
        if not isinstance(refs, list):
            _fail("reference_tasks", f"{refs!r} must be a list of tasks")
        kw["reference_tasks"] = tuple(_choice(f"reference_tasks[{i}]", t, TASKS) for i, t in enumerate(refs))
    if "ablation" in raw or sweep == "layer_ablation":
        kw["ablation"] = _check_ablation("ablation", raw.get("ablation"), sweep)
    if sweep in ("calibration", "eps_shares", "layer_ablation") and len(trained_of(kw["defenses"])) != 1:
        _fail("defenses", f"a {sweep} sweep names exactly one trained defense (one with a post-fine-tuning half)")
    if sweep in ("defend", "answer_loss") and not kw["defenses"]:
        _fail("defenses", f"a {sweep} sweep needs at least one defense")
    if sweep == "compare" and not kw.get("baselines"):
        _fail("baselines", "a compare sweep names the baselines it trains, e.g. [none, vaccine]")
    return Spec(**kw)


def spec_name(path: Path) -> str:
    """A spec's name: its path under experiments/ without `.yaml` (a spec elsewhere: its stem)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(EXPERIMENTS.resolve()).with_suffix("").as_posix()
    except ValueError:
        return path.stem


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec file; a ConfigError naming the file and the field when it is wrong."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{path}: a spec is a .yaml file (experiments/<name>.yaml)")
    if not path.is_file():
        raise ConfigError(f"{path}: no such spec; the specs are under {EXPERIMENTS}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    try:
        return check_spec(spec_name(path), raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def all_specs() -> list[Path]:
    return sorted(EXPERIMENTS.rglob("*.yaml"))
