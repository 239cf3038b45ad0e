"""Architecture adapters: where the attribution nodes live in a Hugging Face causal LM.

Nodes (SPEC §7): MLP neurons are the inputs of `down_proj` (GPT-2: `mlp.c_proj`),
attention heads are the inputs of `o_proj` (GPT-2: `attn.c_proj`) split into
`n_heads` chunks of `head_dim`. With GQA the `o_proj` input already has one chunk
per *query* head, so no "ungrouping" of key/value heads is needed.

Where those modules live comes from the one architecture table
(`mansu_audit.architecture`). The adapter also gives the decoder body (embeddings → final norm) and a way to
compute logits at chosen positions only, so attribution never materialises the
full `[batch, seq, vocab]` logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mansu_audit.architecture import ARCHITECTURES, architecture_for, decoder_layers, get_path, linear_weight



@dataclass(frozen=True)
class LayerModules:
    """The modules of one decoder layer that attribution and MANSU touch."""

    down_proj: nn.Module  # input = MLP neuron activations [.., d_ff]
    up_proj: nn.Module | None  # gate-less MLPs (GPT-2): the fc_in layer
    gate_proj: nn.Module | None
    o_proj: nn.Module  # input = concatenated per-head attention outputs [.., n_heads*head_dim]


@dataclass(frozen=True)
class Adapter:
    """Per-architecture access to layers, heads, embeddings, body and LM head."""

    architecture: str
    layers: tuple[LayerModules, ...]
    n_heads: int
    head_dim: int
    d_ff: int
    d_model: int
    embedding: nn.Module
    body: nn.Module  # returns last_hidden_state (final norm applied) from inputs_embeds
    final_norm: nn.Module
    lm_head: nn.Module
    logit_softcap: float | None = None

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def neuron_params(self) -> int:
        """Parameters one MLP neuron owns: its row of gate/up (+ bias) and its column of down."""
        layer = self.layers[0]
        total = 0
        for mod in (layer.gate_proj, layer.up_proj):
            if mod is not None:
                total += self.d_model + (1 if getattr(mod, "bias", None) is not None else 0)
        return total + self.d_model

    def mlp_params(self) -> int:
        """All parameters of the MLP blocks (biases of down_proj included: they belong to no neuron)."""
        total = 0
        for layer in self.layers:
            for mod in (layer.gate_proj, layer.up_proj, layer.down_proj):
                if mod is not None:
                    total += sum(p.numel() for p in mod.parameters())
        return total

    def logits_at(self, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """LM-head logits at (row, position) pairs of a `[batch, seq, d_model]` hidden state."""
        logits = self.lm_head(hidden[rows, positions])
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for a causal LM whose parts the architecture table maps (Llama, Qwen2/3, Mistral,
    Gemma 1/2/3 and Llama-shaped models; GPT-2)."""
    arch = architecture_for(model)
    if arch is None or not arch.has_circuit_parts:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        supported = ", ".join(t for a in ARCHITECTURES if a.has_circuit_parts for t in a.model_types)
        raise ValueError(f"no circuit adapter for model type '{model_type}' (supported: {supported})")
    cfg = model.config
    layers = tuple(LayerModules(get_path(block, arch.mlp_down), get_path(block, arch.mlp_up),
                                get_path(block, arch.mlp_gate), get_path(block, arch.attn_out))
                   for _, block in decoder_layers(model))
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    heads_in = linear_weight(layers[0].o_proj).shape[1]  # (out, in) view, GPT-2 Conv1D transposed
    if heads_in != n_heads * head_dim:
        raise ValueError(f"{arch.attn_out} takes {heads_in} inputs, expected {n_heads}x{head_dim}")
    return Adapter(cfg.model_type, layers, n_heads, head_dim, linear_weight(layers[0].down_proj).shape[1],
                   cfg.hidden_size, get_path(model, arch.embedding), get_path(model, arch.body),
                   get_path(model, arch.final_norm), get_path(model, arch.lm_head),
                   getattr(cfg, "final_logit_softcapping", None))
