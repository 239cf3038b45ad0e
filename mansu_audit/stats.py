"""Item-level paired bootstrap (SPEC §4).

All per-item vectors (one per model/quantizer, aligned on the same items) are
resampled with the *same* indices in each replicate, so every statistic of a
replicate — differences, ratios, difference-in-differences — is paired.
Statistics are functions of the per-vector means, evaluated on all replicates at
once (numpy, no Python loop per replicate).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import numpy as np

DEFAULT_B = 10_000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95

Means = Mapping[str, np.ndarray]
Statistic = Callable[[Means], np.ndarray]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap CI and the settings that produced it."""

    point: float
    low: float
    high: float
    n: int
    B: int
    seed: int
    level: float
    method: str = "percentile"

    def to_dict(self) -> dict:
        return {k: (round(v, 10) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def resample_means(vectors: Mapping[str, np.ndarray], B: int, seed: int) -> dict[str, np.ndarray]:
    """Means of every vector over B shared resamples of the item indices: name -> [B]."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in vectors.items()}
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"paired vectors must have one length, got {sorted(lengths)}")
    n = lengths.pop()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(B, n))
    counts = np.zeros((B, n), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(B), n), idx.ravel()), 1.0)
    stacked = np.stack(list(arrays.values()), axis=1)  # [n, m]
    means = counts @ stacked / n  # [B, m]
    return {k: means[:, j] for j, k in enumerate(arrays)}


def paired_bootstrap(vectors: Mapping[str, np.ndarray], statistics: Mapping[str, Statistic], *,
                     B: int = DEFAULT_B, seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> dict[str, Estimate]:
    """Percentile CIs of several statistics of paired per-item vectors, one shared resample."""
    n = len(next(iter(vectors.values())))
    full = {k: np.asarray(np.mean(np.asarray(v, dtype=np.float64))) for k, v in vectors.items()}
    boot = resample_means(vectors, B, seed)
    alpha = (1 - level) / 2
    out = {}
    for name, fn in statistics.items():
        values = np.asarray(fn(boot), dtype=np.float64)
        values = values[np.isfinite(values)]
        low, high = (np.quantile(values, [alpha, 1 - alpha]) if len(values) else (np.nan, np.nan))
        out[name] = Estimate(float(fn(full)), float(low), float(high), n, B, seed, level)
    return out


def accuracy_ci(correct: np.ndarray, *, B: int = DEFAULT_B, seed: int = DEFAULT_SEED,
                level: float = DEFAULT_LEVEL) -> Estimate:
    """Accuracy of one per-item correctness vector with its bootstrap CI."""
    return paired_bootstrap({"acc": correct}, {"acc": lambda m: m["acc"]}, B=B, seed=seed, level=level)["acc"]
