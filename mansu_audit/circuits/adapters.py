"""Architecture adapters: where the attribution nodes live in a Hugging Face causal LM.

Nodes (SPEC §7): MLP neurons are the inputs of `down_proj` (GPT-2: `mlp.c_proj`),
attention heads are the inputs of `o_proj` (GPT-2: `attn.c_proj`) split into
`n_heads` chunks of `head_dim`. With GQA the `o_proj` input already has one chunk
per *query* head, so no "ungrouping" of key/value heads is needed.

The adapter also gives the decoder body (embeddings → final norm) and a way to
compute logits at chosen positions only, so attribution never materialises the
full `[batch, seq, vocab]` logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

LLAMA_LIKE = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text")


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


def _llama_like(model: nn.Module) -> Adapter:
    cfg = model.config
    base = model.model
    layers = tuple(LayerModules(l.mlp.down_proj, l.mlp.up_proj, getattr(l.mlp, "gate_proj", None), l.self_attn.o_proj)
                   for l in base.layers)
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    if layers[0].o_proj.in_features != n_heads * head_dim:
        raise ValueError(f"o_proj takes {layers[0].o_proj.in_features} inputs, expected {n_heads}x{head_dim}")
    return Adapter(cfg.model_type, layers, n_heads, head_dim, layers[0].down_proj.in_features, cfg.hidden_size,
                   base.embed_tokens, base, base.norm, model.lm_head,
                   getattr(cfg, "final_logit_softcapping", None))


def _gpt2(model: nn.Module) -> Adapter:
    cfg = model.config
    base = model.transformer
    layers = tuple(LayerModules(b.mlp.c_proj, b.mlp.c_fc, None, b.attn.c_proj) for b in base.h)
    d_ff = layers[0].down_proj.weight.shape[0]  # Conv1D weight is [in, out]
    return Adapter("gpt2", layers, cfg.n_head, cfg.n_embd // cfg.n_head, d_ff, cfg.n_embd,
                   base.wte, base, base.ln_f, model.lm_head)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for a supported causal LM (Llama, Qwen2/3, Mistral, Gemma 1/2/3, GPT-2)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type == "gpt2":
        return _gpt2(model)
    if model_type in LLAMA_LIKE or (hasattr(model, "model") and hasattr(getattr(model.model, "layers", None), "__len__")
                                   and hasattr(model.model.layers[0], "mlp")
                                   and hasattr(model.model.layers[0].mlp, "down_proj")):
        return _llama_like(model)
    raise ValueError(f"no circuit adapter for model type '{model_type}' "
                     "(supported: llama, qwen2, qwen3, mistral, gemma, gemma2, gemma3_text, gpt2)")
