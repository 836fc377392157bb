"""The package's Alpaca prompt as a Jinja chat template, for exported tokenizers: a model exported from
the run store carries the prompt format it was trained on, so `apply_chat_template` in plain
transformers writes the package's prompts (`data.batching.format_prompt`) token for token."""
from __future__ import annotations

import json

from panacea_lab.data.batching import ALPACA_PREAMBLE, ALPACA_PREAMBLE_INPUT


def alpaca_chat_template(bos: str | None = None) -> str:
    """`format_prompt` as a Jinja chat template, so an exported tokenizer's `apply_chat_template`
    writes the prompts the package trained on: a user turn's `content` is the instruction and an
    optional `input` key the Alpaca input; an assistant turn is its answer and EOS. `bos`: the token
    the package puts first (where the tokenizer adds one)."""
    lit = json.dumps  # a JSON string literal is a Jinja string literal
    return ("".join([
        f"{{{{ {lit(bos)} }}}}" if bos else "",
        "{%- for message in messages -%}",
        "{%- if message['role'] == 'user' and message.get('input') -%}",
        f"{{{{ {lit(ALPACA_PREAMBLE_INPUT + chr(10) * 2 + '### Instruction:' + chr(10))} + message['content'] + "
        f"{lit(chr(10) * 2 + '### Input:' + chr(10))} + message['input'] + {lit(chr(10) * 2 + '### Response:' + chr(10))} }}}}",
        "{%- elif message['role'] == 'user' -%}",
        f"{{{{ {lit(ALPACA_PREAMBLE + chr(10) * 2 + '### Instruction:' + chr(10))} + message['content'] + "
        f"{lit(chr(10) * 2 + '### Response:' + chr(10))} }}}}",
        "{%- elif message['role'] == 'assistant' -%}{{ message['content'] + eos_token }}",
        "{%- endif -%}{%- endfor -%}"]))
