"""Verdict rules (SPEC §3) on hand-built CIs and per-item results, the over-unlearning guard, the policy file."""
from __future__ import annotations

import numpy as np
import pytest

from mansu_audit.desiderata import (FAIL, INCONCLUSIVE, NOT_COMPUTED, PASS, assess, overall_verdict,
                                    verdict_at_least, verdict_at_most, verdict_ptq_gap)
from mansu_audit.errors import InputError
from mansu_audit.evaluate import MCQResult
from mansu_audit.policy import Policy, load_policy
from mansu_audit.stats import Estimate

FAST = Policy(bootstrap_replicates=2000)


def est(point, low, high):
    return Estimate(point, low, high, 100, 1000, 0, 0.95)


@pytest.mark.parametrize("low, high, expected", [
    (0.15, 0.30, PASS),  # wholly above min_forget_drop 0.10
    (0.10, 0.20, PASS),  # lower bound exactly on the threshold passes
    (-0.05, 0.08, FAIL),  # wholly below
    (0.05, 0.15, INCONCLUSIVE),  # straddles
])
def test_forget_verdict(low, high, expected):
    assert verdict_at_least(est((low + high) / 2, low, high), 0.10) == expected


@pytest.mark.parametrize("low, high, expected", [
    (-0.02, 0.04, PASS),  # wholly below max_retain_drop 0.05
    (0.06, 0.12, FAIL),  # wholly above
    (0.01, 0.09, INCONCLUSIVE),  # straddles
])
def test_retain_verdict(low, high, expected):
    assert verdict_at_most(est((low + high) / 2, low, high), 0.05) == expected


@pytest.mark.parametrize("point, low, high, expected", [
    (-0.03, -0.06, 0.00, PASS),  # non-positive, upper bound within tolerance 0.02
    (0.00, -0.02, 0.02, PASS),
    (-0.01, -0.04, 0.03, INCONCLUSIVE),  # upper bound beyond tolerance
    (0.01, -0.01, 0.02, INCONCLUSIVE),  # positive point, CI reaches 0
    (0.015, 0.005, 0.02, FAIL),  # confidently positive gap, even if small
    (0.06, 0.03, 0.09, FAIL),  # wholly above tolerance
])
def test_ptq_gap_verdict(point, low, high, expected):
    assert verdict_ptq_gap(est(point, low, high), 0.02) == expected


def test_nan_interval_is_inconclusive():
    nan = float("nan")
    assert verdict_at_least(est(0.2, nan, nan), 0.1) == INCONCLUSIVE
    assert verdict_at_most(est(0.0, nan, nan), 0.1) == INCONCLUSIVE


def test_overall_verdict():
    assert overall_verdict([PASS] * 4) == PASS
    assert overall_verdict([PASS, PASS, PASS, NOT_COMPUTED]) == INCONCLUSIVE
    assert overall_verdict([PASS, INCONCLUSIVE, PASS, PASS]) == INCONCLUSIVE
    assert overall_verdict([PASS, INCONCLUSIVE, FAIL, NOT_COMPUTED]) == FAIL


def make_result(split, correct, answers=None, wrong_shift=1, k=4):
    """Per-item results with the given correctness; wrong answers shifted by `wrong_shift` letters."""
    n = len(correct)
    answers = np.arange(n) % k if answers is None else answers
    preds = np.where(correct, answers, (answers + wrong_shift) % k)
    lp = np.full((n, k), -3.0)
    lp[np.arange(n), preds] = -0.5
    return MCQResult(split, tuple(f"{split}-{i}" for i in range(n)), answers.astype(np.int64), preds.astype(np.int64), lp)


def bern(seed, n, p):
    return np.random.default_rng(seed).random(n) < p


