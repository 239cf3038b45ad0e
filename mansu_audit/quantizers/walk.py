"""The one walk over quantizable weights shared by every quantizer and the diagnostics.

Quantizers touch only the `nn.Linear` (and GPT-2 `Conv1D`) modules inside the
decoder blocks; embeddings and the LM head stay in full precision, as
transformers' bitsandbytes integration does. GPT-2 `Conv1D` stores its weight
as (in, out): `linear_weight` returns it transposed to the (out, in) layout
every quantizer assumes (blocks and groups run along input columns), and
`set_linear_weight` transposes back.
"""
from __future__ import annotations

import torch
from torch import nn


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def decoder_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated decoder blocks: the `nn.ModuleList` holding the most parameters.

    Works for Llama/Mistral/Qwen (`model.layers`), GPT-2 (`transformer.h`),
    GPT-NeoX (`gpt_neox.layers`) and OPT (`model.decoder.layers`) without a
    per-architecture table.
    """
    best_name, best, best_size = None, None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best_name, best, best_size = name, module, size
    if best is None:
        return []
    return [(f"{best_name}.{i}", block) for i, block in enumerate(best)]


def quantizable_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(full module name, module) of every Linear/Conv1D inside a decoder block, in forward order."""
    out = []
    for block_name, block in decoder_blocks(model):
        for name, module in block.named_modules():
            if name and is_linear(module):
                out.append((f"{block_name}.{name}", module))
    return out


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as an (out_features, in_features) tensor (a view; Conv1D transposed)."""
    w = module.weight.data
    return w.t() if _is_conv1d(module) else w


def set_linear_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Write an (out, in) weight back in the module's own layout, dtype and device."""
    w = weight.t() if _is_conv1d(module) else weight
    module.weight.data.copy_(w.to(module.weight.dtype))
