"""torchao weight-only quantization (torchao-int8wo, torchao-int4wo-g128) through torchao itself (extra `[torchao]`).

Each fake-quantized weight is computed by torchao's own quantize and dequantize
functions, the ones its tensor subclasses call (torchao 0.18):

- **torchao-int8wo** = `quantize_(model, Int8WeightOnlyConfig())` (version 2,
  granularity PerRow): `Int8Tensor.from_hp(w, PerRow())` (`choose_qparams_affine`
  SYMMETRIC, int8 codes in [−128, 127], one scale per output row = absmax / 127.5
  computed in the weight dtype and stored in float32, eps = float32 eps;
  `quantize_affine`), and the weight is
  `Int8Tensor.dequantize(weight dtype)` = code·scale. The deployed linear computes
  `(x @ code.T) · scale` (scale after the matmul), equal to `x @ (code·scale).T` up
  to float rounding. Runs on the weight's device, as torchao does: a float32 weight
  quantized on CUDA can land one code away from the CPU result (H200, torch 2.11:
  0.014% of the codes of a 1024×2048 weight; bfloat16: identical); on CUDA the
  codes and dequantized weight equal torchao's CUDA layer's.
- **torchao-int4wo-g128** = torchao's tinygemm int4 weight-only scheme:
  `Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")`
  on CUDA and its CPU form `PrototypeInt4WeightOnlyConfig(group_size=128)`
  (`Int4OpaqueTensor`, kernel `aten._weight_int4pack_mm_for_cpu`). Per row and
  group of 128 input columns, `_choose_qparams_affine_tinygemm` (ASYMMETRIC,
  s = (max − min)/15 clamped to eps 1e-6, float zero z = min + 8·s, both in the
  weight dtype) and codes `_quantize_affine_tinygemm` in [0, 15]. The weight is
  (code − 8)·s + z rounded once to float32, then to the weight dtype: the CPU
  kernel evaluates it as one fused multiply-add in float32 (checked bit for bit:
  the quantized layer's output on the identity matrix). torchao's
  `_dequantize_affine_tinygemm` rounds the product and the sum separately, which
  can differ from the kernel by one float32 unit in the last place for a float32
  model (identical after the cast for bfloat16/float16); the tests bound that.
  The CUDA tile-packed path takes bfloat16 weights only and uses eps = bfloat16's
  smallest normal (differs only for constant groups); checked on an H200 (torch
  2.11+cu130, torchao 0.18; a one-off check, not part of the tests): its kernel's
  weight, read with the identity matrix, equals this quantizer's bfloat16 weight
  bit for bit on 256×1024, 768×256 (inputs padded to 1024) and 2048×4096, whether
  the fake quantization ran on CPU or CUDA. torchao's default
  int4 packing ("plain") needs the CUDA library `mslk` and a different qparam
  routine: not modelled. in_features must be a multiple of 128 (torchao leaves
  such a layer unquantized; it is refused here, naming the tensor).

Which tensors: the shared walk (decoder-block Linears); embeddings, the LM head
(transformers' TorchAoConfig skips the output embedding by default) and norms stay
in the model dtype. `quantize_`'s `set_inductor_config` (a process-wide torch
inductor setting) is never touched: only the tensor functions are called.
Importing torchao logs warnings about its CUDA-only extensions; they are silenced
for that one import.
"""
from __future__ import annotations

from functools import partial

import torch

from mansu_audit.errors import InputError, quiet_import_noise, require_extra
from mansu_audit.quantizers.apply import WeightwiseQuantizer, register_quantizer
from mansu_audit.quantizers.record import QuantRecord
from mansu_audit.quantizers.rtn import group_bin_width

INT4_GROUP = 128
INT4_EPS = 1e-6  # Int4OpaqueTensor.from_hp's eps
def _torchao(module: str, purpose: str):
    """`require_extra` for a torchao module, with torchao's import-time warnings silenced (levels restored)."""
    with quiet_import_noise():
        return require_extra(module, "torchao", purpose)


