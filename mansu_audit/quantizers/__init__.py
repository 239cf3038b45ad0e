"""Quantizers (SPEC §6): a registry of fake-quantizers equal to their deployed kernels.

Public API:
- `quantize_model(model, name, *, tokenizer=None, calibration=None) -> QuantizedModel`
- `available_quantizers()`, `get_quantizer(name)`, `register_quantizer(name)`
- `quantizable_linears(model)`: the shared walk (decoder-block Linear/Conv1D only)
- `nf4_bin_geometry(weight)`: NF4 bin boundaries/widths (MANSU's floor, diagnostics)

Built-ins: nf4, nf4-dq, fp4 (bitsandbytes 4-bit, bit exact), int8 (LLM.int8()
weights), rtn-int4-g128, rtn-int3-g128 (uniform asymmetric RTN), gptq and
gptq-act-order (in-house GPTQ, needs calibration texts and a tokenizer).
"""
from __future__ import annotations

from mansu_audit.quantizers.record import QuantizedModel, QuantRecord
from mansu_audit.quantizers.registry import (ENTRY_POINT_GROUP, QuantizeInputs, available_quantizers,
                                             get_quantizer, quantize_model, quantize_weights, register_quantizer)
from mansu_audit.quantizers.walk import decoder_blocks, linear_weight, quantizable_linears, set_linear_weight
from mansu_audit.quantizers.nf4 import NF4Geometry, nf4_bin_geometry, quantize_weight_4bit
from mansu_audit.quantizers.int8 import quantize_weight_int8
from mansu_audit.quantizers.rtn import quantize_weight_rtn
from mansu_audit.quantizers import gptq as _gptq  # noqa: F401  (registers gptq, gptq-act-order)


def _weightwise(settings: dict, quantize_weight):
    def quantize(model, inputs: QuantizeInputs):
        return quantize_weights(model, quantize_weight), dict(settings)

    return quantize


register_quantizer("nf4")(_weightwise(
    {"quant_type": "nf4", "blocksize": 64, "double_quant": False},
    lambda name, w: quantize_weight_4bit(name, w, "nf4", double_quant=False)))
register_quantizer("nf4-dq")(_weightwise(
    {"quant_type": "nf4", "blocksize": 64, "double_quant": True},
    lambda name, w: quantize_weight_4bit(name, w, "nf4", double_quant=True)))
register_quantizer("fp4")(_weightwise(
    {"quant_type": "fp4", "blocksize": 64, "double_quant": False},
    lambda name, w: quantize_weight_4bit(name, w, "fp4", double_quant=False)))
register_quantizer("int8")(_weightwise({"bits": 8, "granularity": "row", "cast_fp16": True},
                                         quantize_weight_int8))
register_quantizer("rtn-int4-g128")(_weightwise(
    {"bits": 4, "group_size": 128, "symmetric": False},
    lambda name, w: quantize_weight_rtn(name, w, bits=4, group_size=128, symmetric=False)))
register_quantizer("rtn-int3-g128")(_weightwise(
    {"bits": 3, "group_size": 128, "symmetric": False},
    lambda name, w: quantize_weight_rtn(name, w, bits=3, group_size=128, symmetric=False)))

__all__ = ["QuantizedModel", "QuantRecord", "QuantizeInputs", "NF4Geometry", "ENTRY_POINT_GROUP",
           "available_quantizers", "get_quantizer", "register_quantizer", "quantize_model", "quantize_weights",
           "quantizable_linears", "decoder_blocks", "linear_weight", "set_linear_weight", "nf4_bin_geometry"]
