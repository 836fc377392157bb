"""Shared fixtures: a tiny random Llama with the world's tokenizer, and a throw-away run store."""
from __future__ import annotations

import pytest
import torch

from panacea_lab.config import ModelConfig
from panacea_lab.training.store import RunStore
from panacea_lab.testing import save_tiny_llama
from panacea_lab.data.world import build_world

torch.set_num_threads(1)  # two torch processes on 2 cores stall each other; tests stay single-threaded


@pytest.fixture(scope="session")
def world():
    return build_world(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, world):
    """A 2-layer, 32-wide Llama saved in HF format: small enough for exact, fast checks."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny_cfg(tiny_model_dir):
    return ModelConfig(path=str(tiny_model_dir), lora_r=4, lora_alpha=8, max_length=96)


def lora_with_random_b(cfg: ModelConfig):
    """The model with a LoRA adapter whose B is random, in train mode: B = 0 at init would hide every
    A gradient, so a formula test would check only half of the tensors."""
    from panacea_lab.models.loading import attach_lora, load_base

    model = attach_lora(load_base(cfg), cfg, seed=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))  # CPU draw: any device
    return model.train()


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs")


@pytest.fixture
def panacea_run(tiny_cfg):
    """A tiny Panacea run (20 samples, one epoch) for the post-fine-tuning tests."""
    from panacea_lab.config import AlignConfig, AttackConfig
    from panacea_lab.defenses.panacea import PanaceaConfig

    align = AlignConfig(model=tiny_cfg, n_refusal=16, n_replay_per_task=2, epochs=1, batch_size=8)
    return AttackConfig(align=align, n=20, p=0.2, epochs=1, batch_size=10,
                        defense=PanaceaConfig(rho=0.4, lam=0.1, harmful_batch_size=4))
