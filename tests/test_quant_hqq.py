"""hqq-4bit-g64 against the hqq package's own quantized layer (HQQLinear, PyTorch backend), on CPU.

The fake-quantized weight must be what HQQLinear multiplies by: its `dequantize()` bit for bit, and its forward
equal to `F.linear(x, weight)` exactly without bias (the Llama case). With a bias HQQLinear rounds `x @ W.T` to the
compute dtype before adding the bias where F.linear fuses the two, so 16-bit outputs may differ by one unit in the
last place of the output (float32: exact here too).
"""
from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from mansu_audit.errors import InputError
from mansu_audit.quantizers import get_quantizer, quantizable_linears, quantize_model, weight_quantizer
from mansu_audit.quantizers.walk import linear_weight


@pytest.fixture(scope="module")
def hqq_quantize():
    return pytest.importorskip("hqq.core.quantize")


def _linear(dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(128, 48, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 128, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(48, generator=g) * 0.1)
    return lin.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
def test_weight_is_what_hqq_linear_multiplies_by(hqq_quantize, dtype, bias):
    lin = _linear(dtype, bias)
    deq, record = weight_quantizer("hqq-4bit-g64")("layer", lin.weight)
    layer = hqq_quantize.HQQLinear(lin, hqq_quantize.BaseQuantizeConfig(nbits=4, group_size=64),
                                   compute_dtype=dtype, device="cpu", del_orig=False)
    assert deq.dtype == dtype and torch.equal(deq, layer.dequantize())
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        got, want = layer(x), F.linear(x, deq, lin.bias)
    if not bias or dtype == torch.float32:
        assert torch.equal(got, want)
    else:
        ulp = torch.finfo(dtype).eps * want.abs().float().clamp(min=1.0)
        assert ((got.float() - want.float()).abs() <= ulp).all()
    assert record.codes.dtype == torch.uint8 and int(record.codes.max()) <= 15
    assert record.scales.shape == record.zeros.shape == (48, 2)
    assert record.settings["optimizer_dtype"] == "float32" and record.settings["compute_dtype"] == str(dtype)[6:]


def test_record_describes_the_weight(hqq_quantize):
    lin = _linear(torch.float32, False, seed=3)
    deq, record = weight_quantizer("hqq-4bit-g64")("w", lin.weight)
    s = record.scales.repeat_interleave(64, dim=1)
    z = record.zeros.repeat_interleave(64, dim=1)
    assert torch.equal((record.codes.float() - z) * s, deq)  # w = s*(code - z), float32: the same ops, exact
    assert torch.equal(record.bin_width, s.abs())
    assert not torch.equal(z, z.round())  # the proximal optimizer moved the zero points off the integers
    assert (deq - lin.weight).abs().max() <= s.abs().max()  # within one step of the original


def test_tiny_model_through_the_quantizer(hqq_quantize, tiny_model):
    q = quantize_model(tiny_model, "hqq-4bit-g64")
    linears = quantizable_linears(tiny_model)
    assert set(q.records) == {n for n, _ in linears}
    qm = dict(q.model.named_modules())
    fn = weight_quantizer("hqq-4bit-g64")
    for name, module in linears:
        assert torch.equal(linear_weight(qm[name]), fn(name, linear_weight(module))[0]), name
    assert torch.equal(q.model.lm_head.weight, tiny_model.lm_head.weight)  # HqqConfig skips lm_head
    assert torch.equal(q.model.model.embed_tokens.weight, tiny_model.model.embed_tokens.weight)
    ids = torch.arange(2, 18)[None]
    with torch.no_grad():
        logits, ref = q.model(ids).logits, tiny_model(ids).logits
    assert torch.isfinite(logits).all() and not torch.equal(logits, ref)
    assert q.settings["group_size"] == 64


def test_rows_not_a_multiple_of_the_group_are_refused(hqq_quantize):
    with pytest.raises(InputError, match=r"hqq: 'odd' \(shape \(4, 96\)\) needs rows of a multiple of 64"):
        weight_quantizer("hqq-4bit-g64")("odd", torch.randn(4, 96))


def test_missing_extra_is_one_line(monkeypatch):
    for module in ("hqq", "hqq.core", "hqq.core.quantize"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(InputError, match=r"^the hqq-4bit-g64 quantizer needs the optional dependency 'hqq': "
                                         r"pip install 'mansu-audit\[hqq\]'$"):
        weight_quantizer("hqq-4bit-g64")("w", torch.randn(2, 64))
    assert callable(get_quantizer("hqq-4bit-g64"))  # registration itself never imports hqq
