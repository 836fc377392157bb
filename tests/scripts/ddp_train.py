"""Train the tiny model a few steps with the project's loop and save the LoRA weights.

Run once plainly and once under `accelerate launch --cpu --num_processes 2`: with the global batch
sharded across processes and DDP averaging, both must end at the same weights.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

from panacea_lab.config import ModelConfig
from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.models.loading import attach_lora, load_base, load_tokenizer
from panacea_lab.training.loop import LoopSettings, StepRule, train_loop


class RecordingRule(StepRule):
    """Plain SFT that also records which rows (first token ids) this process trained on."""

    seen: list = []

    def gradient(self, model, batch, step):
        self.seen.append(batch.input_ids[:, -4:].tolist())
        return super().gradient(model, batch, step)


from panacea_lab.data.world import build_world

model_dir, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
cfg = ModelConfig(path=model_dir, lora_r=4, lora_alpha=8, max_length=64)
tok = load_tokenizer(cfg)
rows = [encode(tok, ex, cfg.max_length) for ex in build_world(0).task_train["sentiment"][:24]]
model = attach_lora(load_base(cfg, torch.device("cpu")), cfg, seed=0)
torch.manual_seed(0)
rule = RecordingRule()
train_loop(model, BatchStream(rows, 8, tok.pad_token_id, 0), LoopSettings(epochs=1, lr=1e-2, batch_size=8), rule)
rank = int(os.environ.get("RANK", "0"))
with open(f"{out}.rank{rank}.json", "w") as f:
    json.dump(rule.seen, f)
if rank == 0:
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, out)
