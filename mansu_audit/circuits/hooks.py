"""Forward pre-hooks on the node modules (`down_proj` and `o_proj` inputs).

One context manager registers a pre-hook on every node module and calls
`callback(kind, layer, x)` with `kind` in {"mlp", "attn"} and `x` the module's
input; the callback returns a replacement input (activation patching) or None
(record only / attach gradient hooks). Hooks are always removed, even on error,
so the model is left exactly as it was.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from mansu_audit.circuits.adapters import Adapter

NodeCallback = Callable[[str, int, torch.Tensor], "torch.Tensor | None"]


@contextmanager
def node_hooks(adapter: Adapter, callback: NodeCallback) -> Iterator[None]:
    handles = []

    def make(kind: str, layer: int):
        def hook(module, args):
            out = callback(kind, layer, args[0])
            return None if out is None else (out, *args[1:])
        return hook

    try:
        for i, layer in enumerate(adapter.layers):
            handles.append(layer.down_proj.register_forward_pre_hook(make("mlp", i)))
            handles.append(layer.o_proj.register_forward_pre_hook(make("attn", i)))
        yield
    finally:
        for h in handles:
            h.remove()