def scenario(cand_forget=0.3, cand_q_forget=0.3, cand_retain=0.9, base_q_forget=0.9, n=400, degenerate=False):
    """Base knows 90% of both splits; the candidate's accuracies as given (items nested, so pairs correlate)."""
    u_f = np.random.default_rng(1).random(n)
    u_r = np.random.default_rng(2).random(n)
    forget = {"base/fp32": make_result("forget_eval", u_f < 0.9),
              "candidate/fp32": make_result("forget_eval", u_f < cand_forget),
              "base/nf4": make_result("forget_eval", u_f < base_q_forget),
              "candidate/nf4": make_result("forget_eval", u_f < cand_q_forget)}
    retain = {"base/fp32": make_result("retain_eval", u_r < 0.9),
              "candidate/fp32": make_result("retain_eval", u_r < cand_retain),
              "base/nf4": make_result("retain_eval", u_r < 0.9),
              "candidate/nf4": make_result("retain_eval", u_r < cand_retain)}
    if degenerate:
        r = retain["candidate/fp32"]
        preds = np.zeros(n, dtype=np.int64)  # always 'A'
        retain["candidate/fp32"] = MCQResult(r.split, r.ids, r.answers, preds, r.logprobs)
    return forget, retain


def test_statistics_obey_their_definitions():
    forget, retain = scenario(cand_forget=0.3, cand_q_forget=0.5, base_q_forget=0.85)
    a = assess(forget, retain, ["nf4"], FAST, num_choices=4)
    f = a.statistics["forget_eval"]
    acc = {k: r.correct.mean() for k, r in forget.items()}
    d_f = acc["base/fp32"] - acc["candidate/fp32"]
    g = acc["candidate/nf4"] - acc["candidate/fp32"]
    base_gap = acc["base/nf4"] - acc["base/fp32"]
    assert f["D_F"].point == pytest.approx(d_f)
    assert f["KR"].point == pytest.approx(d_f / (acc["base/fp32"] - 0.25))
    assert f["G_Q[nf4]"].point == pytest.approx(g)
    assert f["recovery_fraction[nf4]"].point == pytest.approx(g / d_f)
    assert f["quantized_forget_drop[nf4]"].point == pytest.approx(acc["base/fp32"] - acc["candidate/nf4"])
    assert f["diff_in_diff[nf4]"].point == pytest.approx(g - base_gap)
    assert a.statistics["retain_eval"]["D_R"].point == pytest.approx(
        retain["base/fp32"].correct.mean() - retain["candidate/fp32"].correct.mean())
    for e in f.values():
        assert e.low <= e.point <= e.high and e.n == 400 and e.B == 2000


def test_quantization_recovery_fails_q_and_overall():
    a = assess(*scenario(cand_q_forget=0.6), ["nf4"], FAST, num_choices=4, cad=est(0.9, 0.7, 1.1))
    assert a.verdicts["F"].verdict == PASS
    assert a.verdicts["R"].verdict == PASS
    assert a.verdicts["Q[nf4]"].verdict == FAIL and a.verdicts["Q"].verdict == FAIL
    assert a.overall == FAIL


def test_everything_passes_only_with_cad():
    forget, retain = scenario(cand_forget=0.3, cand_q_forget=0.27, cand_retain=0.9)
    with_cad = assess(forget, retain, ["nf4"], FAST, num_choices=4, cad=est(0.9, 0.7, 1.1))
    assert [with_cad.verdicts[k].verdict for k in "FRQS"] == [PASS] * 4 and with_cad.overall == PASS
    without = assess(forget, retain, ["nf4"], FAST, num_choices=4)
    assert without.verdicts["S"].verdict == NOT_COMPUTED and without.overall == INCONCLUSIVE


def test_no_op_unlearning_fails_f():
    a = assess(*scenario(cand_forget=0.9, cand_q_forget=0.9, cand_retain=0.9), ["nf4"], FAST, num_choices=4)
    assert a.verdicts["F"].verdict == FAIL and a.overall == FAIL


