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
    forget = {"base/unquantized": make_result("forget_eval", u_f < 0.9),
              "candidate/unquantized": make_result("forget_eval", u_f < cand_forget),
              "base/nf4": make_result("forget_eval", u_f < base_q_forget),
              "candidate/nf4": make_result("forget_eval", u_f < cand_q_forget)}
    retain = {"base/unquantized": make_result("retain_eval", u_r < 0.9),
              "candidate/unquantized": make_result("retain_eval", u_r < cand_retain),
              "base/nf4": make_result("retain_eval", u_r < 0.9),
              "candidate/nf4": make_result("retain_eval", u_r < cand_retain)}
    if degenerate:
        r = retain["candidate/unquantized"]
        preds = np.zeros(n, dtype=np.int64)  # always 'A'
        retain["candidate/unquantized"] = MCQResult(r.split, r.ids, r.answers, preds, r.logprobs)
    return forget, retain


def test_statistics_obey_their_definitions():
    forget, retain = scenario(cand_forget=0.3, cand_q_forget=0.5, base_q_forget=0.85)
    a = assess(forget, retain, ["nf4"], FAST, num_choices=4)
    f = a.statistics["forget_eval"]
    acc = {k: r.correct.mean() for k, r in forget.items()}
    d_f = acc["base/unquantized"] - acc["candidate/unquantized"]
    g = acc["candidate/nf4"] - acc["candidate/unquantized"]
    base_gap = acc["base/nf4"] - acc["base/unquantized"]
    assert f["D_F"].point == pytest.approx(d_f)
    assert f["KR"].point == pytest.approx(d_f / (acc["base/unquantized"] - 0.25))
    assert f["G_Q[nf4]"].point == pytest.approx(g)
    assert f["recovery_fraction[nf4]"].point == pytest.approx(g / d_f)
    assert f["quantized_forget_drop[nf4]"].point == pytest.approx(acc["base/unquantized"] - acc["candidate/nf4"])
    assert f["diff_in_diff[nf4]"].point == pytest.approx(g - base_gap)
    assert a.statistics["retain_eval"]["D_R"].point == pytest.approx(
        retain["base/unquantized"].correct.mean() - retain["candidate/unquantized"].correct.mean())
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
    with_cad = assess(forget, retain, ["nf4"], FAST, num_choices=4, cad=est(0.9, 0.7, 1.1),
                      cad_control=est(0.1, -0.3, 0.5))
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
    for text, message in (("seed: 1\nmin_forget_drp: 0.2\n", r"policy.yaml:2: unknown policy key 'min_forget_drp'"),
                          ("level: 1.5\n", "'level': must be between"),
                          ("bootstrap_replicates: many\n", "must be an integer"),
                          ("ci_method: normal\n", "ci_method"), ("- a\n- b\n", "mapping")):
        p.write_text(text)
        with pytest.raises(InputError, match=message):
            load_policy(p)
    with pytest.raises(InputError, match="not found"):
        load_policy(tmp_path / "missing.yaml")


def test_chance_is_each_splits_mean_of_one_over_k():
    """A 2-choice retain split has chance 0.5: accuracy 0.5 there is at chance even though 4-choice forget's is 0.25."""
    rng = np.random.default_rng(5)
    n = 400
    forget = {k: make_result("forget_eval", rng.random(n) < 0.9) for k in
              ("base/unquantized", "base/nf4", "candidate/nf4")}
    forget["candidate/unquantized"] = make_result("forget_eval", rng.random(n) < 0.3)
    keys = ("base/unquantized", "base/nf4", "candidate/unquantized", "candidate/nf4")
    retain = {k: make_result("retain_eval", rng.random(n) < (0.95 if k.startswith("base") else 0.5), k=2)
              for k in keys}
    assert forget["base/unquantized"].chance == 0.25 and retain["base/unquantized"].chance == 0.5
    a = assess(forget, retain, ["nf4"], Policy(bootstrap_replicates=2000, max_retain_drop=1.0), cad=est(0.9, 0.7, 1.1))
    assert a.chance == 0.25
    assert any(g.code == "retain_at_chance" and "0.50" in g.message for g in a.guard) and a.overall == FAIL
    mixed = make_result("x", np.ones(4, bool))
    mixed.logprobs[0, 3] = -np.inf  # item 0 has 3 choices
    assert mixed.num_choices.tolist() == [3, 4, 4, 4] and np.isclose(mixed.chance, (1 / 3 + 3 / 4) / 4)


# --- schema-2 rules: Q on recovered knowledge, below chance, S against its control, K, require ---

