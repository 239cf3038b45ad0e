"""The fake-quant path agrees with models loaded through transformers' bitsandbytes integration.

NF4 (compute dtype float32): the deployed Linear4bit weights equal our fake-quant bit for bit, so
logits and MCQ predictions are identical (tolerance 0). int8: the deployed Int8Params codes/scales
equal ours, but Linear8bitLt also quantizes activations per token; with the default outlier
threshold 6.0 (outlier input columns kept in float16) the deployed model is the closest to a
weights-only int8 model, and we allow MCQ accuracies to differ by at most 0.02 (with ≥ 95% of
predictions identical).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from mansu_audit.quantizers import quantizable_linears, quantize_model
from mansu_audit.quantizers.int8 import int8_fake_quant
from mansu_audit.quantizers.nf4 import fake_quant_4bit

pytest.importorskip("bitsandbytes")
INT8_ACCURACY_TOLERANCE = 0.02
INT8_MIN_AGREEMENT = 0.95


def load_deployed(path, kind: str):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if kind == "nf4":
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                 bnb_4bit_compute_dtype=torch.float32)
    else:
        cfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(str(path), quantization_config=cfg, device_map="cpu",
                                                    dtype=torch.float32).eval()


@pytest.fixture()
def saved_tiny(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    return tmp_path


def test_nf4_deploy_weights_and_logits_are_identical(saved_tiny, tiny_model):
    import bitsandbytes.functional as F

    deployed = load_deployed(saved_tiny, "nf4")
    fake = quantize_model(tiny_model, "nf4").model
    deployed_layers = dict(deployed.named_modules())
    for name, module in quantizable_linears(tiny_model):
        d = deployed_layers[name]
        assert type(d).__name__ == "Linear4bit" and d.weight.quant_state.quant_type == "nf4"
        assert torch.equal(F.dequantize_4bit(d.weight.data, d.weight.quant_state),
                           fake_quant_4bit(module.weight.data, "nf4")[0])
    ids = torch.randint(3, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = deployed(ids).logits, fake(ids).logits
    if F.has_avx512bf16():
        # On AVX-512-BF16 CPUs bitsandbytes' native fused 4-bit matmul computes in bf16: the
        # weights are the same (asserted above), the logits agree to bf16 precision only.
        torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-2)
    else:
        assert torch.equal(got, want)


def test_int8_deploy_codes_are_ours(saved_tiny, tiny_model):
    deployed = load_deployed(saved_tiny, "int8")
    deployed_layers = dict(deployed.named_modules())
    for name, module in quantizable_linears(tiny_model):
        d = deployed_layers[name]
        assert type(d).__name__ == "Linear8bitLt"
        _, codes, absmax = int8_fake_quant(module.weight.data)
        assert torch.equal(d.weight.data, codes) and torch.equal(d.weight.SCB, absmax)


@pytest.mark.slow
def test_reference_mcq_accuracy_agrees_with_deploy(reference, bundle):
    import bitsandbytes.functional as F

    from mansu_audit.evaluate import evaluate_mcq

    bf16_matmul = F.has_avx512bf16()

    for kind in ("nf4", "int8"):
        deployed = load_deployed(reference.path, kind)
        fake = quantize_model(reference.model, kind).model
        for split in ("forget_eval", "retain_eval"):
            items = bundle.split(split)
            a = evaluate_mcq(deployed, reference.tokenizer, items, split=split)
            b = evaluate_mcq(fake, reference.tokenizer, items, split=split)
            agreement = float((a.predictions == b.predictions).mean())
            if kind == "nf4" and not bf16_matmul:
                assert agreement == 1.0 and a.accuracy == b.accuracy
            elif kind == "nf4":  # same weights, bf16 fused matmul (see the logits test): near-identical answers
                assert agreement >= 0.99 and abs(a.accuracy - b.accuracy) <= 0.01, (split, agreement)
            else:
                assert abs(a.accuracy - b.accuracy) <= INT8_ACCURACY_TOLERANCE, (split, a.accuracy, b.accuracy)
                assert agreement >= INT8_MIN_AGREEMENT, (split, agreement)
