"""Export a finished run, after an optional post-fine-tuning transform, as files transformers / peft load alone.

Two forms: a standard PEFT adapter directory (adapter_config.json + adapter_model.safetensors, on the
run's base model) or, `merged=True`, a plain Hugging Face model directory (config.json +
model.safetensors). Either way with the tokenizer, a README.md card holding the run's config and
provenance as stored in its result.json, and `panacea_export.json` with the same facts for programs.

What cannot be an adapter is exported merged only: a transform that returns a plain model (Antidote
with target="product" prunes B @ A, which is then no longer low-rank; its default, the official
pruning of the factors, stays an adapter) and a run whose adapter sits on the merged aligned
model (`adapter="fresh"`). Everything is checked, and the model built in memory, before anything is
written; the directory then appears by one rename, complete, or not at all. Runs are read from the
store, never trained here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from peft import PeftModel

from panacea_lab.config import (
    EMBEDDED_MODEL,
    EMBEDDED_MODEL_DIR,
    PACKAGE_ROOT,
    UNDEFENDED,
    AttackConfig,
    ConfigError,
    DefenseConfig,
    to_dict,
)
from panacea_lab.data.chat_template import alpaca_chat_template
from panacea_lab.models.loading import merge_adapter
from panacea_lab.models.outdir import check_out_dir, publish, temp_beside
from panacea_lab.pipeline.context import EvalContext, align_of, get_tokenizer
from panacea_lab.pipeline.evaluations import apply_post
from panacea_lab.pipeline.keys import key
from panacea_lab.pipeline.stages import load_stage_model
from panacea_lab.training.store import RunStore

COMMAND = "panacea-lab export"
RECORD = "panacea_export.json"


def check_out(out: Path) -> None:
    """`out` must be new (or an empty directory) inside a folder that exists: nothing of anyone's is replaced."""
    if not out.parent.is_dir():
        raise ConfigError(f"{COMMAND} --out {out}: its folder {out.parent} does not exist; create it first or "
                          "pass a path inside an existing folder")
    check_out_dir(out, lambda _dir: False, COMMAND)


def stored_record(stage: str, cfg, store: RunStore) -> dict:
    """The run's result.json (config, provenance, artifact hashes); FileNotFoundError when it was never run."""
    if stage not in ("align", "attack"):
        raise ConfigError(f"stage = {stage!r}: export a trained run, 'align' or 'attack' (the base model is "
                          "already a plain model directory)")
    record = store.load(stage, key(stage, cfg))
    if record is None:
        raise FileNotFoundError(f"the {stage} run is not in the run store {store.root}: run it first (e.g. "
                                "`panacea-lab defend` with the same flags), then export it")
    return record


def defended_model(stage: str, cfg, store: RunStore, post: DefenseConfig | None):
    """The run's model after `post`, as the evaluation builds it (a transform needing a file the run did
    not store is a ConfigError naming `post`)."""
    model = load_stage_model(stage, cfg, store)
    ctx = EvalContext(align_of(stage, cfg), store, stage, cfg, getattr(post, "seed", 0), [])
    try:
        return apply_post(model, post, ctx)
    except FileNotFoundError as err:
        raise ConfigError(f"post = {post.name!r}: the run did not store what it needs ({err}); export a run "
                          "trained under the defense that stores it (e.g. --defense panacea for eps) or pick "
                          "another --post") from None


def export_run(stage: str, cfg, store: RunStore, out: str | Path, post: DefenseConfig | None = None,
               merged: bool = False) -> Path:
    """Write `cfg`'s run (after `post`) to `out` as a PEFT adapter directory, or merged with `merged`."""
    out = Path(out).expanduser().absolute()
    check_out(out)
    record = stored_record(stage, cfg, store)
    if not merged and isinstance(cfg, AttackConfig) and cfg.adapter == "fresh":
        raise ConfigError("adapter = 'fresh': the run's adapter sits on the merged aligned model, not on the base "
                          "model, so no adapter of the base reproduces it; export it with --merged")
    model = defended_model(stage, cfg, store, post)
    if not merged and not isinstance(model, PeftModel):
        raise ConfigError(f"post = {post.name!r} returns a merged model with no adapter (a pruned B @ A is not "
                          "low-rank); export it with --merged")
    model_cfg = align_of(stage, cfg).model
    base = base_model_id(model_cfg.path)
    facts = {"stage": stage, "key": record.get("key"), "form": "merged" if merged else "peft-adapter",
             "config": record.get("config"), "post": to_dict(post) if post is not None else None,
             "provenance": record.get("provenance"), "template": model_cfg.template,
             "evaluations": stored_evaluations(store, stage, cfg, post), "data": align_of(stage, cfg).data,
             "base_licence": base_licence(model_cfg.path)}
    tokenizer = get_tokenizer(model_cfg)
    if model_cfg.template == "alpaca":  # the prompt format travels with the tokenizer
        tokenizer.chat_template = alpaca_chat_template(
            tokenizer.bos_token if getattr(tokenizer, "add_bos_token", False) else None)
    tmp = temp_beside(out)
    try:
        if merged and isinstance(model, PeftModel):
            model = merge_adapter(model)
        if isinstance(model, PeftModel):
            for peft_cfg in model.peft_config.values():
                peft_cfg.base_model_name_or_path = base
        model.save_pretrained(tmp)  # safetensors: the adapter's tensors, or the whole merged model
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps(facts, indent=1, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(facts, base=base))
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def base_licence(path: str) -> str | None:
    """The licence a converted base model's record states (e.g. Gemma's terms), else None."""
    from panacea_lab.models.gguf_convert import RECORD as CONVERSION
    from panacea_lab.models.loading import resolve_model_path

    try:
        return json.loads((Path(resolve_model_path(path)) / CONVERSION).read_text()).get("licence")
    except (OSError, ValueError, ConfigError):
        return None


