"""Greedy decoding of one left-padded batch, with finished rows dropped from the batch.

Why not only `model.generate`: it already stops when every row has produced EOS, but until then it
keeps computing the rows that have ended (a batch of refusals and long compliances runs at the
longest answer's length for every row). Here a row leaves the batch (and its KV cache) as soon as
it ends, by EOS or because its partial answer's score is already final. The arithmetic is the
same as `generate`'s (same prefill, positions, mask and cache), and on the CPU a row's logits do not
depend on how many rows share its batch, so the answers are the same token for token; tests hold
the two to that. Evaluation uses this loop on the CPU only.

`generate` stays the path for a model whose generation config asks for anything beyond plain
greedy decoding (a repetition penalty, suppressed tokens...), which this loop does not apply.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

Final = Callable[[str], bool]
# Generation-config fields that change nothing in greedy decoding with our explicit ids and lengths.
_INERT = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache", "do_sample",
          "temperature", "top_p", "top_k", "min_p", "typical_p", "max_length", "max_new_tokens", "num_beams",
          "transformers_version", "_from_model_config", "output_attentions", "output_hidden_states",
          "output_scores", "output_logits", "return_dict_in_generate"}


def plain_greedy(model) -> bool:
    """Whether `model.generate(do_sample=False)` is plain argmax decoding, which the loop reproduces."""
    config = getattr(model, "generation_config", None)
    if config is None or getattr(config, "num_beams", 1) not in (None, 1):
        return False
    return set(config.to_diff_dict()) <= _INERT


def _forward_options(model) -> tuple[str, dict]:
    """The cache keyword of this transformers version's forward ("cache" from 5.x, "past_key_values"
    before), and logits_to_keep=1 for the prefill where the model takes it (as `generate` does)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    prefill = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return ("cache" if "cache" in params else "past_key_values"), prefill


@torch.inference_mode()
def greedy_rows(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos_id: int | None,
                pad_id: int, finals: list[Final | None] | None = None, decode=None) -> torch.Tensor:
    """Generated token ids, shape (rows, max_new_tokens): each row's tokens up to and including its
    EOS (or the token that made its score final), then pad.

    Mirrors `generate`'s greedy path: positions are the cumulative mask minus one (0 on padding),
    the mask is dropped when nothing is padded, the prefill keeps only the last logits, and each
    step appends one token per live row. `finals[r]`, with `decode` (ids -> text), ends row r once
    its partial answer's score is final."""
    rows = ids.shape[0]
    out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    attention = None if bool((mask == 1).all()) else mask
    cache = DynamicCache(config=model.config)
    cache_key, prefill = _forward_options(model)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True,
                   **{cache_key: cache}, **prefill).logits[:, -1]
    live = torch.arange(rows)
    last = positions[:, -1:]
    for step in range(max_new_tokens):
        token = logits.float().argmax(-1).cpu()
        out[live, step] = token
        keep = token != eos_id if eos_id is not None else torch.ones_like(token, dtype=torch.bool)
        if finals is not None:
            for j, r in enumerate(live.tolist()):
                if keep[j] and finals[r] is not None and finals[r](decode(out[r, : step + 1])):
                    keep[j] = False
        if step == max_new_tokens - 1 or not bool(keep.any()):
            break
        if not bool(keep.all()):
            chosen = keep.nonzero().squeeze(1)
            cache.batch_select_indices(chosen.to(ids.device))
            live, token, last = live[chosen], token[chosen], last[chosen.to(last.device)]
            if attention is not None:
                attention = attention[chosen.to(attention.device)]
        last = last + 1
        if attention is not None:
            attention = torch.cat([attention, attention.new_ones(attention.shape[0], 1)], dim=1)
        logits = model(input_ids=token[:, None].to(ids.device), attention_mask=attention, position_ids=last,
                       use_cache=True, **{cache_key: cache}).logits[:, -1]
    return out


class _AnswerIsFinal(StoppingCriteria):
    """`generate`'s form of the same per-row stop: a row ends once its partial answer's score is final."""

    def __init__(self, width: int, eos_id: int | None, finals: list[Final | None], decode):
        self.width, self.eos_id, self.finals, self.decode = width, eos_id, finals, decode
        self.cut = [False] * len(finals)

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        for row, final in enumerate(self.finals):
            if final is None or self.cut[row]:
                continue
            generated = input_ids[row, self.width:]
            if self.eos_id is not None and bool((generated == self.eos_id).any()):
                self.finals[row] = None  # ended by EOS: generate pads it from here on
            elif final(self.decode(generated)):
                self.cut[row] = True
        return torch.tensor(self.cut, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def hf_rows(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos_id: int | None, pad_id: int,
            finals: list[Final | None] | None = None, decode=None) -> torch.Tensor:
    """The same contract as `greedy_rows`, through `model.generate` (the reference path)."""
    stop = None
    if finals is not None and any(f is not None for f in finals):
        stop = StoppingCriteriaList([_AnswerIsFinal(ids.shape[1], eos_id, list(finals), decode)])
    generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                               pad_token_id=pad_id, eos_token_id=eos_id, use_cache=True,
                               stopping_criteria=stop)[:, ids.shape[1]:].cpu()
    out = torch.full((ids.shape[0], max_new_tokens), pad_id, dtype=torch.long)
    out[:, : generated.shape[1]] = generated  # generate stops early when every row has ended
    return out