def test_retain_at_chance_never_passes():
    """Destroying the model 'forgets' everything; the guard must not let it pass."""
    forget, retain = scenario(cand_forget=0.2, cand_q_forget=0.2, cand_retain=0.2)
    loose = Policy(bootstrap_replicates=2000, max_retain_drop=1.0)  # R alone would pass
    a = assess(forget, retain, ["nf4"], loose, num_choices=4, cad=est(0.9, 0.7, 1.1))
    assert a.verdicts["F"].verdict == FAIL and "retain accuracy at chance" in a.verdicts["F"].reason
    assert all(v.verdict != PASS for v in a.verdicts.values())
    assert a.overall == FAIL and a.guard


def test_degenerate_outputs_never_pass():
    forget, retain = scenario(degenerate=True)
    loose = Policy(bootstrap_replicates=2000, max_retain_drop=1.0)
    a = assess(forget, retain, ["nf4"], loose, num_choices=4, cad=est(0.9, 0.7, 1.1))
    assert a.verdicts["F"].verdict == FAIL and "predicts 'A'" in a.verdicts["F"].reason
    assert a.overall == FAIL


def test_unaligned_results_are_refused():
    forget, retain = scenario()
    r = forget["candidate/nf4"]
    forget["candidate/nf4"] = MCQResult(r.split, tuple(reversed(r.ids)), r.answers, r.predictions, r.logprobs)
    with pytest.raises(ValueError, match="not aligned"):
        assess(forget, retain, ["nf4"], FAST, num_choices=4)


def test_policy_file_overrides_and_rejects(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("min_forget_drop: 0.2\nbootstrap_replicates: 2000\nseed: 7\nci_method: bca\n")
    pol = load_policy(p)
    assert (pol.min_forget_drop, pol.bootstrap_replicates, pol.seed, pol.ci_method) == (0.2, 2000, 7, "bca")
    assert pol.max_retain_drop == Policy().max_retain_drop
    assert pol.sha256() != Policy().sha256()
    p.write_text("seed: 1\nmin_forget_drp: 0.2\n")
    with pytest.raises(InputError, match=r"policy.yaml:2: unknown policy key 'min_forget_drp'"):
        load_policy(p)
    p.write_text("level: 1.5\n")
    with pytest.raises(InputError, match="'level': must be between"):
        load_policy(p)
    p.write_text("bootstrap_replicates: many\n")
    with pytest.raises(InputError, match="must be an integer"):
        load_policy(p)
    p.write_text("ci_method: normal\n")
    with pytest.raises(InputError, match="ci_method"):
        load_policy(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        load_policy(p)
    with pytest.raises(InputError, match="not found"):
        load_policy(tmp_path / "missing.yaml")


def test_chance_is_each_splits_mean_of_one_over_k():
    """A 2-choice retain split has chance 0.5: accuracy 0.5 there is at chance even though 4-choice forget's is 0.25."""
    rng = np.random.default_rng(5)
    n = 400
    forget = {k: make_result("forget_eval", rng.random(n) < 0.9) for k in
              ("base/fp32", "base/nf4", "candidate/nf4")}
    forget["candidate/fp32"] = make_result("forget_eval", rng.random(n) < 0.3)
    keys = ("base/fp32", "base/nf4", "candidate/fp32", "candidate/nf4")
    retain = {k: make_result("retain_eval", rng.random(n) < (0.95 if k.startswith("base") else 0.5), k=2)
              for k in keys}
    assert forget["base/fp32"].chance == 0.25 and retain["base/fp32"].chance == 0.5
    a = assess(forget, retain, ["nf4"], Policy(bootstrap_replicates=2000, max_retain_drop=1.0), cad=est(0.9, 0.7, 1.1))
    assert a.chance == 0.25
    assert any("retain accuracy at chance" in g and "0.50" in g for g in a.guard) and a.overall == FAIL
    mixed = make_result("x", np.ones(4, bool))
    mixed.logprobs[0, 3] = -np.inf  # item 0 has 3 choices
    assert mixed.num_choices.tolist() == [3, 4, 4, 4] and np.isclose(mixed.chance, (1 / 3 + 3 / 4) / 4)