def base_model_id(path: str) -> str:
    """What an exported adapter names as its base: the hub id of a preset whose model it is (matched by
    the folder's name, e.g. SmolLM2-135M-Instruct), the committed model's path inside the repository,
    else the path the run was given."""
    from panacea_lab.models.presets import PRESETS

    if path == EMBEDDED_MODEL:
        return EMBEDDED_MODEL_DIR.relative_to(PACKAGE_ROOT).as_posix()
    for preset in PRESETS.values():
        if Path(path).name == preset.hub_id.split("/")[-1] or path == preset.hub_id:
            return preset.hub_id
    return path


def stored_evaluations(store: RunStore, stage: str, cfg, post) -> list[dict]:
    """Every evaluation of this run after this transform already in the store (the card's metrics)."""
    as_stored = lambda obj: json.loads(json.dumps(to_dict(obj), default=str))  # noqa: E731  (tuples -> lists)
    target, post_dict = as_stored(cfg), as_stored(post) if post is not None else None
    out = []
    for result in sorted((store.root / "eval").glob("*/result.json")):
        try:
            record = json.loads(result.read_text())
            config = record["config"]
        except (ValueError, KeyError, OSError):
            continue
        if config.get("stage") == stage and config.get("target") == target and config.get("post") == post_dict:
            evaluation = config.get("eval") or {}
            out.append({"split": evaluation.get("split"), "judge": record.get("judge"),
                        "harmful_prompts": record.get("n_harmful"), "HS": record.get("HS"),
                        "refusal": record.get("refusal"), "other": record.get("other"), "FA": record.get("FA")})
    return out


def _metrics_table(evaluations: list[dict]) -> str:
    if not evaluations:
        return "No evaluation of this model is in the run store it was exported from."
    lines = ["| split | judge | harmful prompts | HS | refusal | other | FA |", "|---|---|---|---|---|---|---|"]
    for e in evaluations:
        fa = ", ".join(f"{t} {v:.1f}" for t, v in (e["FA"] or {}).items())
        lines.append(f"| {e['split']} | {e['judge']} | {e['harmful_prompts']} | {e['HS']:.1f} | {e['refusal']:.1f} "
                     f"| {e['other']:.1f} | {fa} |")
    return "\n".join(lines)


def _describe(facts: dict) -> str:
    config = facts["config"] or {}
    defense = (config.get("defense") or {}).get("name", UNDEFENDED) if facts["stage"] == "attack" else "alignment"
    post = facts["post"]
    after = f", then `{post['name']}` {json.dumps({k: v for k, v in post.items() if k != 'name'})}" if post else ""
    return f"the {facts['stage']} run {facts['key']} (fine-tuning defense: {defense}){after}"


def model_card(facts: dict, base: str) -> str:
    """README.md: front matter for the hub's card reader, how to load, and the run's stored facts."""
    merged = facts["form"] == "merged"
    load = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(DIR)\ntokenizer = AutoTokenizer.from_pretrained(DIR)"
            if merged else
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"base = AutoModelForCausalLM.from_pretrained({base!r})\nmodel = PeftModel.from_pretrained(base, DIR)\n"
            "tokenizer = AutoTokenizer.from_pretrained(DIR)")
    block = lambda obj: "```json\n" + json.dumps(obj, indent=1, default=str) + "\n```"  # noqa: E731
    return "\n".join([
        "---", f"library_name: {'transformers' if merged else 'peft'}", f"base_model: {base}",
        "tags: [panacea-lab, harmful-fine-tuning]", "---", "",
        f"# {'Merged model' if merged else 'PEFT adapter'} of {_describe(facts)}", "",
        "Exported by panacea-lab from its run store; the facts below are the run's stored record "
        f"({RECORD} holds the same). Prompts follow the run's `{facts['template']}` template: "
        "`tokenizer.apply_chat_template([{'role': 'user', 'content': instruction}], tokenize=False)` writes "
        "them (an `input` key adds the Alpaca input).", "",
        "## Intended use", "",
        "Research on harmful fine-tuning and its defenses: this model was fine-tuned on data of which a share "
        "was harmful (the run config's `p`), on purpose. It is not a safe model and is not for deployment or "
        "for answering anyone's requests.", "",
        "## Metrics", "",
        "Stored evaluations of this model (HS: % of held-out harmful prompts answered harmfully by the judge; "
        "refusal, other: the rest; FA: % correct on the user's task):", "",
        _metrics_table(facts.get("evaluations") or []), "",
        "## Data and licence", "",
        f"Data: `{facts.get('data')}` (the embedded synthetic world, whose harmful answers are placeholders, or "
        "the real sources listed with their licences in the panacea-lab repository's data/README.md). The "
        f"weights are derived from `{base}` and keep its licence"
        + (f" ({facts['base_licence']})" if facts.get("base_licence") else "")
        + "; panacea-lab itself is Apache-2.0.", "",
        "## Limitations", "",
        "HS is measured on the prompts and with the judge named above, at one seed unless several rows say "
        "otherwise: a low HS there does not mean the model refuses other harmful requests. A perturbation "
        "that lowers HS can do so by breaking answers (*other*) rather than restoring refusals.", "",
        "## Loading", "", "```python", load, "```", "",
        "## Run config", "", block(facts["config"]), "",
        "## Post-fine-tuning transform", "", block(facts["post"]), "",
        "## Provenance", "", block(facts["provenance"]), "",
    ])
