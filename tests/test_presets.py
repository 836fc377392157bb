"""Real-model presets on tiny random stand-ins of each architecture: chat template, gradient
checkpointing, one Panacea step and one greedy generation each, and the memory estimate."""
from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch
import transformers
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import lora_with_random_b
from tokenizers import AddedToken

from panacea_lab.testing import cpu_accelerator
from panacea_lab.models.base_model import build_tokenizer
from panacea_lab.config import ConfigError, ModelConfig
from panacea_lab.data.batching import IGNORE_INDEX, BatchStream, encode, prompt_ids, set_template
from panacea_lab.defenses.panacea import PanaceaConfig, PanaceaRule
from panacea_lab.evaluation.evaluate import generate
from panacea_lab.models.loading import attach_lora, load_base, load_tokenizer
from panacea_lab.models.presets import (
    ADAPTER_BYTES,
    PRESETS,
    count_parameters,
    estimate_memory,
    format_estimate,
    preset_model_config,
)
from panacea_lab.training.loop import LoopSettings, train_loop

SYSTEM = "You are a helpful assistant ."
# ChatML with a default system prompt, like SmolLM2-135M-Instruct's template.
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\n" + SYSTEM + "<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def cuda_only(test):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


def world_tokenizer(world, chat: bool):
    """The world's tokenizer; with `chat`, ChatML tokens, template and <|im_end|> as EOS (as SmolLM2)."""
    tok = build_tokenizer(world.all_texts())
    if chat:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")],
                       special_tokens=True)
        tok.eos_token, tok.chat_template = "<|im_end|>", CHATML
    return tok


