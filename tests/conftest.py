"""Shared fixtures: the bundled benchmark, the reference tokenizer and tiny random models.

Tests never download anything: models are built from configs (seeded), the
tokenizer and benchmark are the bundled ones.
"""
from __future__ import annotations

import os

import pytest
import torch

from mansu_audit.data import BUNDLED_DATA, load_bundle

torch.set_num_threads(max(1, int(os.environ.get("MANSU_TEST_THREADS", "2"))))
REFERENCE_DIR = BUNDLED_DATA / "reference-model"


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, intermediate: int = 128, tie: bool = False, positions: int = 128):
    """A small random LlamaForCausalLM (GQA) for fast tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=positions, tie_word_embeddings=tie, bos_token_id=0, eos_token_id=1,
                      pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def bundle():
    return load_bundle("synthhazard")


@pytest.fixture(scope="session")
def ref_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(REFERENCE_DIR))


@pytest.fixture()
def tiny_model(ref_tokenizer):
    return tiny_llama(len(ref_tokenizer))


@pytest.fixture(scope="session")
def reference():
    """The bundled trained reference model (skips if its weights are not built yet)."""
    from mansu_audit.loading import load_model

    if not (REFERENCE_DIR / "model.safetensors").is_file():
        pytest.skip("reference model weights not built (benchmarks_data/reference-model/train.py)")
    return load_model("reference")
