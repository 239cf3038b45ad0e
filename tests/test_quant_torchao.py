"""torchao-int8wo and torchao-int4wo-g128 against torchao's own quantized layers on CPU.

The layers are made by `torchao.quantize_` (Int8WeightOnlyConfig; PrototypeInt4WeightOnlyConfig, the tinygemm int4
weight-only path that runs on CPU), with `set_inductor_config=False` so no process-wide torch setting changes.
What a layer multiplies by is read exactly by feeding it the identity matrix (each output is one weight times 1,
accumulated in float32). On random inputs the comparison is to float tolerance: int8wo applies the row scale after
the matmul ((x @ q.T)·s, not x @ (q·s).T) and the int4 kernel accumulates in its own order.
"""
from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F

from mansu_audit.errors import InputError
from mansu_audit.quantizers import get_quantizer, quantizable_linears, quantize_model, weight_quantizer
from mansu_audit.quantizers.walk import linear_weight


@pytest.fixture(scope="module")
def torchao_quant():
    """(quantize_, Int8WeightOnlyConfig(), PrototypeInt4WeightOnlyConfig(group_size=128)) or skip."""
    from mansu_audit.quantizers.torchao import _torchao

    pytest.importorskip("torchao")
    quant = _torchao("torchao.quantization", "tests")
    proto = _torchao("torchao.prototype.quantization.int4", "tests")
    return (quant.quantize_, quant.Int8WeightOnlyConfig(set_inductor_config=False),
            proto.PrototypeInt4WeightOnlyConfig(group_size=128, set_inductor_config=False))


def _deployed(torchao_quant, weight, scheme):
    quantize_, int8, int4 = torchao_quant
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
    quantize_(layer, int8 if scheme == "int8wo" else int4)
    return layer


def _weight(dtype, rows=64, cols=256, seed=0):
    return (torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int4wo_weight_is_what_the_cpu_kernel_multiplies_by(torchao_quant, dtype):
    w = _weight(dtype)
    deq, record = weight_quantizer("torchao-int4wo-g128")("layer", w)
    layer = _deployed(torchao_quant, w, "int4wo")
    with torch.no_grad():
        assert torch.equal(layer(torch.eye(256, dtype=dtype)).t(), deq)
        x = torch.randn(7, 256, generator=torch.Generator().manual_seed(1)).to(dtype)
        got, want = layer(x).float(), F.linear(x.float(), deq.float())
    tol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps  # output rounding to the dtype
    assert ((got - want).abs() <= tol * want.abs().clamp(min=1.0)).all()
    s, z = record.scales.repeat_interleave(128, dim=1), record.zeros.repeat_interleave(128, dim=1)
    two_roundings = ((record.codes.float() - 8) * s + z)  # torchao's _dequantize_affine_tinygemm, in float32
    if dtype == torch.float32:  # the kernel's fused multiply-add rounds once: the product's rounding error apart
        terms = (record.codes.float() - 8).abs() * s.abs() + z.abs()
        assert ((two_roundings - deq).abs() <= torch.finfo(dtype).eps * terms).all()
    else:
        assert torch.equal(two_roundings.to(dtype), deq)
    assert int(record.codes.max()) <= 15 and record.scales.shape == (64, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8wo_weight_is_torchao_dequantized_weight(torchao_quant, dtype):
    w = _weight(dtype, seed=2)
    deq, record = weight_quantizer("torchao-int8wo")("layer", w)
    layer = _deployed(torchao_quant, w, "int8wo")
    assert torch.equal(deq, layer.weight.dequantize(output_dtype=dtype))
    assert torch.equal(record.codes, layer.weight.qdata)
    rtol = 1e-6 if dtype == torch.float32 else 2 ** -8  # the scale is computed in the weight dtype
    assert torch.allclose(record.scales[:, 0], w.float().abs().amax(dim=1) / 127.5, rtol=rtol, atol=0)
    with torch.no_grad():
        if dtype == torch.float32:  # (I @ q.T)·s in float32 = q·s rounded once = the dequantized weight
            assert torch.equal(layer(torch.eye(256)).t(), deq)
        x = torch.randn(7, 256, generator=torch.Generator().manual_seed(3)).to(dtype)
        got, want = layer(x).float(), F.linear(x, deq).float()
    tol = 1e-5 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps  # scale after the matmul: 2-3 roundings
    assert ((got - want).abs() <= tol * want.abs().clamp(min=1.0)).all()


@pytest.mark.parametrize("name", ["torchao-int8wo", "torchao-int4wo-g128"])
def test_reference_model_equals_torchao_quantize(torchao_quant, reference, name):
    """The fake-quantized model against `quantize_` of the same Linears: same logits up to float accumulation."""
    model = reference.model
    q = quantize_model(model, name)
    linears = {n for n, _ in quantizable_linears(model)}
    assert set(q.records) == linears
    qm = dict(q.model.named_modules())
    fn = weight_quantizer(name)
    for lname, module in quantizable_linears(model):
        assert torch.equal(linear_weight(qm[lname]), fn(lname, linear_weight(module))[0]), lname
    assert torch.equal(q.model.lm_head.weight, model.lm_head.weight)
    quantize_, int8, int4 = torchao_quant
    deployed = copy.deepcopy(model)
    quantize_(deployed, int8 if name.endswith("int8wo") else int4, filter_fn=lambda m, fqn: fqn in linears)
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        got, want, plain = deployed(ids).logits, q.model(ids).logits, model(ids).logits
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert (plain - want).abs().max() > 100 * (got - want).abs().max()  # the quantization itself is far larger


def test_rows_not_a_multiple_of_the_group_are_refused(torchao_quant):
    with pytest.raises(InputError, match=r"torchao-int4wo-g128: 'odd' \(shape \(4, 192\)\) needs rows of a multiple "
                                         r"of 128 values \(torchao would leave this layer unquantized\)"):
        weight_quantizer("torchao-int4wo-g128")("odd", torch.randn(4, 192))


@pytest.mark.parametrize("name", ["torchao-int8wo", "torchao-int4wo-g128"])
def test_missing_extra_is_one_line(monkeypatch, name):
    for module in ("torchao", "torchao.quantization", "torchao.quantization.quant_primitives"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(InputError, match=rf"^the {name} quantizer needs the optional dependency 'torchao': "
                                         r"pip install 'mansu-audit\[torchao\]'$"):
        weight_quantizer(name)("w", torch.randn(2, 128))
    assert callable(get_quantizer(name))  # registration itself never imports torchao
