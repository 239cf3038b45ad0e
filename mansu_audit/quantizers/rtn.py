"""Uniform round-to-nearest per group of input columns (rtn-int4-g128, rtn-int3-g128).

The grid is GPTQ's (`Quantizer.find_params` of Frantar et al.): per output row
and group of `group_size` input columns, the range [min(w, 0), max(w, 0)] is
split into 2^bits − 1 steps; asymmetric grids round the zero point, symmetric
ones centre it at 2^(bits−1). A group that is all zeros gets the range [−1, 1]
so its scale is never zero. GPTQ reuses `uniform_grid`, so
GPTQ with an identity Hessian is exactly this RTN.
"""
from __future__ import annotations

import torch

from mansu_audit.quantizers.record import QuantRecord

DEFAULT_GROUP = 128


def uniform_grid(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero), each (rows, 1), for the columns of `w` (rows, cols) treated as one group."""
    maxq = 2 ** bits - 1
    zeros = torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
    xmin = torch.minimum(w.min(dim=1).values, zeros)
    xmax = torch.maximum(w.max(dim=1).values, zeros)
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(empty, torch.full_like(xmax, 1.0), xmax)
    scale = (xmax - xmin) / maxq
    if symmetric:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale[:, None], zero[:, None]


def uniform_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)


def rtn_fake_quant(weight: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP, symmetric: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dequantized, codes, scales (rows, groups), zeros (rows, groups)) for an (out, in) weight."""
    w = weight.detach().float()
    rows, cols = w.shape
    deq = torch.empty_like(w)
    codes = torch.empty(w.shape, dtype=torch.uint8, device=w.device)
    scales, zeros = [], []
    for start in range(0, cols, group_size):
        part = w[:, start:start + group_size]
        scale, zero = uniform_grid(part, bits, symmetric)
        q = uniform_codes(part, scale, zero, bits)
        codes[:, start:start + group_size] = q.to(torch.uint8)
        deq[:, start:start + group_size] = scale * (q - zero)
        scales.append(scale)
        zeros.append(zero)
    return deq.to(weight.dtype), codes, torch.cat(scales, dim=1), torch.cat(zeros, dim=1)


def group_bin_width(scales: torch.Tensor, shape: tuple[int, int], group_size: int) -> torch.Tensor:
    """Per-element bin width of a uniform grid: its group's scale."""
    return scales.repeat_interleave(group_size, dim=1)[:, :shape[1]].contiguous()


def quantize_weight_rtn(name: str, weight: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP,
                        symmetric: bool = False) -> tuple[torch.Tensor, QuantRecord]:
    deq, codes, scales, zeros = rtn_fake_quant(weight, bits, group_size, symmetric)
    record = QuantRecord(name=name, shape=tuple(weight.shape), codes=codes, scales=scales,
                         scale_layout=f"per row and group of {group_size} input columns", zeros=zeros,
                         bin_width=group_bin_width(scales, tuple(weight.shape), group_size),
                         settings={"bits": bits, "group_size": group_size, "symmetric": symmetric})
    return deq, record