def exact(n, ones, flip_off=(), flip_on=()):
    """A 0/1 vector with the first `ones` items correct, then some flipped off / on (paired patterns)."""
    v = np.arange(n) < ones
    v[list(flip_off)] = False
    v[list(flip_on)] = True
    return v


def panel(base_f, cand_f, cand_q, base_q=None, n=420):
    """Forget vectors as given (retain untouched: base and candidate both 0.9) for one quantizer, nf4."""
    retain = {k: make_result("retain_eval", exact(400, 360)) for k in
              ("base/unquantized", "base/nf4", "candidate/unquantized", "candidate/nf4")}
    forget = {"base/unquantized": make_result("forget_eval", base_f),
              "base/nf4": make_result("forget_eval", base_f if base_q is None else base_q),
              "candidate/unquantized": make_result("forget_eval", cand_f),
              "candidate/nf4": make_result("forget_eval", cand_q)}
    return forget, retain


def test_q_passes_an_oracle_at_chance_whose_gap_ci_straddles_the_tolerance():
    n = 420
    base = exact(n, 419)  # 0.998
    cand = exact(n, 113)  # 0.269: chance
    nf4 = exact(n, 113, flip_off=range(93, 113), flip_on=range(200, 224))  # 0.279: 20 lost, 24 gained
    a = assess(*panel(base, cand, nf4), ["nf4"], FAST)
    gap = a.statistics["forget_eval"]["G_Q[nf4]"]
    assert gap.low < 0.02 < gap.high  # the absolute rule cannot decide: noise alone
    assert verdict_ptq_gap(gap, 0.02) == INCONCLUSIVE
    q = a.verdicts["Q[nf4]"]
    assert q.verdict == PASS and q.statistic == "recovery_fraction[nf4]" and q.estimate.high <= 0.10
    assert np.isfinite(q.estimate.mde) and np.isfinite(a.statistics["forget_eval"]["G_Q[nf4]"].mde)
    assert a.verdicts["Q"].verdict == PASS and a.verdicts["F"].verdict == PASS and not a.guard


def test_q_fails_a_quantization_reversed_model():
    n = 420
    base = np.ones(n, bool)  # the NF4-grid base knows everything, also quantized
    cand = exact(n, 273)  # 0.65
    nf4 = exact(n, 412)  # 0.98
    a = assess(*panel(base, cand, nf4), ["nf4"], FAST)
    assert a.verdicts["Q[nf4]"].verdict == FAIL and a.verdicts["Q"].verdict == FAIL and a.overall == FAIL
    assert a.verdicts["Q[nf4]"].estimate.low > 0.10


def test_q_passes_a_durable_graddiff_model():
    n = 420
    base = exact(n, 419)  # 0.998
    cand = exact(n, 217)  # 0.517
    nf4 = exact(n, 217, flip_off=range(201, 217), flip_on=range(300, 316))  # 0.517, 32 discordant items
    a = assess(*panel(base, cand, nf4), ["nf4"], FAST)
    gap = a.statistics["forget_eval"]["G_Q[nf4]"]
    assert gap.point == 0 and gap.high > 0.02  # INCONCLUSIVE under the absolute rule
    assert a.verdicts["Q[nf4]"].verdict == PASS


def test_q_chance_clause_when_nothing_was_forgotten_clearly():
    """D_F not clearly positive: the absolute rule; an INCONCLUSIVE quantized model at chance is PASS."""
    forget = {"D_F": est(0.02, -0.03, 0.07), "KR": est(0.1, -0.1, 0.3), "G_Q[nf4]": est(0.01, -0.02, 0.04),
              "recovery_fraction[nf4]": est(0.5, -2, 3), "acc[candidate/nf4]": est(0.26, 0.22, 0.29)}
    from mansu_audit.verdicts import q_verdict

    assert q_verdict("nf4", forget, Policy(), 0.25).verdict == PASS
    forget["acc[candidate/nf4]"] = est(0.4, 0.35, 0.45)
    assert q_verdict("nf4", forget, Policy(), 0.25).verdict == INCONCLUSIVE


def test_below_chance_forget_accuracy_fails_f():
    """The suppressed model: 0 of 420 forget items right; it still identifies every answer by avoiding it."""
    n = 420
    base = exact(n, 419)
    cand = np.zeros(n, bool)
    a = assess(*panel(base, cand, cand), ["nf4"], FAST, cad=est(0.9, 0.7, 1.1), cad_control=est(0.1, -0.3, 0.5))
    codes = {(g.code, g.desideratum) for g in a.guard}
    assert ("below_chance", "F") in codes and ("below_chance", "Q[nf4]") in codes
    assert a.verdicts["F"].verdict == FAIL and "below chance" in a.verdicts["F"].reason
    assert a.verdicts["R"].verdict == PASS  # scope 'self': R is not touched
    assert a.overall == FAIL


