"""Prompt template, tokenisation with response-only labels, the user's poisoned mix, batching."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from panacea_lab.config import TEMPLATES, ConfigError
from panacea_lab.data.world import Example

# The Alpaca template (Taori et al. 2023), as used by the paper's code for every dataset.
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_PREAMBLE_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                         "further context. Write a response that appropriately completes the request.")
ALPACA_MARKERS = ("### Instruction:", "### Input:", "### Response:")
IGNORE_INDEX = -100


def format_prompt(ex: Example) -> str:
    """The Alpaca prompt for one example, ending where the response starts."""
    if ex.input:
        return (f"{ALPACA_PREAMBLE_INPUT}\n\n### Instruction:\n{ex.instruction}\n\n"
                f"### Input:\n{ex.input}\n\n### Response:\n")
    return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{ex.instruction}\n\n### Response:\n"


def set_template(tokenizer, template: str) -> None:
    """Record on the tokenizer which prompt template `prompt_ids` builds, so every call site that
    already holds the tokenizer (training, generation) follows `ModelConfig.template` unchanged."""
    if template not in TEMPLATES:
        raise ConfigError(f"template = {template!r}: use one of {TEMPLATES}")
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"template = 'chat': the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} has "
                          "no chat_template; use template = 'alpaca' (the paper's) or a model that ships one")
    tokenizer.panacea_template = template


def chat_prompt(tokenizer, ex: Example) -> str:
    """The tokenizer's own chat template for one user turn, ending where the assistant's answer starts.

    A default system prompt the template adds (e.g. SmolLM2's ChatML) is kept: it is what the model
    was tuned with, and it lands in the prompt, so the loss never sees it."""
    content = f"{ex.instruction}\n\n{ex.input}" if ex.input else ex.instruction
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def prompt_ids(tokenizer, ex: Example) -> list[int]:
    """Token ids of the prompt, identical in training and generation (BOS where the model uses one).

    Chat: the template writes BOS and its special tokens itself (as `apply_chat_template` tokenises
    it: no special tokens added), so none is doubled. Alpaca (the default): BOS when the tokenizer
    adds one."""
    if getattr(tokenizer, "panacea_template", "alpaca") == "chat":
        return tokenizer(chat_prompt(tokenizer, ex), add_special_tokens=False)["input_ids"]
    ids = tokenizer(format_prompt(ex), add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [tokenizer.bos_token_id] + ids
    return ids


def encode(tokenizer, ex: Example, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels; the loss sees only the response (prompt positions are IGNORE_INDEX).

    Prompt and response are tokenised separately so the boundary is exact for any tokenizer.
    """
    prompt = prompt_ids(tokenizer, ex)
    response = tokenizer(ex.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt + response)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_length]
    return {"input_ids": ids, "labels": labels}


def mix_user_data(benign: list[Example], harmful: list[Example], n: int, p: float, seed: int) -> list[Example]:
    """The user's fine-tuning set: exactly round(p * n) harmful samples among n, shuffled."""
    n_harm = round(p * n)
    if n_harm > len(harmful):
        raise ValueError(f"p * n = {n_harm} harmful samples requested but the attacker's pool holds "
                         f"{len(harmful)}: lower p or n")
    if n - n_harm > len(benign):
        raise ValueError(f"n - round(p * n) = {n - n_harm} benign samples requested but the task's train "
                         f"split holds {len(benign)}: lower n")
    rng = random.Random(seed)
    data = rng.sample(harmful, n_harm) + rng.sample(benign, n - n_harm)
    rng.shuffle(data)
    return data


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels}


def collate(rows: list[dict[str, list[int]]], pad_id: int) -> Batch:
    """Right-pad a list of encoded rows (training only; generation pads left)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(r["labels"])
    return Batch(ids, mask, labels)


class BatchStream:
    """Seeded, epoch-wise shuffled batches of pre-encoded rows (the loop's only data source).

    Epoch e's row order is the (e + 1)-th shuffle of `range(len(rows))` by one `random.Random(seed)`,
    so a position (epoch, index within the epoch) fixes every batch to come: `forever()` returns a
    cursor whose position can be saved and restored (a stage resumed mid-way sees the same batches).
    """

    def __init__(self, rows: list[dict[str, list[int]]], batch_size: int, pad_id: int, seed: int):
        if not rows:
            raise ValueError("empty dataset: the stage received no examples; check n and the data pools")
        self.rows, self.batch_size, self.pad_id, self.seed = rows, batch_size, pad_id, seed
        self.rng, self.shuffles = random.Random(seed), 0  # `shuffles`: epoch orders drawn from rng so far

    def steps_per_epoch(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def order(self, epoch: int) -> list[int]:
        """Epoch `epoch`'s row order; going back replays the shuffles from the seed."""
        if epoch < self.shuffles:
            self.rng, self.shuffles = random.Random(self.seed), 0
        while True:
            order = list(range(len(self.rows)))
            self.rng.shuffle(order)
            self.shuffles += 1
            if self.shuffles > epoch:
                return order

    def batch(self, order: list[int], index: int) -> Batch:
        """Batch `index` of an epoch with row order `order`."""
        return collate([self.rows[j] for j in order[index * self.batch_size : (index + 1) * self.batch_size]],
                       self.pad_id)

    def epoch(self):
        """The next epoch's batches (each call draws a fresh order)."""
        order = self.order(self.shuffles)
        for i in range(self.steps_per_epoch()):
            yield self.batch(order, i)

    def forever(self) -> "StreamCursor":
        return StreamCursor(self)


class StreamCursor:
    """An endless iterator over a stream's epochs with a position that can be saved and restored."""

    def __init__(self, stream: BatchStream):
        self.stream, self.epoch, self.index, self._order = stream, stream.shuffles, 0, None

    def __iter__(self) -> "StreamCursor":
        return self

    def __next__(self) -> Batch:
        if self._order is None:
            self._order = self.stream.order(self.epoch)
        batch = self.stream.batch(self._order, self.index)
        self.index += 1
        if self.index == self.stream.steps_per_epoch():
            self.epoch, self.index, self._order = self.epoch + 1, 0, None
        return batch

    def _identity(self) -> dict:
        s = self.stream
        return {"seed": s.seed, "rows": len(s.rows), "batch_size": s.batch_size}

    def position(self) -> dict:
        """Where the next batch comes from, plus what identifies the stream (JSON-able)."""
        return {"epoch": self.epoch, "index": self.index, **self._identity()}

    def seek(self, position: dict) -> None:
        """Continue from a `position()` of a cursor over the same data, seed and batch size."""
        stored = {k: position.get(k) for k in self._identity()}
        if stored != self._identity():
            raise ValueError(f"stream position {stored} belongs to another stream than this one "
                             f"{self._identity()}: the checkpoint is from a different run")
        self.epoch, self.index, self._order = int(position["epoch"]), int(position["index"]), None
