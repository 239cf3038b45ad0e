"""Quantizers (SPEC §6): fake-quantizers equal to their deployed kernels, in the one registry.

Public API:
- `quantize_model(model, name, *, tokenizer=None, calibration=None) -> QuantizedModel`
- `available_quantizers()`, `get_quantizer(name)`, `register_quantizer(name)` (the
  registry is `mansu_audit.registry.QUANTIZERS`)
- `quantizable_linears(model)`: the shared walk (decoder-block Linear/Conv1D only)
- `nf4_bin_geometry(weight)`: NF4 bin boundaries/widths (MANSU's floor, diagnostics)

Built-ins: nf4, nf4-dq, fp4 (bitsandbytes 4-bit, bit exact), int8 (LLM.int8()
weights), rtn-int4-g128, rtn-int3-g128 (uniform asymmetric RTN) — each a
`WeightwiseQuantizer` whose per-weight function `quantize_weight(name, w)` is
public (`weight_dequantizer(name)`: the same values without the record) — and gptq, gptq-act-order (in-house GPTQ, needs calibration texts and a
tokenizer), and gguf-q8_0/-q4_0/-q4_1/-q5_0/-q5_1 (llama.cpp's legacy GGUF types
through gguf-py, bit exact; optional extra `[gguf]`), hqq-4bit-g64 (HQQ through the hqq package; extra
`[hqq]`), torchao-int8wo and torchao-int4wo-g128 (torchao weight-only; extra `[torchao]`).
"""
from __future__ import annotations

from functools import partial

from mansu_audit.errors import InputError
from mansu_audit.quantizers.record import QuantizedModel, QuantRecord
from mansu_audit.quantizers.apply import (ENTRY_POINT_GROUP, QuantizeInputs, WeightwiseQuantizer, quantize_model,
                                          quantize_weights, register_quantizer)
from mansu_audit.quantizers.walk import linear_weight, quantizable_linears, set_linear_weight
from mansu_audit.quantizers.nf4 import FourBitGeometry, dequantize_4bit, nf4_bin_geometry, quantize_weight_4bit
from mansu_audit.quantizers.int8 import quantize_weight_int8
from mansu_audit.quantizers.rtn import quantize_weight_rtn
from mansu_audit.quantizers import gptq as _gptq  # noqa: F401  (registers gptq, gptq-act-order)
from mansu_audit.quantizers import gguf as _gguf  # noqa: F401  (registers gguf-q8_0, -q4_0, -q4_1, -q5_0, -q5_1)
from mansu_audit.quantizers import hqq as _hqq  # noqa: F401  (registers hqq-4bit-g64; imports hqq only when used)
from mansu_audit.quantizers import torchao as _torchao  # noqa: F401  (registers torchao-int8wo, torchao-int4wo-g128)
from mansu_audit.registry import available_quantizers, get_quantizer

for _name, _quant_type, _double in (("nf4", "nf4", False), ("nf4-dq", "nf4", True), ("fp4", "fp4", False)):
    register_quantizer(_name)(WeightwiseQuantizer(
        partial(quantize_weight_4bit, quant_type=_quant_type, double_quant=_double),
        {"quant_type": _quant_type, "blocksize": 64, "double_quant": _double},
        dequantize=partial(dequantize_4bit, quant_type=_quant_type, double_quant=_double)))
register_quantizer("int8")(WeightwiseQuantizer(quantize_weight_int8,
                                               {"bits": 8, "granularity": "row", "cast_fp16": True}))
for _bits in (4, 3):
    register_quantizer(f"rtn-int{_bits}-g128")(WeightwiseQuantizer(
        partial(quantize_weight_rtn, bits=_bits, group_size=128, symmetric=False),
        {"bits": _bits, "group_size": 128, "symmetric": False}))


def weight_quantizer(name: str):
    """The per-weight function `(name, weight) -> (dequantized, QuantRecord)` of a registered data-free quantizer."""

    quantizer = get_quantizer(name)
    if not isinstance(quantizer, WeightwiseQuantizer):
        raise InputError(f"quantizer '{name}' is not weight-wise (it needs the whole model or calibration data)")
    return quantizer.quantize_weight


def weight_dequantizer(name: str):
    """`weight -> dequantized` of a registered data-free quantizer: `weight_quantizer(name)` without the record
    (its `dequantize` when it has one, which computes the same values faster)."""

    quantize_weight = weight_quantizer(name)
    dequantize = get_quantizer(name).dequantize
    return dequantize if dequantize is not None else (lambda weight: quantize_weight("", weight)[0])


__all__ = ["QuantizedModel", "QuantRecord", "QuantizeInputs", "WeightwiseQuantizer", "FourBitGeometry",
           "ENTRY_POINT_GROUP", "available_quantizers", "get_quantizer", "register_quantizer", "weight_quantizer",
           "weight_dequantizer",
           "quantize_model", "quantize_weights", "quantizable_linears", "linear_weight",
           "set_linear_weight", "nf4_bin_geometry"]
