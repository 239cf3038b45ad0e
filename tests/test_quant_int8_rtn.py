"""int8 equals bitsandbytes' vector-wise int8; RTN is a uniform asymmetric per-group grid."""
from __future__ import annotations

import pytest
import torch

from mansu_audit.quantizers import quantizable_linears, quantize_model
from mansu_audit.quantizers.int8 import int8_fake_quant
from mansu_audit.quantizers.rtn import rtn_fake_quant, uniform_grid

bnbF = pytest.importorskip("bitsandbytes.functional")


@pytest.mark.parametrize("shape", [(16, 64), (7, 33), (1, 5), (128, 300)])
def test_int8_equals_bitsandbytes_vectorwise(shape):
    torch.manual_seed(shape[1])
    w = torch.randn(shape) * 0.05
    w[0, 0] = 0.3  # an outlier row
    for cast in (False, True):
        src = w.half() if cast else w
        cb, scb, _ = bnbF.int8_vectorwise_quant(src.clone(), threshold=0.0)
        deq, codes, absmax = int8_fake_quant(w, cast_fp16=cast)
        assert torch.equal(codes, cb) and torch.equal(absmax, scb)
        assert torch.equal(deq, bnbF.int8_vectorwise_dequant(cb, scb))
        assert codes.abs().max() <= 127 and (codes.abs().amax(dim=1) == 127).all()


def test_int8_zero_row_is_zero():
    w = torch.randn(3, 16)
    w[1] = 0
    deq, codes, _ = int8_fake_quant(w)
    assert torch.equal(deq[1], torch.zeros(16)) and torch.isfinite(deq).all()


def test_int8_quantizer_rows_and_error_bound(tiny_model):
    qm = quantize_model(tiny_model, "int8")
    for name, module in quantizable_linears(tiny_model):
        w = module.weight.data
        deq = dict(quantizable_linears(qm.model))[name].weight.data
        step = w.half().float().abs().amax(dim=1, keepdim=True) / 127
        # half a step of rounding plus float16 casting of the weight itself
        assert ((deq - w).abs() <= step / 2 + w.abs() * 2 ** -11 + 1e-7).all()
        assert torch.equal(qm.records[name].bin_width, step.expand_as(w).float())


@pytest.mark.parametrize("bits", [4, 3])
def test_rtn_is_uniform_asymmetric_per_group(bits):
    torch.manual_seed(bits)
    w = torch.randn(8, 300) * 0.02 + 0.004  # 3 groups (128, 128, 44)
    w[2, 128:256] = 0.0  # an all-zero group
    deq, codes, scales, zeros = rtn_fake_quant(w, bits, 128)
    maxq = 2 ** bits - 1
    assert scales.shape == (8, 3) and codes.max() <= maxq
    for g, (a, b) in enumerate([(0, 128), (128, 256), (256, 300)]):
        part, d, s, z = w[:, a:b], deq[:, a:b], scales[:, g:g + 1], zeros[:, g:g + 1]
        lo, hi = torch.minimum(part.min(1, keepdim=True).values, torch.zeros(1)), \
            torch.maximum(part.max(1, keepdim=True).values, torch.zeros(1))
        nonzero = (hi - lo)[:, 0] > 0
        assert torch.allclose(s[nonzero], ((hi - lo) / maxq)[nonzero])
        # every value lies on the group's grid and within half a step of the weight
        levels = d / s + z
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert ((d - part).abs() <= s / 2 * (1 + 1e-5)).all()
        # at most 2^bits distinct values per row and group
        assert all(len(torch.unique(row)) <= maxq + 1 for row in d)
    assert torch.equal(deq[2, 128:256], torch.zeros(128))


def test_rtn_grid_includes_zero_and_rtn3_coarser(tiny_model):
    s, z = uniform_grid(torch.tensor([[0.1, 0.2, 0.3]]), 4, symmetric=False)
    assert z.item() == 0 and torch.isclose(s, torch.tensor(0.3 / 15))  # range always includes 0
    q4, q3 = quantize_model(tiny_model, "rtn-int4-g128"), quantize_model(tiny_model, "rtn-int3-g128")
    ref = dict(quantizable_linears(tiny_model))
    for name in q4.records:
        w = ref[name].weight.data
        e4 = (dict(quantizable_linears(q4.model))[name].weight.data - w).pow(2).mean()
        e3 = (dict(quantizable_linears(q3.model))[name].weight.data - w).pow(2).mean()
        assert e3 > 2 * e4
    assert q4.settings["symmetric"] is False and q3.settings["bits"] == 3
