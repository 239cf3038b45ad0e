"""The one architecture table: where a Hugging Face causal LM keeps its decoder layers and parts.

Used by the quantizers' walk (`quantizers.walk`), the training loop's layer checks
(`methods/loop.py`) and the circuit adapters (`circuits.adapters`), so decoder-layer
discovery exists once. Like GPTQModel's per-model `module_tree`, an entry names
dotted paths: `layers` from the model to the `nn.ModuleList` of decoder blocks,
the MLP/attention parts relative to one block, and the embedding, decoder body,
final norm and LM head from the model. Parts an entry leaves `None` are not
needed by anything but the quantizers' walk (which only needs `layers`).

Lookup (`architecture_for`): by `config.model_type` first, then structurally
(the first entry whose paths all resolve on the model, so e.g. a Llama-shaped
custom model works). Models matching no entry still quantize: `decoder_layers`
falls back to the `nn.ModuleList` holding the most parameters (our choice; it
finds the blocks of every causal LM we tried), and says so by returning
`architecture_for(model) is None`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """Dotted module paths of one model family (see module doc); `None` where not mapped."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # model -> ModuleList of decoder blocks
    mlp_down: str | None = None  # block -> MLP output projection (its input = neuron activations)
    mlp_up: str | None = None  # block -> MLP input projection (GPT-2: c_fc)
    mlp_gate: str | None = None  # block -> gate projection (None: gate-less MLP)
    attn_out: str | None = None  # block -> attention output projection (input = concatenated heads)
    embedding: str | None = None
    body: str | None = None  # model -> decoder body: inputs_embeds -> last_hidden_state (final norm applied)
    final_norm: str | None = None
    lm_head: str | None = None

    @property
    def has_circuit_parts(self) -> bool:
        """Whether every part the circuit adapter needs is mapped."""
        return None not in (self.mlp_down, self.mlp_up, self.attn_out, self.embedding, self.body,
                            self.final_norm, self.lm_head)


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("llama-like", ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text"),
                 layers="model.layers", mlp_down="mlp.down_proj", mlp_up="mlp.up_proj", mlp_gate="mlp.gate_proj",
                 attn_out="self_attn.o_proj", embedding="model.embed_tokens", body="model", final_norm="model.norm",
                 lm_head="lm_head"),
    Architecture("gpt2", ("gpt2",), layers="transformer.h", mlp_down="mlp.c_proj", mlp_up="mlp.c_fc",
                 attn_out="attn.c_proj", embedding="transformer.wte", body="transformer",
                 final_norm="transformer.ln_f", lm_head="lm_head"),
    Architecture("gpt-neox", ("gpt_neox",), layers="gpt_neox.layers"),
    Architecture("opt", ("opt",), layers="model.decoder.layers"),
)


def get_path(root: nn.Module, path: str | None) -> nn.Module | None:
    """The submodule at a dotted path, or None if any step is missing."""
    if path is None:
        return None
    node = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _matches(arch: Architecture, model: nn.Module) -> bool:
    layers = get_path(model, arch.layers)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    block = layers[0]
    return all(get_path(block, p) is not None for p in (arch.mlp_down, arch.mlp_up, arch.attn_out) if p) and \
        all(get_path(model, p) is not None for p in (arch.embedding, arch.body, arch.final_norm, arch.lm_head) if p)


def architecture_for(model: nn.Module) -> Architecture | None:
    """The table entry for `model`: by config.model_type, else the first whose paths all resolve."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types and _matches(arch, model):
            return arch
    for arch in ARCHITECTURES:
        if _matches(arch, model):
            return arch
    return None


def decoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(full name, block) of every decoder block, in order (table path, else the largest ModuleList)."""
    arch = architecture_for(model)
    if arch is not None:
        return [(f"{arch.layers}.{i}", block) for i, block in enumerate(get_path(model, arch.layers))]
    best_name, best, best_size = None, None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best_name, best, best_size = name, module, size
    if best is None:
        return []
    return [(f"{best_name}.{i}", block) for i, block in enumerate(best)]


def layer_index(name: str) -> int | None:
    """The decoder-block number in a parameter/module name ('model.layers.3.mlp...' -> 3), else None."""
    for arch in ARCHITECTURES:
        prefix = arch.layers + "."
        if name.startswith(prefix):
            number = name[len(prefix):].split(".", 1)[0]
            if number.isdigit():
                return int(number)
    return None


# ---------------------------------------------------------------------- Linear / GPT-2 Conv1D layout
# GPT-2's `Conv1D` stores its weight as (in, out); these give every caller the (out, in) layout.


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as an (out_features, in_features) tensor (a view; Conv1D transposed)."""
    w = module.weight.data
    return w.t() if _is_conv1d(module) else w


def set_linear_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Write an (out, in) weight back in the module's own layout, dtype and device."""
    w = weight.t() if _is_conv1d(module) else weight
    module.weight.data.copy_(w.to(module.weight.dtype))