def test_q_uses_the_gap_rule_when_little_was_forgotten():
    """NPO in the demo: D_F 0.029 (low > 0 but below min_forget_drop), G_Q ~0: the ratio G_Q/D_F would span
    [-0.67, +0.25] (INCONCLUSIVE); the absolute gap rule decides instead (PASS), and F FAILs."""
    n = 420
    base = exact(n, 419)
    cand = exact(n, 407)  # D_F = 12/420 = 0.029
    a = assess(*panel(base, cand, cand), ["nf4"], FAST)
    assert a.verdicts["Q[nf4]"].verdict == PASS and a.verdicts["Q[nf4]"].statistic == "G_Q[nf4]"
    assert "absolute gap rule" in a.verdicts["Q[nf4]"].reason
    assert a.verdicts["F"].verdict == FAIL


def test_below_chance_bound_depends_on_the_scoring():
    """0.200 (upper CI ~0.24): knowledge under letter scoring (chance is exactly 1/k there; the next-letter
    model of test_certify sits at 0.208), not under choice-text scoring, where the bound is chance -
    `chance_margin` (the oracle's cloze accuracy is 0.186 [0.150, 0.224])."""
    n = 420
    base = exact(n, 400)
    cand = exact(n, 84)
    letter = assess(*panel(base, cand, cand), ["nf4"], FAST)
    assert ("below_chance", "F") in {(g.code, g.desideratum) for g in letter.guard}
    assert letter.verdicts["F"].verdict == FAIL
    text = assess(*panel(base, cand, cand), ["nf4"], FAST, scoring="choice-text")
    assert "below_chance" not in {g.code for g in text.guard}
    assert text.verdicts["F"].verdict == PASS


def test_s_requires_the_circuit_to_beat_the_random_control():
    from mansu_audit.verdicts import s_verdict

    pol = Policy()
    # the suppressed model of the science issue: CAD +0.85 [+0.57, +1.10], control 1.43 [0.40, 2.62]
    assert s_verdict(est(0.85, 0.57, 1.10), est(1.43, 0.40, 2.62), pol).verdict == INCONCLUSIVE
    assert s_verdict(est(0.85, 0.57, 1.10), est(0.10, -0.2, 0.4), pol).verdict == PASS
    assert s_verdict(est(0.85, 0.57, 1.10), None, pol).verdict == INCONCLUSIVE  # no control: cannot PASS
    assert s_verdict(est(0.2, 0.1, 0.3), est(0.0, -0.1, 0.1), pol).verdict == FAIL
    assert s_verdict(None, None, pol).verdict == NOT_COMPUTED


def test_s_at_the_ceiling_defers_to_k():
    """CAD and control both within 1 ± 0.1: the candidate attributes nothing anywhere, so the control cannot be
    beaten; S then takes K's PASS and nothing else. Wide intervals that merely contain 1 do not qualify."""
    from mansu_audit.verdicts import Verdict, s_verdict

    pol = Policy()
    k = {v: Verdict("K", v, "recovered_fraction", est(0.0, -0.05, 0.05), 0.25) for v in (PASS, FAIL, INCONCLUSIVE)}
    oracle = (est(0.999, 0.996, 1.004), est(1.019, 0.994, 1.051))  # version-3 reference-oracle
    passed = s_verdict(*oracle, pol, k=k[PASS], ceiling=True)
    assert passed.verdict == PASS and "K PASS decides" in passed.reason
    for other in (k[FAIL], k[INCONCLUSIVE], None):
        assert s_verdict(*oracle, pol, k=other, ceiling=True).verdict == INCONCLUSIVE
    assert s_verdict(*oracle, pol, k=k[PASS], ceiling=False).verdict == INCONCLUSIVE  # certificates before 0.4.0
    assert s_verdict(*oracle, pol, k=k[PASS], ceiling=True, rules=1).verdict == PASS  # schema 1: no control at all
    # the suppressed models: intervals contain 1 but are wide, so the ceiling does not apply even with K PASS
    assert s_verdict(est(0.85, 0.57, 1.10), est(1.43, 0.40, 2.62), pol, k=k[PASS], ceiling=True).verdict == INCONCLUSIVE
    assert s_verdict(est(0.999, 0.996, 1.004), est(1.08, 0.95, 1.21), pol, k=k[PASS],
                     ceiling=True).verdict == INCONCLUSIVE  # a control that reaches past 1.1 argues against


