"""Paired bootstrap: resampling identities, coverage, pairing, MDE, BCa."""
from __future__ import annotations

import numpy as np
import pytest

from mansu_audit.stats import (Estimate, accuracy_ci, bootstrap_means, mde_from_se, paired_bootstrap,
                               paired_difference_mde, paired_difference_se, resample_count_chunks, resample_means)


def correlated_pairs(rng, n, p=(0.5, 0.2, 0.05, 0.25), size=None):
    """Paired 0/1 outcomes: cells (1,1), (1,0), (0,1), (0,0) with probabilities p."""
    cells = rng.choice(4, size=(n,) if size is None else (size, n), p=p)
    return (cells == 0) | (cells == 1), (cells == 0) | (cells == 2)


def test_counts_are_resamples_of_the_seeded_index_draws():
    n, B, seed = 37, 300, 5
    chunks = list(resample_count_chunks(n, B, seed))
    counts = np.concatenate(chunks)
    assert counts.shape == (B, n)
    np.testing.assert_array_equal(counts.sum(axis=1), n)
    # Identity with the definition: counts[b, i] = #{j : idx[b, j] == i} for the seeded draws.
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(len(chunks[0]), n), dtype=np.uint16)
    expected = np.stack([np.bincount(row, minlength=n) for row in idx])
    np.testing.assert_array_equal(chunks[0], expected)
    x = np.random.default_rng(1).random(n)
    np.testing.assert_allclose(bootstrap_means(x[:, None], B, seed)[: len(idx), 0], x[idx].mean(axis=1))


def test_same_seed_same_result_other_seed_differs():
    rng = np.random.default_rng(0)
    x, y = correlated_pairs(rng, 200)
    stats = {"d": lambda m: m["x"] - m["y"]}
    a = paired_bootstrap({"x": x, "y": y}, stats, B=2000, seed=3)["d"]
    b = paired_bootstrap({"x": x, "y": y}, stats, B=2000, seed=3)["d"]
    c = paired_bootstrap({"x": x, "y": y}, stats, B=2000, seed=4)["d"]
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert (a.n, a.B, a.seed, a.method) == (200, 2000, 3, "percentile")


def test_one_resample_is_shared_by_all_statistics():
    rng = np.random.default_rng(1)
    x, y = correlated_pairs(rng, 150)
    B, seed = 3000, 11
    est = paired_bootstrap({"x": x, "y": y}, {"x": lambda m: m["x"], "d": lambda m: m["x"] - m["y"]}, B=B, seed=seed)
    means = resample_means({"x": x, "y": y}, B, seed)
    d = means["x"] - means["y"]
    assert est["d"].low == pytest.approx(np.quantile(d, 0.025), abs=1e-12)
    assert est["d"].high == pytest.approx(np.quantile(d, 0.975), abs=1e-12)
    assert est["d"].point == pytest.approx(x.mean() - y.mean())
    assert est["x"].high == pytest.approx(np.quantile(means["x"], 0.975), abs=1e-12)


def test_coverage_of_paired_difference_is_nominal():
    """1000 simulated benchmarks with a known paired difference 0.15: the 95% CI covers it 93–97% of the time."""
    rng = np.random.default_rng(2026)
    trials, n, p = 1000, 300, (0.5, 0.2, 0.05, 0.25)
    true_difference = p[1] - p[2]
    x, y = correlated_pairs(rng, n, p, size=trials)
    vectors = {**{f"x{t}": x[t] for t in range(trials)}, **{f"y{t}": y[t] for t in range(trials)}}
    statistics = {t: (lambda m, t=t: m[f"x{t}"] - m[f"y{t}"]) for t in range(trials)}
    est = paired_bootstrap(vectors, statistics, B=1000, seed=7)
    coverage = np.mean([est[t].low <= true_difference <= est[t].high for t in range(trials)])
    assert 0.93 <= coverage <= 0.97, coverage