def save_tiny(out, architecture: str, tok):
    """A 2-layer, 32-wide random model of `architecture` (GQA: 4 query heads, 2 key/value heads)."""
    torch.manual_seed(0)
    cfg = getattr(transformers, architecture)(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def device_of_the_test(request, monkeypatch):
    """CPU tests stay on the CPU on a GPU machine too; a CUDA test gets a fresh accelerate state (a
    process-wide singleton that the CPU tests initialise with cpu=True), reset again afterwards."""
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setattr("panacea_lab.models.loading.pick_device", lambda: torch.device("cpu"))
        yield
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def chat_tok(world):
    tok = world_tokenizer(world, chat=True)
    set_template(tok, "chat")
    return tok


def panacea_setup(tok, world, max_length: int, **cfg):
    """Four user and four defender-harmful rows, and a Panacea rule (eps kept apart, so a changed
    weight shows the optimiser's step, not the final perturbation)."""
    pad = tok.pad_token_id
    user = BatchStream([encode(tok, e, max_length) for e in world.task_train["sentiment"][:4]], 4, pad, 0)
    harm = BatchStream([encode(tok, e, max_length) for e in world.defender_pool[:4]], 4, pad, 7)
    return user, PanaceaRule(PanaceaConfig(harmful_batch_size=4, **cfg), harm, apply_eps=False)


def checkpointed(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


# ------------------------------------------------------------------------------- chat template
def test_chat_prompt_is_the_tokenizers_own_template(chat_tok, world):
    for ex in (world.harmful_test[0], world.task_train["sentiment"][0]):  # without and with an input
        ids = prompt_ids(chat_tok, ex)
        content = f"{ex.instruction}\n\n{ex.input}" if ex.input else ex.instruction
        ref = chat_tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        assert ids == list(getattr(ref, "input_ids", ref))
        start = chat_tok.convert_tokens_to_ids("<|im_start|>")
        assert ids[0] == start and ids.count(start) == 3  # system, user, assistant: no special token doubled
        assert chat_tok.decode(ids).startswith("<|im_start|>")
        assert "You are a" in chat_tok.decode(ids)  # the template's default system prompt is kept


def test_chat_response_boundary_is_exact(chat_tok, world):
    ex = world.task_train["topic"][0]
    row, prompt = encode(chat_tok, ex, 400), prompt_ids(chat_tok, ex)
    assert row["input_ids"][: len(prompt)] == prompt
    assert row["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    response = row["labels"][len(prompt):]
    assert IGNORE_INDEX not in response and response == row["input_ids"][len(prompt):]
    assert response[-1] == chat_tok.eos_token_id == chat_tok.convert_tokens_to_ids("<|im_end|>")
    assert chat_tok.decode(response, skip_special_tokens=True).strip() == ex.output


def test_template_that_writes_bos_gets_exactly_one(world):
    tok = world_tokenizer(world, chat=True)
    tok.chat_template = "{{ bos_token }}" + CHATML
    set_template(tok, "chat")
    ids = prompt_ids(tok, world.harmful_test[0])
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_chat_without_a_template_or_unknown_template_is_refused(tiny_model_dir, world):
    with pytest.raises(ConfigError, match="^template = 'chat': the tokenizer .* has no chat_template"):
        load_tokenizer(ModelConfig(path=str(tiny_model_dir), template="chat"))
    with pytest.raises(ConfigError, match="^template = 'plain'"):
        set_template(build_tokenizer(world.all_texts()), "plain")


# ------------------------------------------------------------------------------- gradient checkpointing
def test_checkpointing_recomputes_and_leaves_the_same_panacea_gradient(tiny_cfg, world):
    tok = build_tokenizer(world.all_texts())
    grads, calls = {}, {}
    for ckpt in (False, True):
        model = lora_with_random_b(dataclasses.replace(tiny_cfg, gradient_checkpointing=ckpt))
        attn = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn"))
        calls[ckpt] = 0
        attn.register_forward_hook(lambda *_, c=ckpt: calls.__setitem__(c, calls[c] + 1))
        user, rule = panacea_setup(tok, world, tiny_cfg.max_length)
        rule.prepare(model, cpu_accelerator())
        rule.gradient(model, next(user.epoch()), step=0)
        grads[ckpt] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert calls[True] == 2 * calls[False] == 6  # three passes, each layer recomputed in its backward
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- every preset's architecture
@pytest.mark.parametrize("name", list(PRESETS))
def test_one_panacea_step_and_generation_per_preset(name, world, tmp_path):
    preset = PRESETS[name]
    tok = world_tokenizer(world, chat=preset.template == "chat")
    cfg = preset_model_config(name, path=str(save_tiny(tmp_path, preset.architecture, tok)), lora_r=4,
                              lora_alpha=8, max_length=96, dtype="float32")
    tok = load_tokenizer(cfg)
    assert tok.panacea_template == preset.template
    model = lora_with_random_b(cfg)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == set(preset.lora_targets)
    user, rule = panacea_setup(tok, world, cfg.max_length)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out = train_loop(model, user, LoopSettings(epochs=1, lr=1e-3, batch_size=4), rule, cpu_accelerator())
    assert out["steps"] == 1 and checkpointed(model) == preset.gradient_checkpointing
    for n, p in model.named_parameters():
        if n in before:
            assert torch.isfinite(p).all() and not torch.equal(p.detach(), before[n]), f"{n} did not change"
    answers = generate(model, tok, world.harmful_test[:3], max_new_tokens=4, batch_size=2)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


# ------------------------------------------------------------------------------- presets
def test_presets_match_published_sizes_and_the_papers_lora():
    assert {p.architecture for p in PRESETS.values()} == {"LlamaConfig", "Gemma2Config", "MistralConfig", "Qwen2Config",
                                                          "Gemma3TextConfig"}
    for p in PRESETS.values():
        n_params, _ = count_parameters(p.hf_config(), p.lora_r, p.lora_targets)
        assert n_params == pytest.approx(p.n_params, rel=0.005), p.name
        if p.name != "smollm2-135m":  # official code: r=32, alpha=4 on q/k/v, 256 tokens, Alpaca template
            assert (p.lora_r, p.lora_alpha, p.lora_targets, p.max_length, p.template) == (
                32, 4, ("q_proj", "k_proj", "v_proj"), 256, "alpaca")
    assert PRESETS["smollm2-135m"].template == "chat" and PRESETS["smollm2-135m"].dtype == "float32"
    assert PRESETS["gemma3-270m"].n_params == pytest.approx(268_098_176, rel=1e-3)  # the converted GGUF's count


def test_preset_config_overrides_and_errors(tiny_model_dir):
    cfg = preset_model_config("mistral-7b", path=str(tiny_model_dir), lora_r=8)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.gradient_checkpointing, cfg.max_length) == (8, 4, True, 256)
    with pytest.raises(ConfigError, match="^preset = 'llama3': use one of llama2-7b, gemma2-9b"):
        preset_model_config("llama3")
    with pytest.raises(ConfigError, match=r"\['rank'\]: not ModelConfig fields"):
        preset_model_config("llama2-7b", path=str(tiny_model_dir), rank=8)
    with pytest.raises(ConfigError, match="^template = "):
        preset_model_config("llama2-7b", path=str(tiny_model_dir), template="vicuna")


def test_smollm2_path_comes_from_its_resolver_lazily(tiny_model_dir, monkeypatch):
    missing = dataclasses.replace(PRESETS["smollm2-135m"], resolver="panacea_lab.no_such_module:resolve")
    with pytest.raises(ConfigError, match="^path = None: .*pass path="):
        missing.model_config()
    fake = types.SimpleNamespace(resolve_smollm2=lambda: tiny_model_dir)
    monkeypatch.setitem(sys.modules, "panacea_lab.models.smollm2", fake)
    assert preset_model_config("smollm2-135m").path == str(tiny_model_dir)


# ------------------------------------------------------------------------------- memory estimate
def test_estimate_counts_the_real_model_exactly(tiny_cfg):
    est = estimate_memory(tiny_cfg, batch_size=4, seq_len=32, device="cpu")
    model = lora_with_random_b(tiny_cfg)
    assert est["lora_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert est["n_params"] == sum(p.numel() for p in load_base(tiny_cfg).parameters())
    assert est["weights"] == 4 * est["n_params"] and est["cuda_context"] == 0


def test_estimate_scales_as_documented(tiny_cfg):
    bf16 = estimate_memory("llama2-7b", 10, 256, device="cuda")
    fp32 = estimate_memory("llama2-7b", 10, 256, device="cpu")
    assert (bf16["dtype"], fp32["dtype"]) == ("bfloat16", "float32") and 2 * bf16["weights"] == fp32["weights"]
    from panacea_lab import defenses

    copies = defenses.get(defenses.trained_with_half()[0]).lora_copies  # Panacea's eps, saved w, G_f, G_h, G_h'
    panacea = estimate_memory("llama2-7b", 10, 256, extra_copies=copies, device="cuda", method="Panacea")
    extra = copies * ADAPTER_BYTES * bf16["lora_params"]
    assert copies == 5 and panacea["total"] - bf16["total"] == panacea["extra_copies"] == extra > 0
    double = estimate_memory("llama2-7b", 20, 256, device="cuda")
    assert double["activations"] == 2 * bf16["activations"] and double["logits"] == 2 * bf16["logits"]
    assert double["weights"] == bf16["weights"] and double["adam"] == bf16["adam"]
    plain = estimate_memory(dataclasses.replace(tiny_cfg, gradient_checkpointing=False), 8, 64, device="cpu")
    ckpt = estimate_memory(dataclasses.replace(tiny_cfg, gradient_checkpointing=True), 8, 64, device="cpu")
    assert ckpt["activations"] < plain["activations"]
    line = format_estimate(panacea)
    assert "\n" not in line and "llama2-7b" in line and "GiB" in line and "Panacea copies" in line


@pytest.mark.parametrize("kw,field", [({"extra_copies": -1}, "extra_copies"), ({"device": "tpu"}, "device"),
                                      ({"batch_size": 0}, "batch_size"), ({"seq_len": 1.5}, "seq_len")])
def test_estimate_refuses_bad_arguments(kw, field):
    args = {"batch_size": 1, "seq_len": 8, **kw}
    with pytest.raises(ConfigError, match=f"^{field} = "):
        estimate_memory("smollm2-135m", **args)


# ------------------------------------------------------------------------------- CUDA only
@cuda_only
@pytest.mark.parametrize("name", ["llama2-7b", "smollm2-135m"])
def test_cuda_panacea_step_and_generation_in_the_presets_dtype(name, world, tmp_path):
    """On a GPU: the preset's dtype (llama2: bf16 base, checkpointed; smollm2: fp32), peft's fp32 LoRA,
    a fresh adapter (B = 0) and the real init path. clamp is raised so that G_h' reaches A at step 1."""
    preset = PRESETS[name]
    tok = world_tokenizer(world, chat=preset.template == "chat")
    cfg = preset_model_config(name, path=str(save_tiny(tmp_path, preset.architecture, tok)), lora_r=4,
                              lora_alpha=8, max_length=96)
    tok, model = load_tokenizer(cfg), attach_lora(load_base(cfg), cfg, seed=0)
    base_dtype = torch.float32 if preset.dtype == "float32" else torch.bfloat16
    assert model.get_input_embeddings().weight.dtype == base_dtype and checkpointed(model) == cfg.gradient_checkpointing
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # peft keeps LoRA in fp32
    user, rule = panacea_setup(tok, world, cfg.max_length, clamp=100.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train_loop(model.train(), user, LoopSettings(epochs=1, lr=1e-3, batch_size=4), rule, Accelerator())
    for n, p in model.named_parameters():
        if n in before:
            assert p.device.type == "cuda" and torch.isfinite(p).all() and not torch.equal(p.detach(), before[n]), n
    assert len(generate(model, tok, world.harmful_test[:3], max_new_tokens=4, batch_size=2)) == 3


@cuda_only
def test_cuda_weights_term_matches_allocated_memory(world, tmp_path):
    """The estimate's bf16 weights term against what CUDA allocates for a (small) loaded model."""
    tok = world_tokenizer(world, chat=False)
    torch.manual_seed(0)
    hf = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=4)
    transformers.AutoModelForCausalLM.from_config(hf).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = ModelConfig(path=str(tmp_path))
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    model = load_base(cfg)
    used = torch.cuda.memory_allocated() - start
    est = estimate_memory(cfg, 1, 8, device="cuda")
    assert est["dtype"] == "bfloat16" and used == pytest.approx(est["weights"], rel=0.05)
    del model
