"""Speed of the paired bootstrap (SPEC §4): 10,000 replicates × 4 statistics × 2,000 items.

Prints our time and its ratio to two references run in this process on the same
data: the previous `np.add.at` count construction, and `scipy.stats.bootstrap`
(paired, vectorised, percentile; one call per statistic, as scipy has no shared
resample across statistics). Target: ours under 1 s on the project machine.

    OMP_NUM_THREADS=1 python perf/bootstrap_speed.py [--reps 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from mansu_audit.stats import paired_bootstrap

B, N_ITEMS = 10_000, 2_000


def make_data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.random(N_ITEMS) < 0.8
    return {"base": base, "cand": base & (rng.random(N_ITEMS) < 0.6),
            "base_q": base ^ (rng.random(N_ITEMS) < 0.03), "cand_q": base & (rng.random(N_ITEMS) < 0.65)}


STATISTICS = {
    "D_F": lambda m: m["base"] - m["cand"],
    "G_Q": lambda m: m["cand_q"] - m["cand"],
    "recovery": lambda m: (m["cand_q"] - m["cand"]) / (m["base"] - m["cand"]),
    "did": lambda m: (m["cand_q"] - m["cand"]) - (m["base_q"] - m["base"]),
}


def ours(data):
    return paired_bootstrap(data, STATISTICS, B=B, seed=0)


def add_at_reference(data):
    """The previous implementation: counts via np.add.at, then one matmul."""
    names = list(data)
    x = np.stack([np.asarray(data[k], dtype=np.float64) for k in names], axis=1)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, N_ITEMS, size=(B, N_ITEMS))
    counts = np.zeros((B, N_ITEMS))
    np.add.at(counts, (np.repeat(np.arange(B), N_ITEMS), idx.ravel()), 1.0)
    means = counts @ x / N_ITEMS
    m = {k: means[:, j] for j, k in enumerate(names)}
    return {k: np.quantile(f(m), [0.025, 0.975]) for k, f in STATISTICS.items()}


def scipy_reference(data):
    from scipy.stats import bootstrap

    names = list(data)
    arrays = tuple(np.asarray(data[k], dtype=np.float64) for k in names)
    out = {}
    for k, f in STATISTICS.items():
        def stat(*a, axis=-1, f=f):
            return f({n: v.mean(axis=axis) for n, v in zip(names, a)})

        res = bootstrap(arrays, stat, paired=True, vectorized=True, n_resamples=B, method="percentile",
                        rng=0, batch=500)
        out[k] = (res.confidence_interval.low, res.confidence_interval.high)
    return out


def best_time(fn, data, reps: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn(data)
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    data = make_data()
    ours(data)  # warm up imports
    t_ours, est = best_time(ours, data, args.reps)
    t_addat, ref = best_time(add_at_reference, data, 1)
    t_scipy, sref = best_time(scipy_reference, data, 1)
    print(f"paired bootstrap: B={B} replicates x {len(STATISTICS)} statistics x {N_ITEMS} items")
    print(f"ours (bincount counts, shared resample): {t_ours:.3f} s (best of {args.reps})")
    print(f"np.add.at reference:                     {t_addat:.3f} s  ratio {t_addat / t_ours:.1f}x")
    print(f"scipy.stats.bootstrap (paired, 4 calls): {t_scipy:.3f} s  ratio {t_scipy / t_ours:.1f}x")
    for k, e in est.items():
        print(f"  {k:<9} point {e.point:+.4f}  ours [{e.low:+.4f}, {e.high:+.4f}]  "
              f"scipy [{sref[k][0]:+.4f}, {sref[k][1]:+.4f}]  mde {e.mde:.4f}")
    print(f"target < 1 s: {'met' if t_ours < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