def test_paired_ci_is_narrower_than_unpaired_on_correlated_data():
    rng = np.random.default_rng(3)
    x, y = correlated_pairs(rng, 400, p=(0.6, 0.1, 0.02, 0.28))  # strongly correlated: SD ratio ~0.5
    paired = paired_bootstrap({"x": x, "y": y}, {"d": lambda m: m["x"] - m["y"]}, B=4000, seed=0)["d"]
    mx = resample_means({"x": x}, 4000, 0)["x"]
    my = resample_means({"y": y}, 4000, 1)["y"]  # independent resamples: the unpaired bootstrap
    lo, hi = np.quantile(mx - my, [0.025, 0.975])
    assert paired.high - paired.low < 0.7 * (hi - lo)
    # and the unpaired width matches the closed form for independent proportions
    se_unpaired = np.sqrt(x.mean() * (1 - x.mean()) / 400 + y.mean() * (1 - y.mean()) / 400)
    assert (hi - lo) == pytest.approx(2 * 1.96 * se_unpaired, rel=0.1)


def test_se_and_mde_match_the_discordance_formula():
    rng = np.random.default_rng(4)
    x, y = correlated_pairs(rng, 500)
    d = paired_bootstrap({"x": x, "y": y}, {"d": lambda m: m["x"] - m["y"]}, B=10_000, seed=0)["d"]
    assert d.se == pytest.approx(paired_difference_se(x, y), rel=0.05)
    assert d.mde == pytest.approx(mde_from_se(d.se), rel=1e-12)
    assert mde_from_se(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert d.mde == pytest.approx(paired_difference_mde(x, y), rel=0.05)


def test_accuracy_ci_matches_binomial_standard_error():
    correct = np.random.default_rng(5).random(800) < 0.8
    est = accuracy_ci(correct, B=10_000, seed=1)
    se = np.sqrt(correct.mean() * (1 - correct.mean()) / 800)
    assert est.point == pytest.approx(correct.mean())
    assert est.high - est.low == pytest.approx(2 * 1.96 * se, rel=0.08)


def test_ratio_statistic_drops_nonfinite_replicates():
    x = np.zeros(30)
    x[0] = 1.0  # most resamples omit the one nonzero item: ratio undefined there
    y = np.ones(30)
    est = paired_bootstrap({"x": x, "y": y}, {"r": lambda m: m["y"] / m["x"]}, B=2000, seed=0)["r"]
    assert np.isfinite(est.low) and np.isfinite(est.high) and est.low <= est.point <= est.high


def test_bca_agrees_with_percentile_on_a_symmetric_case():
    rng = np.random.default_rng(6)
    x, y = correlated_pairs(rng, 300)
    stats = {"d": lambda m: m["x"] - m["y"], "ratio": lambda m: m["y"] / m["x"]}
    pct = paired_bootstrap({"x": x, "y": y}, stats, B=4000, seed=0)
    bca = paired_bootstrap({"x": x, "y": y}, stats, B=4000, seed=0, method="bca")
    for k in stats:
        assert bca[k].method == "bca"
        assert bca[k].low <= bca[k].point <= bca[k].high
        assert bca[k].low == pytest.approx(pct[k].low, abs=0.01)
        assert bca[k].high == pytest.approx(pct[k].high, abs=0.01)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one length"):
        resample_means({"a": np.ones(3), "b": np.ones(4)}, 10, 0)
    with pytest.raises(ValueError, match="CI method"):
        paired_bootstrap({"a": np.ones(3)}, {"a": lambda m: m["a"]}, method="normal")


def test_estimate_round_trips_and_hides_nan():
    e = Estimate(0.1, 0.05, 0.15, 10, 100, 0, 0.95, "percentile", 0.02, float("nan"))
    d = e.to_dict()
    assert d["mde"] is None
    assert Estimate.from_dict(d).point == 0.1 and np.isnan(Estimate.from_dict(d).mde)


def test_pattern_merging_gives_the_same_means_as_item_counts():
    x = (np.random.default_rng(8).random((500, 3)) < 0.5).astype(np.float64)  # 8 row patterns: merged
    merged = bootstrap_means(x, 300, 2)
    direct = np.concatenate(list(resample_count_chunks(500, 300, 2))) @ x / 500
    np.testing.assert_allclose(merged, direct, rtol=0, atol=1e-12)