def int8wo_fake_quant(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dequantized weight in weight.dtype, int8 codes, float32 scale per row (rows, 1)) of an (out, in) weight."""
    quant = _torchao("torchao.quantization", "the torchao-int8wo quantizer")
    tensor = quant.Int8Tensor.from_hp(weight.detach(), granularity=quant.PerRow())
    return tensor.dequantize(output_dtype=weight.dtype), tensor.qdata, tensor.scale.float().reshape(-1, 1)


def quantize_weight_int8wo(name: str, weight: torch.Tensor) -> tuple[torch.Tensor, QuantRecord]:
    """The per-weight function of `torchao-int8wo`: (dequantized weight, QuantRecord)."""
    if weight.ndim != 2:
        raise InputError(f"torchao-int8wo: '{name}' is not a matrix (shape {tuple(weight.shape)})")
    deq, codes, scale = int8wo_fake_quant(weight)
    record = QuantRecord(name=name, shape=tuple(weight.shape), codes=codes, scales=scale,
                         scale_layout="per output row (symmetric: w = s*code)",
                         bin_width=scale.expand(weight.shape).contiguous(),
                         settings={"bits": 8, "granularity": "row", "symmetric": True})
    return deq, record


def int4wo_fake_quant(weight: torch.Tensor, group_size: int = INT4_GROUP, name: str = "weight"
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dequantized weight in weight.dtype, codes (rows, cols) uint8, scales, zeros (rows, groups) float32): tinygemm
    int4 of an (out, in) weight; w = s·(code − 8) + z per group (module doc)."""
    prim = _torchao("torchao.quantization.quant_primitives", f"the torchao-int4wo-g{group_size} quantizer")
    if weight.ndim != 2 or weight.shape[1] % group_size:
        raise InputError(f"torchao-int4wo-g{group_size}: '{name}' (shape {tuple(weight.shape)}) needs rows of a "
                         f"multiple of {group_size} values (torchao would leave this layer unquantized)")
    w = weight.detach()
    block = [1, group_size]
    scale, zero = prim._choose_qparams_affine_tinygemm(w, prim.MappingType.ASYMMETRIC, block, torch.int32, 0, 15,
                                                        INT4_EPS, None, w.dtype)
    codes = prim._quantize_affine_tinygemm(w, block, scale, zero, torch.int32, 0, 15)
    rows = weight.shape[0]
    scale, zero = scale.reshape(rows, -1, 1), zero.reshape(rows, -1, 1)
    grouped = codes.reshape(rows, -1, group_size).double()
    # the kernel's fused multiply-add: (code - 8)*s is exact in float64 and so is adding z (their exponents would have
    # to lie ~29 binades apart to lose a bit); then one rounding to float32 and the kernel's cast to the weight dtype
    deq = ((grouped - 8) * scale.double() + zero.double()).float().reshape(weight.shape).to(weight.dtype)
    return deq, codes.to(torch.uint8), scale[..., 0].float(), zero[..., 0].float()


def quantize_weight_int4wo(name: str, weight: torch.Tensor, group_size: int = INT4_GROUP
                           ) -> tuple[torch.Tensor, QuantRecord]:
    """The per-weight function of `torchao-int4wo-g<group_size>`: (dequantized weight, QuantRecord)."""
    deq, codes, scales, zeros = int4wo_fake_quant(weight, group_size, name)
    record = QuantRecord(name=name, shape=tuple(weight.shape), codes=codes, scales=scales,
                         scale_layout=f"per row and group of {group_size} input columns; w = s*(code - 8) + z "
                                      "(z in zeros, weight units)",
                         zeros=zeros, bin_width=group_bin_width(scales.abs(), tuple(weight.shape), group_size),
                         settings={"bits": 4, "group_size": group_size, "scheme": "tinygemm"})
    return deq, record


register_quantizer("torchao-int8wo")(WeightwiseQuantizer(
    quantize_weight_int8wo,
    {"bits": 8, "granularity": "row", "symmetric": True,
     "reference": "torchao Int8WeightOnlyConfig (Int8Tensor.from_hp/dequantize)",
     "kept": "embeddings, lm_head, norms (model dtype)"}))
register_quantizer(f"torchao-int4wo-g{INT4_GROUP}")(WeightwiseQuantizer(
    partial(quantize_weight_int4wo, group_size=INT4_GROUP),
    {"bits": 4, "group_size": INT4_GROUP, "scheme": "tinygemm (asymmetric, float zero point)",
     "reference": "torchao PrototypeInt4WeightOnlyConfig / Int4WeightOnlyConfig(tile_packed_to_4d) quant primitives",
     "kept": "embeddings, lm_head, norms (model dtype)"}))
