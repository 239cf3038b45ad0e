"""The one walk over quantizable weights shared by every quantizer and the diagnostics.

Quantizers touch only the `nn.Linear` (and GPT-2 `Conv1D`) modules inside the
decoder blocks; embeddings and the LM head stay in full precision, as
transformers' bitsandbytes integration does; the blocks come from the one
architecture table (`mansu_audit.architecture.decoder_layers`). GPT-2 `Conv1D` stores its weight
as (in, out): `linear_weight` returns it transposed to the (out, in) layout
every quantizer assumes (blocks and groups run along input columns), and
`set_linear_weight` transposes back.
"""
from __future__ import annotations

from torch import nn

from mansu_audit.architecture import decoder_layers, is_linear, linear_weight, set_linear_weight

__all__ = ["quantizable_linears", "is_linear", "linear_weight", "set_linear_weight"]


def quantizable_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(full module name, module) of every Linear/Conv1D inside a decoder block, in forward order."""
    out = []
    for block_name, block in decoder_layers(model):
        for name, module in block.named_modules():
            if name and is_linear(module):
                out.append((f"{block_name}.{name}", module))
    return out
