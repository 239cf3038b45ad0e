"""Circuit selection from node scores, the random-circuit control, and faithfulness.

A circuit (SPEC §7, §8) is a set of MLP neurons chosen by |mean attribution|
until they own `circuit_frac` of the MLP parameters (a neuron owns its row of
gate_proj/up_proj, their biases if any, and its column of down_proj), plus the
attention heads and the input (embedding) node it runs through. MANSU edits the
neurons only; by default every head and the input belong to the circuit (our
choice: MANSU's circuit is an MLP circuit, attention is its routing frame), and
`head_frac` < 1 keeps only the top heads.

Faithfulness: every node outside the circuit (MLP neurons, heads, the input
embeddings) is patched to its corrupted activation while nodes inside are
recomputed; the metric is normalised as (M_patched − M_corrupt)/(M_clean −
M_corrupt), using means over items. The full node set gives exactly 1 and the
empty set (input included) exactly 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from mansu_audit.circuits.adapters import Adapter, adapter_for
from mansu_audit.circuits.attribution import (Attribution, embed, encode_items, make_batches, pad_id,
                                              run_metric)
from mansu_audit.circuits.hooks import node_hooks
from mansu_audit.data import MCQItem


@dataclass
class Circuit:
    """Selected nodes: `neurons` and `heads` map layer -> sorted LongTensor of indices."""

    neurons: dict[int, torch.Tensor]
    n_params: int  # parameters owned by the selected neurons
    frac: float  # n_params / all MLP parameters
    shape: tuple[int, int, int]  # (n_layers, d_ff, n_heads) of the model it was selected on
    heads: dict[int, torch.Tensor] = field(default_factory=dict)
    input: bool = True
    kind: str = "attribution"  # or "random"
    seed: int | None = None

    @property
    def n_neurons(self) -> int:
        return sum(len(v) for v in self.neurons.values())

    @property
    def n_heads(self) -> int:
        return sum(len(v) for v in self.heads.values())

    def neuron_mask(self) -> torch.Tensor:
        """Bool [n_layers, d_ff]: True for circuit neurons."""
        mask = torch.zeros(self.shape[:2], dtype=torch.bool)
        for layer, idx in self.neurons.items():
            mask[layer, idx] = True
        return mask

    def head_mask(self) -> torch.Tensor:
        mask = torch.zeros((self.shape[0], self.shape[2]), dtype=torch.bool)
        for layer, idx in self.heads.items():
            mask[layer, idx] = True
        return mask

    def neurons_per_layer(self) -> dict[int, int]:
        return {layer: len(idx) for layer, idx in sorted(self.neurons.items())}

    def to_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "n_neurons": self.n_neurons, "n_params": self.n_params,
                "frac": self.frac, "n_layers": self.shape[0], "d_ff": self.shape[1], "n_heads_per_layer": self.shape[2],
                "input": self.input,
                "neurons": {str(k): v.tolist() for k, v in sorted(self.neurons.items())},
                "heads": {str(k): v.tolist() for k, v in sorted(self.heads.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> "Circuit":
        shape = (int(d["n_layers"]), int(d["d_ff"]), int(d["n_heads_per_layer"]))
        return cls({int(k): torch.tensor(v, dtype=torch.long) for k, v in d["neurons"].items()},
                   int(d["n_params"]), float(d["frac"]), shape,
                   {int(k): torch.tensor(v, dtype=torch.long) for k, v in d["heads"].items()},
                   bool(d.get("input", True)), d.get("kind", "attribution"), d.get("seed"))


def _mask_to_dict(mask: torch.Tensor) -> dict[int, torch.Tensor]:
    return {layer: torch.nonzero(mask[layer]).flatten() for layer in range(mask.shape[0]) if mask[layer].any()}


def n_neurons_for(frac: float, neuron_params: int, mlp_params: int, total_neurons: int) -> int:
    """Number of neurons whose parameters cover `frac` of the MLP parameters (at least one)."""
    if not 0 < frac <= 1:
        raise ValueError(f"circuit_frac must be in (0, 1], got {frac}")
    return int(min(total_neurons, max(1, round(frac * mlp_params / neuron_params))))


def _top_heads(attribution: Attribution, head_frac: float) -> dict[int, torch.Tensor]:
    n_layers, _, n_heads = attribution.shape
    if head_frac >= 1:
        return {layer: torch.arange(n_heads) for layer in range(n_layers)}
    k = int(round(head_frac * n_layers * n_heads))
    mask = torch.zeros(n_layers * n_heads, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(attribution.heads.abs().flatten(), k).indices] = True
    return _mask_to_dict(mask.view(n_layers, n_heads))


def _circuit_from_mask(mask: torch.Tensor, attribution_shape: tuple[int, int, int], neuron_params: int,
                       mlp_params: int, heads: dict[int, torch.Tensor], kind: str, seed: int | None) -> Circuit:
    n = int(mask.sum())
    return Circuit(_mask_to_dict(mask), n * neuron_params, n * neuron_params / mlp_params, attribution_shape,
                   heads, True, kind, seed)


def select_circuit(attribution: Attribution, circuit_frac: float = 0.01, *, head_frac: float = 1.0,
                   seed: int | None = None) -> Circuit:
    """Top MLP neurons by |mean score| covering `circuit_frac` of MLP parameters.

    With `seed` set, the same number of neurons is drawn uniformly at random
    instead (the random-circuit control; also `random_circuit`).
    """
    n_layers, d_ff, _ = attribution.shape
    k = n_neurons_for(circuit_frac, attribution.neuron_params, attribution.mlp_params, n_layers * d_ff)
    flat = torch.zeros(n_layers * d_ff, dtype=torch.bool)
    if seed is None:
        # stable ordering: ties broken by the lower index
        order = torch.sort(attribution.mlp.abs().flatten().double(), descending=True, stable=True).indices
        flat[order[:k]] = True
        kind = "attribution"
    else:
        gen = torch.Generator().manual_seed(seed)
        flat[torch.randperm(n_layers * d_ff, generator=gen)[:k]] = True
        kind = "random"
    return _circuit_from_mask(flat.view(n_layers, d_ff), attribution.shape, attribution.neuron_params,
                              attribution.mlp_params, _top_heads(attribution, head_frac), kind, seed)


def random_circuit(model: torch.nn.Module, same_size_as: Circuit, seed: int = 0) -> Circuit:
    """Uniformly random neurons, as many as `same_size_as` has (same heads and input)."""
    adapter = adapter_for(model)
    n_layers, d_ff = adapter.n_layers, adapter.d_ff
    gen = torch.Generator().manual_seed(seed)
    flat = torch.zeros(n_layers * d_ff, dtype=torch.bool)
    flat[torch.randperm(n_layers * d_ff, generator=gen)[:same_size_as.n_neurons]] = True
    shape = (n_layers, d_ff, adapter.n_heads)
    return Circuit(_mask_to_dict(flat.view(n_layers, d_ff)), same_size_as.n_neurons * adapter.neuron_params(),
                   same_size_as.n_neurons * adapter.neuron_params() / adapter.mlp_params(), shape,
                   dict(same_size_as.heads), same_size_as.input, "random", seed)


def full_circuit(model: torch.nn.Module) -> Circuit:
    """Every node (faithfulness 1 by definition)."""
    a = adapter_for(model)
    n = a.n_layers * a.d_ff
    return Circuit({l: torch.arange(a.d_ff) for l in range(a.n_layers)}, n * a.neuron_params(),
                   n * a.neuron_params() / a.mlp_params(), (a.n_layers, a.d_ff, a.n_heads),
                   {l: torch.arange(a.n_heads) for l in range(a.n_layers)}, True, "full")


def empty_circuit(model: torch.nn.Module) -> Circuit:
    """No node at all, not even the input (faithfulness 0 by definition)."""
    a = adapter_for(model)
    return Circuit({}, 0, 0.0, (a.n_layers, a.d_ff, a.n_heads), {}, False, "empty")


@dataclass(frozen=True)
class Faithfulness:
    value: float
    metric_patched: float
    metric_clean: float
    metric_corrupt: float
    n_items: int

    def to_dict(self) -> dict:
        return {"faithfulness": self.value, "metric_patched": self.metric_patched,
                "metric_clean": self.metric_clean, "metric_corrupt": self.metric_corrupt, "n_items": self.n_items}


def _check_shape(adapter: Adapter, circuit: Circuit) -> None:
    if circuit.shape != (adapter.n_layers, adapter.d_ff, adapter.n_heads):
        raise ValueError(f"circuit was selected on a model of shape {circuit.shape}, "
                         f"this one is {(adapter.n_layers, adapter.d_ff, adapter.n_heads)}")


@torch.no_grad()
def faithfulness_details(model: torch.nn.Module, tokenizer, items: Sequence[MCQItem], circuit: Circuit, *,
                         batch_size: int = 16) -> Faithfulness:
    adapter = adapter_for(model)
    _check_shape(adapter, circuit)
    device = next(model.parameters()).device
    keep_neurons = circuit.neuron_mask().to(device)
    keep_heads = circuit.head_mask().to(device)
    encoded, _ = encode_items(tokenizer, items)
    if not encoded:
        raise ValueError("no usable items (all clean/corrupt pairs differ in token length)")
    totals = torch.zeros(3, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for batch in make_batches(encoded, batch_size, pad_id(tokenizer), device):
            e_clean, e_corrupt = embed(adapter, batch.clean), embed(adapter, batch.corrupt)
            stored: dict[tuple[str, int], torch.Tensor] = {}

            def record(kind: str, layer: int, x: torch.Tensor) -> None:
                stored[(kind, layer)] = x.clone()

            def patch(kind: str, layer: int, x: torch.Tensor) -> torch.Tensor:
                corrupt = stored[(kind, layer)]
                if kind == "mlp":
                    return torch.where(keep_neurons[layer], x, corrupt)
                shape = x.shape
                keep = keep_heads[layer][:, None].expand(adapter.n_heads, adapter.head_dim).reshape(-1)
                return torch.where(keep, x, corrupt).view(shape)

            with node_hooks(adapter, record):
                m_corrupt = run_metric(adapter, e_corrupt, batch)
            m_clean = run_metric(adapter, e_clean, batch)
            with node_hooks(adapter, patch):
                m_patched = run_metric(adapter, e_clean if circuit.input else e_corrupt, batch)
            totals += torch.stack([m_patched.sum(), m_clean.sum(), m_corrupt.sum()]).double().cpu()
    finally:
        model.train(was_training)
    patched, clean, corrupt = (totals / len(encoded)).tolist()
    denom = clean - corrupt
    value = (patched - corrupt) / denom if denom != 0 else float("nan")
    return Faithfulness(value, patched, clean, corrupt, len(encoded))


def faithfulness(model: torch.nn.Module, tokenizer, items: Sequence[MCQItem], circuit: Circuit, *,
                 batch_size: int = 16) -> float:
    """(M_patched − M_corrupt)/(M_clean − M_corrupt) with every node outside `circuit` corrupted."""
    return faithfulness_details(model, tokenizer, items, circuit, batch_size=batch_size).value
