"""Plain per-weight records that quantizers return and the diagnostics read."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class QuantRecord:
    """How one (out, in) weight was quantized.

    `codes` holds the integer code of every weight (shape of the weight);
    `scales` the per-block/row/group scale in its compact layout (`scale_layout`
    says which); `grid` the code -> normalised level table (None for uniform
    grids, whose level is `scale * (code - zero)`); `bin_width` the local level
    gap around each weight in weight units (what an update must be compared to),
    and `settings` the quantizer parameters that produced it.
    """

    name: str
    shape: tuple[int, ...]
    codes: torch.Tensor
    scales: torch.Tensor
    scale_layout: str
    bin_width: torch.Tensor
    zeros: torch.Tensor | None = None
    grid: torch.Tensor | None = None
    settings: dict = field(default_factory=dict)


@dataclass
class QuantizedModel:
    """A deep copy of the input model whose decoder Linear weights hold dequantized values."""

    model: nn.Module
    records: dict[str, QuantRecord]
    quantizer: str
    settings: dict = field(default_factory=dict)
