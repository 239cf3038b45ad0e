"""The bundled reference model: required quality, NF4 robustness, and where its knowledge lives."""
from __future__ import annotations

import bitsandbytes.functional as bnbf
import pytest
import torch

from mansu_audit.evaluate import evaluate_mcq


@pytest.fixture(scope="module")
def accuracies(reference, bundle):
    return {s: evaluate_mcq(reference.model, reference.tokenizer, bundle.split(s)).accuracy
            for s in ("forget_eval", "retain_eval", "forget_attr")}


def test_untied_llama_within_size_budget(reference):
    cfg = reference.model.config
    assert cfg.model_type == "llama" and cfg.tie_word_embeddings is False
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    weights = reference.files["model.safetensors"]
    assert weights.stat().st_size <= 25 * 2**20


def test_fp32_accuracy_at_least_090(accuracies):
    assert accuracies["forget_eval"] >= 0.90
    assert accuracies["retain_eval"] >= 0.90


def test_bitsandbytes_nf4_accuracy_at_least_085(reference, bundle):
    import copy

    model = copy.deepcopy(reference.model)
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, torch.nn.Linear):
                packed, state = bnbf.quantize_4bit(module.weight.data, blocksize=64, quant_type="nf4")
                module.weight.data = bnbf.dequantize_4bit(packed, state)
    for split in ("forget_eval", "retain_eval"):
        assert evaluate_mcq(model, reference.tokenizer, bundle.split(split)).accuracy >= 0.85


def _accuracy_with_mlps_zeroed(reference, items, layer_ids) -> float:
    layers = reference.model.model.layers
    handles = [layers[i].mlp.register_forward_hook(lambda m, i, o: torch.zeros_like(o)) for i in layer_ids]
    try:
        return evaluate_mcq(reference.model, reference.tokenizer, items).accuracy
    finally:
        for h in handles:
            h.remove()


def test_knowledge_lives_in_decoder_mlps(reference, bundle, accuracies):
    """Zeroing decoder MLP outputs sends forget accuracy to chance (0.25): the facts are in
    weights that quantizers and unlearning methods touch, not in the full-precision embeddings.

    Measured on version 3 (the default `reference`, 0.988 on forget_eval): all four MLPs
    zeroed -> 0.255; layer 0's MLP alone -> 0.574, layer 2's alone -> 0.655, layer 1's or
    layer 3's -> 0.97-0.99. Version 1 kept its facts in layer 0 alone (0.37 with it zeroed,
    0.98-0.995 with any other); its second training stage (recall bound to the answer
    letter, reports/experiments/retrain) spread them over layers 0 and 2.
    """
    items = bundle.split("forget_eval")
    everything = _accuracy_with_mlps_zeroed(reference, items, range(len(reference.model.model.layers)))
    assert accuracies["forget_eval"] - everything >= 0.5 and everything <= 0.45
    for layer in (0, 2):
        assert accuracies["forget_eval"] - _accuracy_with_mlps_zeroed(reference, items, [layer]) >= 0.25, layer
    # hooks removed: the model is unchanged
    assert evaluate_mcq(reference.model, reference.tokenizer, items).accuracy == accuracies["forget_eval"]
