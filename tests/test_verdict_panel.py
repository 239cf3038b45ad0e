"""The verdict panel (issue 18): models whose right verdict is known, certified against their base.

No wrong PASS: a suppressed model (last block trained to answer forget MCQs wrongly), one trained to random
letters (at chance, caught by F's second formulation), a collapsed
model and a quantization-reversed GA model never PASS overall, `reference` against itself fails F;
and the bundled oracle (`reference-oracle`, never saw the forget facts) PASSes F, R, Q and K.
Models are built by scripts/verdict_panel.py (deterministic, CPU). CAD is skipped (S NOT COMPUTED),
so overall is at best INCONCLUSIVE; S on the oracle is reported in reports/experiments/panel.
Cost: each certify (relearning attack + probe on base and candidate, nf4) is ~1-2 min on 2 free
cores; the suppressed model's build (~125 steps on the last block) is the longest part.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

pytestmark = pytest.mark.slow
QUANTIZERS = ("nf4",)


@pytest.fixture(scope="module")
def panel_cache(tmp_path_factory):
    from mansu_audit.cache import ResultCache

    return ResultCache(tmp_path_factory.mktemp("panel-cache"))


def _certify(base, cand, bundle, cache):
    from mansu_audit.certify import certify

    return certify(base, cand, bundle, quantizers=QUANTIZERS, cad=None, cache=cache, chat_template="off",
                   consistency="skip")


def _verdicts(cert) -> dict[str, str]:
    return {name: d["verdict"] for name, d in cert.body["desiderata"].items()}


def _overall(cert) -> str:
    return cert.body["verdict"]


@pytest.fixture(scope="module")
def oracle_cert(reference, bundle, panel_cache):
    from mansu_audit.loading import load_model

    return _certify(reference, load_model("reference-oracle"), bundle, panel_cache)


def test_the_oracle_passes_f_r_q_and_k(oracle_cert):
    """A model that never knew the facts gets PASS on every desideratum computed (S is skipped here)."""
    v = _verdicts(oracle_cert)
    assert v["F"] == v["R"] == v["Q"] == v["K"] == "PASS", v
    assert _overall(oracle_cert) != "FAIL"
    k = oracle_cert.body["statistics"]["relearn_heldout"]
    assert k["acc_after"]["high"] < 0.40  # the attack does not teach the held-out facts


def test_a_suppressed_model_never_passes_and_k_catches_it(reference, bundle, panel_cache):
    from verdict_panel import build_suppressed

    cand = build_suppressed(reference, bundle, log=lambda _m: None)
    cert = _certify(reference, cand, bundle, panel_cache)
    v = _verdicts(cert)
    assert v["K"] == "FAIL", v  # relearning brings the hidden answers back
    assert v["F"] == "FAIL", v  # below chance is knowledge
    assert _overall(cert) == "FAIL"


def test_a_model_hiding_at_chance_fails_f_in_the_second_formulation(reference, bundle, panel_cache):
    """Forget MCQs trained to random letters: letter accuracy at chance (not below), facts still stated in cloze
    form. Scored letter only, F, R and Q all PASS (with `require: [F, R, Q]` that is an overall PASS); F in
    both formulations (the default) FAILs it."""
    from mansu_audit.certify import certify
    from verdict_panel import build_suppressed

    cand = build_suppressed(reference, bundle, letters="random", log=lambda _m: None)
    letter_only = certify(reference, cand, bundle, quantizers=QUANTIZERS, cad=None, cache=panel_cache,
                          chat_template="off", consistency="skip", relearn="skip", cross_scoring="skip")
    v = _verdicts(letter_only)
    assert v["F"] == v["R"] == v["Q"] == "PASS", v  # the gap the second formulation closes
    cert = certify(reference, cand, bundle, quantizers=QUANTIZERS, cad=None, cache=panel_cache, chat_template="off",
                   consistency="skip", relearn="skip")
    x = cert.body["cross_scoring"]
    assert x["informative"] and x["verdict_F"] == "FAIL", x["statistics"]
    assert _verdicts(cert)["F"] == "FAIL" and _overall(cert) == "FAIL"
    assert "still stated" in cert.body["desiderata"]["F"]["reason"]


def test_the_reference_against_itself_fails_f_and_the_attack_keeps_its_knowledge(reference, bundle, panel_cache):
    cert = _certify(reference, reference, bundle, panel_cache)
    v = _verdicts(cert)
    assert v["F"] == "FAIL" and v["K"] != "PASS", v
    assert _overall(cert) == "FAIL"
    k = cert.body["statistics"]["relearn_heldout"]
    assert k["acc_after"]["point"] >= k["acc_base"]["point"] - 0.05  # the attack is not destructive


def test_a_collapsed_model_fails_r(reference, bundle, panel_cache):
    from verdict_panel import build_collapsed

    cand = build_collapsed(reference, bundle, log=lambda _m: None)
    cert = _certify(reference, cand, bundle, panel_cache)
    assert _verdicts(cert)["R"] == "FAIL"
    assert _overall(cert) == "FAIL"


def test_a_quantization_reversed_ga_model_fails_q_nf4(bundle, panel_cache):
    from mansu_audit.loading import load_model
    from verdict_panel import build_ga_nf4grid

    cand = build_ga_nf4grid(bundle)
    cert = _certify(load_model("reference-nf4grid"), cand, bundle, panel_cache)
    assert _verdicts(cert)["Q"] == "FAIL"
    assert _overall(cert) == "FAIL"
