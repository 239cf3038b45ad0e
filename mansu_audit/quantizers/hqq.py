"""HQQ 4-bit (hqq-4bit-g64): Half-Quadratic Quantization through the `hqq` package itself (extra `[hqq]`).

The fake-quantized weight is what hqq's `HQQLinear` multiplies by: each weight goes
through `hqq.core.quantize.Quantizer.quantize(w, **BaseQuantizeConfig(nbits=4,
group_size=64)["weight_quant_params"], compute_dtype=<the weight's dtype>,
device=<the weight's device>)`, then `Quantizer.to_inplace` (what `HQQLinear.cuda`
does after quantizing: scale and zero cast to the compute dtype) and
`Quantizer.dequantize` — the dequantization of HQQLinear's default PyTorch backend
(`HQQLinear.dequantize`, then `x @ W.T (+ bias)`). Checked against
`HQQLinear(linear, config, compute_dtype=..., device="cpu")` (tests/test_quant_hqq.py).

hqq 0.2.x defaults (BaseQuantizeConfig, which transformers' `HqqConfig` wraps):
- 4-bit unsigned codes 0..15, asymmetric: w ≈ s·(code − z), groups of 64
  consecutive weights of one row along the input dimension (axis=1, the layout the
  fast backends need); in_features must be a multiple of 64 (refused otherwise,
  naming the tensor: hqq would let groups straddle rows);
- initial s, z from the group's min/max (z rounded: round_zero=True for 4 bit), then
  hqq's proximal optimizer (`optimize_weights_proximal_legacy`: lp_norm 0.7,
  beta 10, kappa 1.01, at most 20 iterations, stopping when the mean |error|
  stops falling) moves the zero point, which is therefore fractional;
- s and z are stored in the compute dtype (= the weight's dtype here; hqq's own
  default compute_dtype is float16, so a float16 model matches it exactly) and the
  dequantization `(code − z)·s` is computed in that dtype;
- no quantized scale/zero (deprecated in hqq), no meta offloading.

The optimizer works in float32 on CPU and in float16 on CUDA (hqq's choice), so the
same weights quantize to slightly different zero points on the two devices: the
record says which (`settings["optimizer_dtype"]`). Checked on an H200 (torch
2.11+cu130, hqq 0.2.8): on CUDA this quantizer equals `HQQLinear(device="cuda")`'s
dequantized weight and forward bit for bit (float16, bfloat16, float32); against
the CPU result 98.8% of the codes agree and the relative weight error is the same
to 3 digits (0.0870 vs 0.0870 on a 1024×2048 weight). Which tensors: the shared walk
(decoder-block Linears); embeddings, the LM head (HqqConfig's default
skip_modules=["lm_head"]) and norms stay in the model dtype.
"""
from __future__ import annotations

from functools import partial

import torch

from mansu_audit.errors import InputError, require_extra
from mansu_audit.quantizers.apply import WeightwiseQuantizer, register_quantizer
from mansu_audit.quantizers.record import QuantRecord
from mansu_audit.quantizers.rtn import group_bin_width

GROUP = 64
BITS = 4


def hqq_fake_quant(weight: torch.Tensor, nbits: int = BITS, group_size: int = GROUP, name: str = "weight"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dequantized weight in weight.dtype, codes (rows, cols) uint8, scales (rows, groups), zeros (rows, groups))
    of an (out, in) weight, by hqq's Quantizer (module doc); w = scale·(code − zero) per group."""
    quantize = require_extra("hqq.core.quantize", "hqq", f"the hqq-{nbits}bit-g{group_size} quantizer")
    if weight.ndim != 2 or weight.shape[1] % group_size:
        raise InputError(f"hqq: '{name}' (shape {tuple(weight.shape)}) needs rows of a multiple of "
                         f"{group_size} values (one group of {group_size} per row segment)")
    quantizer = quantize.Quantizer
    params = quantize.BaseQuantizeConfig(nbits=nbits, group_size=group_size)["weight_quant_params"]
    device, dtype = weight.device, weight.dtype
    w_q, meta = quantizer.quantize(weight.detach(), device=str(device), compute_dtype=dtype, **params)
    meta["compute_dtype"] = dtype
    w_q, meta = quantizer.to_inplace(w_q, meta, device=device)
    deq = quantizer.dequantize(w_q, meta)
    rows, groups = weight.shape[0], weight.shape[1] // group_size
    codes = quantizer.unpack[meta["packing"]](w_q, dtype=torch.uint8).reshape(weight.shape)
    return (deq.to(dtype), codes, meta["scale"].reshape(rows, groups).float(),
            meta["zero"].reshape(rows, groups).float())


def quantize_weight_hqq(name: str, weight: torch.Tensor, nbits: int = BITS, group_size: int = GROUP
                        ) -> tuple[torch.Tensor, QuantRecord]:
    """The per-weight function of `hqq-<nbits>bit-g<group_size>`: (dequantized weight, QuantRecord)."""
    deq, codes, scales, zeros = hqq_fake_quant(weight, nbits, group_size, name)
    record = QuantRecord(name=name, shape=tuple(weight.shape), codes=codes, scales=scales,
                         scale_layout=f"per row and group of {group_size} input columns; w = s*(code - z)",
                         zeros=zeros, bin_width=group_bin_width(scales.abs(), tuple(weight.shape), group_size),
                         settings={"bits": nbits, "group_size": group_size, "axis": 1,
                                   "compute_dtype": str(weight.dtype).removeprefix("torch."),
                                   "optimizer_dtype": "float16" if weight.device.type == "cuda" else "float32"})
    return deq, record


register_quantizer(f"hqq-{BITS}bit-g{GROUP}")(WeightwiseQuantizer(
    partial(quantize_weight_hqq, nbits=BITS, group_size=GROUP),
    {"bits": BITS, "group_size": GROUP, "axis": 1, "optimize": "proximal (hqq defaults, <= 20 iterations)",
     "compute_dtype": "the model dtype", "reference": "hqq Quantizer.quantize/dequantize (HQQLinear, PyTorch backend)",
     "kept": "embeddings, lm_head, norms (model dtype)"}))
