"""Item-level paired bootstrap (SPEC §4).

All per-item vectors (one per model/quantizer, aligned on the same items) are
resampled with the *same* indices in each replicate, so every statistic of a
replicate — differences, ratios, difference-in-differences — is paired.
Statistics are functions of the per-vector means, evaluated on all replicates at
once (numpy, no Python loop per replicate).

Resampling is done as multinomial *counts*: a replicate's index draws are turned
into per-item counts with one `bincount` per chunk of replicates (offsets keep
the replicates apart), and the means of every vector are one matrix product
`counts @ vectors / n`. Chunks have a fixed number of rows, so the random stream
— and hence every CI — is a deterministic function of the seed.

Minimum detectable effect (MDE, reported beside every statistic): the smallest
true effect a two-sided test at level `1 - level` detects with probability
`power`, from the normal approximation

    MDE = (z_{1 - alpha/2} + z_{power}) * SE,

with SE the bootstrap standard error of the statistic. For a paired difference
of two proportions the bootstrap SE converges to the closed form from the
discordant pairs, sqrt((p10 + p01 - (p10 - p01)^2) / n) (`paired_difference_se`),
so at alpha 0.05 and power 0.8 the MDE is 2.80 times that.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

DEFAULT_B = 10_000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
DEFAULT_POWER = 0.8
CI_METHODS = ("percentile", "bca")
_CHUNK_ROWS = 128  # replicates per bincount; fixed so the random stream depends on the seed only

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
    se: float = float("nan")  # bootstrap standard error
    mde: float = float("nan")  # minimum detectable effect at this n (see module docstring)

    def to_dict(self) -> dict:
        """JSON-ready: floats rounded to 10 digits (stable bytes), non-finite values as None."""
        out = {}
        for k, v in asdict(self).items():
            if isinstance(v, float):
                v = round(v, 10) if np.isfinite(v) else None
            out[k] = v
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> "Estimate":
        def f(v):
            return float("nan") if v is None else float(v)

        return cls(f(d["point"]), f(d["low"]), f(d["high"]), int(d["n"]), int(d["B"]), int(d["seed"]),
                   float(d["level"]), str(d.get("method", "percentile")), f(d.get("se")), f(d.get("mde")))


def _stack(vectors: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    names = list(vectors)
    if not names:
        raise ValueError("no vectors to bootstrap")
    arrays = [np.asarray(vectors[k], dtype=np.float64).reshape(-1) for k in names]
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"paired vectors must have one length, got {sorted(lengths)}")
    if lengths.pop() == 0:
        raise ValueError("cannot bootstrap empty vectors")
    return names, np.stack(arrays, axis=1)  # [n, m]


def _index_chunks(n: int, B: int, seed: int) -> Iterator[np.ndarray]:
    """Resampled item indices [rows, n] per chunk, B rows in all (seeded, fixed chunking)."""
    if B < 1:
        raise ValueError("B must be at least 1")
    rng = np.random.default_rng(seed)
    draw_dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
    for start in range(0, B, _CHUNK_ROWS):
        yield rng.integers(0, n, size=(min(_CHUNK_ROWS, B - start), n), dtype=draw_dtype)


def _counts(categories: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """How often each of k categories is drawn in each row: float64 [rows, k] (one bincount, row offsets)."""
    rows = len(idx)
    flat = categories[idx]  # int64 category of every draw
    flat += (np.arange(rows, dtype=np.int64) * k)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * k).reshape(rows, k).astype(np.float64)


def resample_count_chunks(n: int, B: int, seed: int) -> Iterator[np.ndarray]:
    """Per-item resample counts, float64 [rows, n] per chunk, B rows in all (seeded)."""
    items = np.arange(n, dtype=np.int64)
    for idx in _index_chunks(n, B, seed):
        yield _counts(items, idx, n)


def bootstrap_means(matrix: np.ndarray, B: int, seed: int) -> np.ndarray:
    """Column means of `matrix` [n, m] over B shared resamples of its rows: [B, m].

    Items with identical rows (e.g. the same correct/wrong pattern across all
    models: at most 2^m patterns for 0/1 vectors) are counted as one category,
    which keeps each bincount small and in cache; the draws, and so the result,
    are those of counting every item separately.
    """
    n, m = matrix.shape
    patterns, categories = np.unique(matrix, axis=0, return_inverse=True)
    categories = categories.reshape(-1).astype(np.int64)
    if len(patterns) * 4 > n:  # little to merge: count items directly
        patterns, categories = matrix, np.arange(n, dtype=np.int64)
    out = np.empty((B, m), dtype=np.float64)
    start = 0
    for idx in _index_chunks(n, B, seed):
        out[start:start + len(idx)] = _counts(categories, idx, len(patterns)) @ patterns
        start += len(idx)
    return out / n


def resample_means(vectors: Mapping[str, np.ndarray], B: int, seed: int) -> dict[str, np.ndarray]:
    """Means of every vector over B shared resamples of the item indices: name -> [B]."""
    names, matrix = _stack(vectors)
    means = bootstrap_means(matrix, B, seed)
    return {k: means[:, j] for j, k in enumerate(names)}


def z_quantile(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


def mde_from_se(se: float, level: float = DEFAULT_LEVEL, power: float = DEFAULT_POWER) -> float:
    """(z_{1-alpha/2} + z_power) * SE: the normal-approximation minimum detectable effect."""
    return (z_quantile(1 - (1 - level) / 2) + z_quantile(power)) * se


def paired_difference_se(x: np.ndarray, y: np.ndarray) -> float:
    """Closed-form SE of mean(x) - mean(y) for paired 0/1 vectors, from the discordant pairs."""
    x = np.asarray(x, dtype=bool)
    y = np.asarray(y, dtype=bool)
    p10 = float(np.mean(x & ~y))
    p01 = float(np.mean(~x & y))
    return float(np.sqrt(max(p10 + p01 - (p10 - p01) ** 2, 0.0) / len(x)))


def paired_difference_mde(x: np.ndarray, y: np.ndarray, level: float = DEFAULT_LEVEL,
                          power: float = DEFAULT_POWER) -> float:
    """MDE of a paired difference of proportions at this n and observed discordance."""
    return mde_from_se(paired_difference_se(x, y), level, power)


def _bca(names: list[str], matrix: np.ndarray, fn: Statistic, B: int, seed: int,
         level: float) -> tuple[float, float, float]:
    """BCa CI from scipy (paired resampling of all vectors); (low, high, se)."""
    from scipy.stats import bootstrap

    def statistic(*arrays, axis=-1):
        return np.asarray(fn({k: a.mean(axis=axis) for k, a in zip(names, arrays)}), dtype=np.float64)

    with np.errstate(all="ignore"):
        res = bootstrap(tuple(matrix[:, j] for j in range(matrix.shape[1])), statistic, paired=True,
                        vectorized=True, n_resamples=B, confidence_level=level, method="BCa", rng=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high), float(res.standard_error)


def paired_bootstrap(vectors: Mapping[str, np.ndarray], statistics: Mapping[str, Statistic], *,
                     B: int = DEFAULT_B, seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
                     method: str = "percentile", power: float = DEFAULT_POWER) -> dict[str, Estimate]:
    """CIs of several statistics of paired per-item vectors, all from one shared resample.

    `statistics` map a name to a function of the per-vector means (arrays, so it is
    evaluated on all replicates at once). Replicates where a statistic is not
    finite (a ratio over a zero denominator) are dropped from its CI.
    `method` is "percentile" (default) or "bca" (scipy.stats.bootstrap, paired; the
    same seed gives every statistic the same resamples).
    """
    if method not in CI_METHODS:
        raise ValueError(f"unknown CI method '{method}' (known: {', '.join(CI_METHODS)})")
    names, matrix = _stack(vectors)
    n = matrix.shape[0]
    full = {k: np.asarray(matrix[:, j].mean()) for j, k in enumerate(names)}
    boot = bootstrap_means(matrix, B, seed) if method == "percentile" else None
    boot_means = None if boot is None else {k: boot[:, j] for j, k in enumerate(names)}
    alpha = (1 - level) / 2
    out = {}
    for name, fn in statistics.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            point = float(fn(full))
            if boot_means is not None:
                values = np.asarray(fn(boot_means), dtype=np.float64)
                values = values[np.isfinite(values)]
                if len(values) > 1:
                    low, high = np.quantile(values, [alpha, 1 - alpha])
                    se = float(np.std(values, ddof=1))
                else:
                    low = high = se = float("nan")
                used = "percentile"
            else:
                low, high, se = _bca(names, matrix, fn, B, seed, level)
                used = "bca"
        out[name] = Estimate(point, float(low), float(high), n, B, seed, level, used, se,
                             mde_from_se(se, level, power) if np.isfinite(se) else float("nan"))
    return out


def accuracy_ci(correct: np.ndarray, *, B: int = DEFAULT_B, seed: int = DEFAULT_SEED,
                level: float = DEFAULT_LEVEL, method: str = "percentile") -> Estimate:
    """Accuracy of one per-item correctness vector with its bootstrap CI."""
    return paired_bootstrap({"acc": correct}, {"acc": lambda m: m["acc"]}, B=B, seed=seed, level=level,
                            method=method)["acc"]


def mean_ci(values: np.ndarray, *, B: int = DEFAULT_B, seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
            method: str = "percentile") -> Estimate:
    """Mean of per-item values (e.g. per-item CAD contributions) with its bootstrap CI."""
    return accuracy_ci(values, B=B, seed=seed, level=level, method=method)