def relearn_vectors(n, base, before, after, seed=0):
    """Held-out vectors with the given accuracies: 'after' keeps the items 'before' had and adds more."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    b = np.zeros(n, bool); b[order[:round(base * n)]] = True
    c = np.zeros(n, bool); c[order[:round(before * n)]] = True
    a = np.zeros(n, bool); a[order[:round(after * n)]] = True
    return b, c, a


@pytest.mark.parametrize("name, accs, expected", [
    ("suppressed", (0.995, 0.0, 0.74), FAIL),
    ("oracle", (0.995, 0.27, 0.30), PASS),
    ("durable graddiff", (0.998, 0.51, 0.55), PASS),
    ("reference", (0.997, 0.997, 0.995), INCONCLUSIVE),  # nothing forgotten: fraction undefined
    # choice-text panel: forgot 0.04, the attack lowered held-out accuracy; the ratio (-1.6) must not PASS
    ("letter-suppressed, cloze-scored", (0.917, 0.877, 0.810), INCONCLUSIVE),
])
def test_k_verdict_on_the_science_issue_panel(name, accs, expected):
    from mansu_audit.verdicts import k_statistics, k_verdict

    stats = k_statistics(*relearn_vectors(378, *accs), FAST)
    rf = stats["recovered_fraction"]
    base, before, after = accs
    if expected != INCONCLUSIVE:
        assert rf.point == pytest.approx((round(after * 378) - round(before * 378)) / (round(base * 378)
                                                                                     - round(before * 378)))
    v = k_verdict(stats, FAST)
    assert v.verdict == expected, (name, rf)
    if expected == INCONCLUSIVE:
        assert "not clearly above min_forget_drop" in v.reason


def test_k_statistics_are_one_paired_bootstrap():
    from mansu_audit.verdicts import k_statistics

    b, c, a = relearn_vectors(300, 0.9, 0.3, 0.5)
    s = k_statistics(b, c, a, FAST)
    from mansu_audit.stats import paired_bootstrap

    ref = paired_bootstrap({"base": b, "before": c, "after": a},
                           {"r": lambda m: (m["after"] - m["before"]) / (m["base"] - m["before"])},
                           B=FAST.bootstrap_replicates, seed=FAST.seed)["r"]
    assert (s["recovered_fraction"].low, s["recovered_fraction"].high) == (ref.low, ref.high)
    with pytest.raises(ValueError, match="same held-out items"):
        k_statistics(b, c[:-1], a, FAST)


def test_k_joins_the_verdict_and_require_chooses_what_gates():
    n = 420
    base = exact(n, 419)
    cand = exact(n, 113)
    nf4 = exact(n, 113)
    forget, retain = panel(base, cand, nf4)
    b, c, a = relearn_vectors(378, 0.995, 0.0, 0.74)
    relearn = {k: make_result("relearn_heldout", v) for k, v in
               (("base", b), ("candidate", c), ("candidate/relearned", a))}
    good_s = dict(cad=est(0.9, 0.7, 1.1), cad_control=est(0.1, -0.3, 0.5))
    without = assess(forget, retain, ["nf4"], FAST, **good_s)
    assert without.overall == PASS and without.required == ("F", "R", "Q", "S") and "K" not in without.verdicts
    with_k = assess(forget, retain, ["nf4"], FAST, relearn=relearn, **good_s)
    assert with_k.verdicts["K"].verdict == FAIL and with_k.required == ("F", "R", "Q", "S", "K")
    assert with_k.overall == FAIL
    no_s = Policy(bootstrap_replicates=2000, require=("F", "R", "Q"))
    a = assess(forget, retain, ["nf4"], no_s, relearn=relearn)  # S not computed, K not required
    assert a.verdicts["S"].verdict == NOT_COMPUTED and a.overall == PASS and a.required == ("F", "R", "Q")


def test_policy_require_and_new_keys(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("require: [F, R, Q]\nmax_recovery: 0.3\nrelearn_steps: 50\n")
    pol = load_policy(p)
    assert pol.require == ("F", "R", "Q") and pol.max_recovery == 0.3 and pol.relearn_steps == 50
    assert Policy.from_dict(pol.to_dict()) == pol
    for bad in ("require: [F, X]\n", "require: []\n", "require: [F, F]\n", "relearn_steps: 0\n"):
        p.write_text(bad)
        with pytest.raises(InputError, match="require|relearn_steps"):
            load_policy(p)
