"""Circuit Attribution Divergence (SPEC §7, our definition).

The circuit C is fixed from the base model θ0. With a_θ(c) the mean attribution
of neuron c over items and s_c = sign(a_θ0(c)):

    CAD = 1 − Σ_{c∈C} s_c·a_θu(c) / Σ_{c∈C} |a_θ0(c)|

0 = circuit intact, 1 = its attribution is gone, > 1 = it now argues against the
answer. Written per item, with x_i = Σ_c s_c·a_θu(i, c) and y_i = Σ_c s_c·a_θ0(i, c),
CAD = 1 − mean(x)/mean(y): a ratio of paired means, so the bootstrap resamples
items once per replicate and applies them to both models (`stats.paired_bootstrap`).
The circuit and the signs s_c stay fixed across replicates (they define the
statistic; at the full sample Σ s_c·a_θ0(c) = Σ |a_θ0(c)| exactly).

Also reported: the same CAD on a random circuit of the same size (control), the
cosine distance between the two models' mean MLP attribution vectors, the
Jaccard overlap between C and the circuit re-discovered on the candidate
(same size, top-k by |score|), and the circuit mass per layer
(`circuit_mass_per_layer`: mass_base[l] = Σ_{c∈C, layer l} |a_θ0(c)|,
mass_candidate[l] = Σ_{c∈C, layer l} s_c·a_θu(c), over the items both models could
use), which the report draws, so it never recomputes the attributions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mansu_audit.circuits.attribution import Attribution, attribute, per_item_array
from mansu_audit.circuits.circuit import Circuit, random_circuit, select_circuit
from mansu_audit.data import MCQItem
from mansu_audit.stats import DEFAULT_B, Estimate, paired_bootstrap


@dataclass
class CADResult:
    cad: Estimate
    random_cad: Estimate  # same statistic on a random circuit of the same size
    cosine_distance: float
    topk_jaccard: float
    circuit: Circuit
    random_circuit: Circuit
    n_items: int
    skipped: tuple[str, ...]
    base_summary: dict
    candidate_summary: dict
    circuit_mass_base: float  # Σ|a_θ0(c)| over C
    circuit_mass_candidate: float  # Σ s_c·a_θu(c) over C
    circuit_layers: dict | None = None  # circuit_mass_per_layer(...) of the same attributions

    def to_dict(self) -> dict:
        return {"cad": self.cad.to_dict(), "random_circuit_cad": self.random_cad.to_dict(),
                "cosine_distance": self.cosine_distance, "topk_jaccard": self.topk_jaccard,
                "n_items": self.n_items, "n_skipped": len(self.skipped), "skipped": list(self.skipped),
                "circuit": {"n_neurons": self.circuit.n_neurons, "n_params": self.circuit.n_params,
                            "frac": self.circuit.frac, "neurons_per_layer": self.circuit.neurons_per_layer()},
                "random_circuit": {"n_neurons": self.random_circuit.n_neurons, "seed": self.random_circuit.seed},
                "circuit_mass_base": self.circuit_mass_base,
                "circuit_mass_candidate": self.circuit_mass_candidate,
                "base_attribution": self.base_summary, "candidate_attribution": self.candidate_summary,
                "circuit_layers": self.circuit_layers}


def circuit_mass_per_layer(base_mean: np.ndarray, candidate_mean: np.ndarray, mask: np.ndarray) -> dict:
    """Per-layer circuit mass before/after from mean MLP attributions [L, F] and the circuit mask [L, F]."""
    base_mean = np.asarray(base_mean, dtype=np.float64)
    candidate_mean = np.asarray(candidate_mean, dtype=np.float64)
    signs = np.sign(base_mean)
    in_c = np.asarray(mask, dtype=bool)
    mass_base = np.where(in_c, np.abs(base_mean), 0.0).sum(axis=1)
    mass_cand = np.where(in_c, signs * candidate_mean, 0.0).sum(axis=1)
    total_base, total_cand = float(mass_base.sum()), float(mass_cand.sum())
    return {"layers": list(range(base_mean.shape[0])),
            "circuit_neurons": in_c.sum(axis=1).astype(int).tolist(),
            "circuit_mass_base": mass_base.tolist(),
            "circuit_mass_candidate": mass_cand.tolist(),
            "mlp_mass_base": np.abs(base_mean).sum(axis=1).tolist(),
            "mlp_mass_candidate": np.abs(candidate_mean).sum(axis=1).tolist(),
            "total_base": total_base, "total_candidate": total_cand,
            "cad_point": (1.0 - total_cand / total_base) if total_base > 0 else None}


def circuit_layers_from_attributions(base: Attribution, candidate: Attribution, circuit: Circuit) -> dict:
    """`circuit_mass_per_layer` over the items both attributions could use (what `cad_from_attributions` reports)."""
    b_scores, c_scores, _ = _aligned(base, candidate)
    if len(b_scores) == 0:
        raise ValueError("no items usable by both models")
    return circuit_mass_per_layer(b_scores.mean(0), c_scores.mean(0), circuit.neuron_mask().numpy())


def signed_circuit_sums(scores: np.ndarray, mask: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Per item Σ_{c∈C} s_c·a(i, c) for per-item scores [n, L, F]."""
    weights = np.where(mask, signs, 0.0).reshape(-1)
    return scores.reshape(scores.shape[0], -1).astype(np.float64) @ weights


