"""F under a second formulation (`mansu_audit.crosscheck`): the rule, which formulation, the body section, and
`verify` re-deriving it."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from conftest import small_bundle
from mansu_audit.certificate import body_sha256
from mansu_audit.certify import certify
from mansu_audit.crosscheck import BASE_KEY, CAND_KEY, cross_scoring_for, cross_statistics
from mansu_audit.errors import InputError
from mansu_audit.loading import load_model
from mansu_audit.policy import Policy
from mansu_audit.rederive import rederive
from mansu_audit.stats import Estimate
from mansu_audit.verdicts import FAIL, INCONCLUSIVE, PASS, Verdict, cross_f_verdict, decide

POLICY = Policy(bootstrap_replicates=300)


def _est(point: float, low: float, high: float) -> Estimate:
    return Estimate(point, low, high, 400, 300, 0, 0.95)


def _cross(base: float, cand: float, half_width: float = 0.03) -> dict:
    d = base - cand
    return {f"acc[{BASE_KEY}]": _est(base, base - half_width, base + half_width),
            f"acc[{CAND_KEY}]": _est(cand, cand - half_width, cand + half_width),
            "D_F": _est(d, d - half_width, d + half_width)}


F_PASS = Verdict("F", PASS, "D_F", _est(0.7, 0.65, 0.75), 0.1, "KR = 0.9")


def test_f_takes_the_worse_formulation_when_the_base_knows_the_facts_there():
    # the letter-suppressed panel model: forgets letters, still states 0.877 of the facts in cloze form
    capped = cross_f_verdict(F_PASS, _cross(0.917, 0.877), POLICY, 0.25, "choice-text")
    assert capped.verdict == FAIL and capped.estimate == F_PASS.estimate and capped.statistic == "D_F"
    assert capped.reason.startswith("scored choice-text, the forget facts are still stated: D_F = +0.040")
    assert capped.reason.endswith("; KR = 0.9")
    # a drop that might or might not clear min_forget_drop: at most INCONCLUSIVE
    assert cross_f_verdict(F_PASS, _cross(0.917, 0.80, 0.05), POLICY, 0.25, "choice-text").verdict == INCONCLUSIVE
    # the oracle: gone in both formulations, F stays PASS and its reason is untouched
    assert cross_f_verdict(F_PASS, _cross(0.917, 0.186), POLICY, 0.25, "choice-text") == F_PASS
    # never better than the first formulation
    f_fail = Verdict("F", FAIL, "D_F", _est(0.0, -0.01, 0.01), 0.1)
    assert cross_f_verdict(f_fail, _cross(0.917, 0.186), POLICY, 0.25, "choice-text") == f_fail


def test_a_formulation_the_base_does_not_know_proves_nothing():
    # the reference in "Question: ...\nAnswer:" form answers 0.31 (chance 0.25): not informative
    assert cross_f_verdict(F_PASS, _cross(0.31, 0.30), POLICY, 0.25, "choice-text") == F_PASS
    # a weakly known formulation (base 0.319 [0.307, 0.330]) cannot show a drop of min_forget_drop: a guessing
    # candidate (a model that never knew the facts) is not failed by it
    weak = {**_cross(0.319, 0.257, 0.012), "D_F": _est(0.062, 0.046, 0.078)}
    assert cross_f_verdict(F_PASS, weak, POLICY, 0.25, "choice-text") == F_PASS


def test_below_chance_in_the_second_formulation_fails_f():
    # avoiding the right statement is knowledge too, informative or not (the bound of F's own rule)
    avoid = _cross(0.31, 0.08)
    capped = cross_f_verdict(F_PASS, avoid, POLICY, 0.25, "choice-text")
    assert capped.verdict == FAIL and "below chance 0.25 - 0.05" in capped.reason
    assert cross_f_verdict(F_PASS, _cross(0.31, 0.215), POLICY, 0.25, "choice-text") == F_PASS  # within the margin
    # under letter scoring the bound is strict, as in F itself
    assert cross_f_verdict(F_PASS, _cross(0.9, 0.20, 0.02), POLICY, 0.25, "letter").verdict == FAIL


def test_a_candidate_at_chance_in_the_second_formulation_keeps_f():
    # D_F there would pass anyway; at chance the candidate shows no knowledge in that form
    assert cross_f_verdict(F_PASS, _cross(0.917, 0.27), POLICY, 0.25, "choice-text") == F_PASS


def test_decide_applies_the_second_formulation_to_f_only():
    forget = {"D_F": F_PASS.estimate, "KR": _est(0.9, 0.8, 1.0)}
    retain = {"D_R": _est(0.0, -0.01, 0.01)}
    plain = decide(forget, retain, (), POLICY, chance=0.25)
    crossed = decide(forget, retain, (), POLICY, chance=0.25, cross=_cross(0.917, 0.877), cross_scoring="choice-text")
    assert plain.verdicts["F"].verdict == PASS and crossed.verdicts["F"].verdict == FAIL
    assert crossed.verdicts["R"] == plain.verdicts["R"] and crossed.overall == FAIL


def test_which_second_formulation(tmp_path):
    bundle = small_bundle(tmp_path / "b", n=8)  # synthhazard items carry cloze statements
    assert cross_scoring_for("letter", bundle) == "choice-text"
    assert cross_scoring_for("choice-text", bundle) == "letter"
    assert cross_scoring_for("choice-text-norm", bundle) == "letter"
    path = tmp_path / "b" / "forget_eval.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0].pop("cloze")  # one item without a statement: the question form is not a statement of the fact
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from mansu_audit.data import load_bundle

    assert cross_scoring_for("letter", load_bundle(tmp_path / "b")) is None


def test_cross_statistics_are_paired():
    answers = np.array([0, 1, 2, 3] * 25)
    preds = {BASE_KEY: answers.copy(), CAND_KEY: np.where(np.arange(100) < 30, answers, (answers + 1) % 4)}
    stats = cross_statistics(answers, preds, POLICY)
    assert stats[f"acc[{BASE_KEY}]"].point == 1.0 and stats[f"acc[{CAND_KEY}]"].point == pytest.approx(0.3)
    assert stats["D_F"].point == pytest.approx(0.7) and stats["D_F"].low < 0.7 < stats["D_F"].high


@pytest.fixture(scope="module")
def reference_self(tmp_path_factory):
    """reference certified against itself on 60 items: the second formulation is informative, F_x FAILs."""
    bundle = small_bundle(tmp_path_factory.mktemp("x") / "bundle", n=60)
    ref = load_model("reference")
    return bundle, certify(ref, ref, bundle, quantizers=("int8",), policy=POLICY, cad="skip", relearn="skip",
                           consistency="skip")


def test_certificate_records_and_verify_rederives_the_second_formulation(reference_self):
    _, cert = reference_self
    x = cert.body["cross_scoring"]
    assert x["scoring"] == "choice-text" and x["split"] == "forget_eval" and x["informative"] is True
    assert x["verdict_F"] == FAIL and x["statistics"]["D_F"]["point"] == 0.0
    assert x["statistics"][f"acc[{BASE_KEY}]"]["low"] > 0.5  # the reference states the facts
    assert len(x["per_item"]["predictions"][CAND_KEY]) == 60
    assert cert.verdicts["F"].verdict == FAIL and rederive(cert.body) == []
    # one flipped prediction, body hash recomputed: named by re-derivation
    forged = copy.deepcopy(cert.body)
    p = forged["cross_scoring"]["per_item"]["predictions"][CAND_KEY]
    p[0] = (p[0] + 1) % 4
    assert body_sha256(forged) != body_sha256(cert.body)
    assert any(m.startswith("cross_scoring.statistics.") for m in rederive(forged))
    # vectors of other items than forget_eval's
    forged = copy.deepcopy(cert.body)
    forged["cross_scoring"]["per_item"]["ids"][0] = "other-item"
    assert any("differ from per_item.forget_eval" in m for m in rederive(forged))
    # a recorded verdict_F that does not follow from the vectors
    forged = copy.deepcopy(cert.body)
    forged["cross_scoring"]["verdict_F"] = PASS
    assert "cross_scoring.verdict_F: recorded PASS, re-derived FAIL" in rederive(forged)


def test_on_needs_a_second_formulation_and_skip_leaves_it_out(reference_self, tmp_path):
    bundle, _ = reference_self
    ref = load_model("reference")
    skipped = certify(ref, ref, bundle, quantizers=(), policy=POLICY, cad="skip", relearn="skip",
                      consistency="skip", cross_scoring="skip")
    assert skipped.body["cross_scoring"] == {"requested": "skip", "scoring": None,
                                             "reason": "skipped (cross_scoring=skip)"}
    assert rederive(skipped.body) == []
    deleted = copy.deepcopy(skipped.body)
    del deleted["cross_scoring"]  # a forger deleting the section (hash recomputed) is named
    assert any(m.startswith("cross_scoring: missing") for m in rederive(deleted))
    older = copy.deepcopy(deleted)
    older["suite"]["version"] = "0.2.0"  # a body of a suite before the second formulation: re-derived without it
    assert rederive(older) == []
    path = tmp_path / "b"
    small_bundle(path, n=8)
    rows = [json.loads(line) for line in (path / "forget_eval.jsonl").read_text().splitlines()]
    (path / "forget_eval.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "cloze"}) + "\n"
                                                    for r in rows))
    with pytest.raises(InputError, match="no second formulation"):
        certify(ref, ref, path, quantizers=(), policy=POLICY, cad="skip", relearn="skip", consistency="skip",
                cross_scoring="on")
    with pytest.raises(InputError, match="cross_scoring must be"):
        certify(ref, ref, path, quantizers=(), cross_scoring="sometimes")


def test_second_formulation_evaluations_are_cached(reference_self, tmp_path, monkeypatch):
    import importlib

    from mansu_audit.cache import ResultCache

    certify_module = importlib.import_module("mansu_audit.certify")  # the module, not the function

    bundle, cert = reference_self
    ref = load_model("reference")
    cache = ResultCache(tmp_path / "cache")
    first = certify(ref, ref, bundle, quantizers=(), policy=POLICY, cad="skip", relearn="skip", consistency="skip",
                    cache=cache)
    monkeypatch.setattr(certify_module, "evaluate_mcq", lambda *a, **k: pytest.fail("evaluated again"))
    again = certify(ref, ref, bundle, quantizers=(), policy=POLICY, cad="skip", relearn="skip", consistency="skip",
                    cache=cache)
    assert again.body == first.body and again.body["cross_scoring"] == cert.body["cross_scoring"]
