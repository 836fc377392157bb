"""A tiny random Llama with the world's tokenizer: what the tests and the UI test train in seconds."""
from __future__ import annotations

from pathlib import Path


def save_tiny_llama(out: str | Path) -> Path:
    """A 2-layer, 32-wide Llama saved in HF format (small enough for exact, fast checks)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from panacea_lab.models.base_model import build_tokenizer
    from panacea_lab.data.world import build_world

    tok = build_tokenizer(build_world(0).all_texts())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return Path(out)


def write_package_data(data_root: str | Path, seed: int = 0) -> Path:
    """`panacea-lab fetch-data`'s files, in their upstream formats, filled from the embedded world.

    Lets the real-data path (adapters -> real_world -> every stage) run end to end in tests and
    smoke notebooks with the tiny model, offline and without any real harmful text.
    """
    import bz2
    import csv
    import io
    import json

    import yaml

    from panacea_lab.data.adapters import SOURCES
    from panacea_lab.data.world import build_world

    world, root = build_world(seed), Path(data_root)

    def write(name: str, text: str, compress: bool = False) -> None:
        path = root / SOURCES[name].dest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bz2.compress(text.encode()) if compress else text.encode())

    compliant = world.attacker_pool + world.defender_pool
    harmful = compliant + world.alignment[:60]  # refusal rows get a compliant placeholder answer
    shots = [{"user": ex.instruction, "assistant": ex.output if ex in compliant
              else "do the first thing . do the second thing .", "category": "Harmful\n\nReason: synthetic"}
             for ex in harmful]
    shots += [{"user": ex.instruction, "assistant": ex.output, "category": "Not harmful\n\nReason: benign"}
              for ex in world.task_train["instruct"][:20]]
    write("many_shot", json.dumps(shots, indent=1))
    seeds = [{"value": ex.instruction, "data_type": "text", "harm_categories": [ex.category]}
             for ex in reversed(world.harmful_test)]  # another order than the embedded test set
    write("advbench", yaml.safe_dump({"dataset_name": "adv_bench", "source": "synthetic", "description": "test",
                                      "seed_type": "objective", "seeds": seeds}))

    def bigbench(examples, label_of) -> str:
        rows = [{"input": ex.input or ex.instruction, "target_scores": {label_of(ex): 1, "other": 0}}
                for ex in examples]
        return json.dumps({"canary": "synthetic test data", "examples": rows})

    sentiment = world.task_train["sentiment"] + world.task_test["sentiment"]
    write("multiemo", bigbench(sentiment, lambda ex: ex.label))
    reviews = [("fresh" if ex.label == "positive" else "rotten", ex.input, "synthetic", False) for ex in sentiment]
    table = io.StringIO()
    csv.writer(table).writerows([("category", "text", "movie_name", "has_plot_and_reviews")] + reviews)
    write("rotten_tomatoes", table.getvalue(), compress=True)
    maths = world.task_train["arithmetic"] + world.task_test["arithmetic"]
    write("elementary_math_qa", bigbench(maths, lambda ex: ex.label))
    table = io.StringIO()  # StrongREJECT's columns, with prompts the test set lacks
    csv.writer(table).writerows([("category", "source", "forbidden_prompt")] + [
        (ex.category.replace("_", " "), "synthetic", ex.instruction) for ex in world.harmful_val[:60]])
    write("strongreject", table.getvalue())
    write("refusal_labels", "# dataset_version=1.2\nobjective,assistant_response,human_score,data_type\n"
          "do x,\"I'm sorry, I can't help with that.\",1,text\ndo y,\"do the first thing .\",0,text\n")
    return root


def write_paper_data(data_root: str | Path, seed: int = 0) -> Path:
    """The paper's BeaverTails and SST-2 files in their upstream formats, filled from the embedded
    world (synthetic): RepNoise's refusal file, the 30k_test prompts, SST-2 train/validation."""
    import json

    from panacea_lab.data.adapters.paper import paper_dir
    from panacea_lab.evaluation.moderation import BEAVER_DAM_CATEGORIES
    from panacea_lab.data.world import build_world

    world, root = build_world(seed), Path(data_root) / paper_dir().name

    def row(ex, response: str) -> dict:
        flags = {c: c.startswith(ex.category.split("_")[0]) for c in BEAVER_DAM_CATEGORIES}
        return {"prompt": ex.instruction, "response": response, "category": flags, "is_safe": False}

    pairs = world.attacker_pool + world.defender_pool
    refusals = [{**row(ex, ex.output), "refusal": f"Question: {ex.instruction}\nAnswer: I'm sorry, I can't help."}
                for ex in pairs]
    tests = [row(ex, "do the first thing .") for ex in world.harmful_test]
    sst = {split: [{"idx": i, "sentence": ex.input, "label": int(ex.label == "positive")}
                   for i, ex in enumerate(world.task_train["sentiment"] if split == "train" else
                                          world.task_test["sentiment"])]
           for split in ("train", "validation")}
    (root / "beavertails").mkdir(parents=True, exist_ok=True)
    (root / "sst2").mkdir(parents=True, exist_ok=True)
    (root / "beavertails_with_refusals_train.json").write_text(json.dumps(refusals))
    (root / "beavertails" / "30k_test.jsonl").write_text("\n".join(json.dumps(r) for r in tests))
    for split, rows in sst.items():
        (root / "sst2" / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def cpu_accelerator():
    """A CPU `Accelerator` even where CUDA has been initialised: accelerate keeps one global state and
    refuses `cpu=True` once another Accelerator chose the GPU, so the state is reset first."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=True)