def _cad_estimate(base: np.ndarray, cand: np.ndarray, circuit: Circuit, signs: np.ndarray, B: int,
                  seed: int, level: float = 0.95, ci_method: str = "percentile") -> tuple[Estimate, float, float]:
    mask = circuit.neuron_mask().numpy()
    y = signed_circuit_sums(base, mask, signs)
    x = signed_circuit_sums(cand, mask, signs)
    est = paired_bootstrap({"base": y, "cand": x}, {"cad": lambda m: 1.0 - m["cand"] / m["base"]}, B=B, seed=seed,
                           level=level, method=ci_method)
    return est["cad"], float(y.mean()), float(x.mean())


def _aligned(base: Attribution, cand: Attribution) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Per-item scores of both models on the items both could use, in the same order."""
    b_scores, c_scores = per_item_array(base), per_item_array(cand)
    if base.shape != cand.shape:
        raise ValueError(f"base and candidate have different node shapes {base.shape} vs {cand.shape}")
    common = [i for i in base.item_ids if i in set(cand.item_ids)]
    b_index = {k: j for j, k in enumerate(base.item_ids)}
    c_index = {k: j for j, k in enumerate(cand.item_ids)}
    skipped = tuple(sorted(set(base.skipped) | set(cand.skipped)))
    return b_scores[[b_index[k] for k in common]], c_scores[[c_index[k] for k in common]], skipped


def cad_from_attributions(base: Attribution, candidate: Attribution, circuit: Circuit, *,
                          random_control: Circuit, B: int = DEFAULT_B, seed: int = 0, level: float = 0.95,
                          ci_method: str = "percentile") -> CADResult:
    """CAD of `candidate` relative to `base` on a circuit fixed from the base model."""
    b_scores, c_scores, skipped = _aligned(base, candidate)
    if len(b_scores) == 0:
        raise ValueError("no items usable by both models")
    base_mean = b_scores.mean(0)  # [L, F]
    signs = np.sign(base_mean)
    cad, mass_base, mass_cand = _cad_estimate(b_scores, c_scores, circuit, signs, B, seed, level, ci_method)
    rnd, _, _ = _cad_estimate(b_scores, c_scores, random_control, signs, B, seed, level, ci_method)
    cand_mean = c_scores.mean(0)
    u, v = base_mean.ravel().astype(np.float64), cand_mean.ravel().astype(np.float64)
    denom = np.linalg.norm(u) * np.linalg.norm(v)
    cosine_distance = float(1.0 - u @ v / denom) if denom > 0 else 1.0
    a = circuit.neuron_mask().numpy().ravel()
    b = np.zeros_like(a)
    b[np.argsort(-np.abs(cand_mean).ravel(), kind="stable")[:circuit.n_neurons]] = True  # re-discovered, same size
    union = int((a | b).sum())
    jaccard = float((a & b).sum()) / union if union else 1.0
    layers = circuit_mass_per_layer(base_mean, cand_mean, circuit.neuron_mask().numpy())
    return CADResult(cad, rnd, cosine_distance, jaccard, circuit, random_control, len(b_scores), skipped,
                     base.summary(), candidate.summary(), mass_base, mass_cand, layers)


def compute_cad(base_model: torch.nn.Module, candidate_model: torch.nn.Module, tokenizer,
                items: Sequence[MCQItem], *, circuit_frac: float = 0.01, steps: int = 5, B: int = DEFAULT_B,
                seed: int = 0, circuit: Circuit | None = None, base_attribution: Attribution | None = None,
                method: str = "eap-ig", batch_size: int = 16, level: float = 0.95, ci_method: str = "percentile",
                progress: bool = False) -> CADResult:
    """CAD of `candidate_model` against `base_model` on `items` (forget_attr), with bootstrap CI.

    The circuit is selected from the base attribution unless `circuit` is given;
    pass `base_attribution` to reuse one base run for several candidates
    (e.g. one per quantizer). `seed` seeds both the bootstrap and the random circuit.
    """
    if base_attribution is None:
        base_attribution = attribute(base_model, tokenizer, items, steps=steps, method=method,
                                     batch_size=batch_size, progress=progress)
    if circuit is None:
        circuit = select_circuit(base_attribution, circuit_frac)
    cand_attribution = attribute(candidate_model, tokenizer, items, steps=steps, method=method,
                                 batch_size=batch_size, progress=progress)
    control = random_circuit(base_model, same_size_as=circuit, seed=seed)
    return cad_from_attributions(base_attribution, cand_attribution, circuit, random_control=control, B=B, seed=seed,
                                 level=level, ci_method=ci_method)
