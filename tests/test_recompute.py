"""`verify --recompute`: a full re-certification without any cache, compared item by item with the certificate.

The forgery that re-derivation cannot see: flip one per-item prediction and rebuild every
statistic, guard finding and verdict from the edited vectors with the suite's own code,
then recompute body_sha256. `verify` re-derives it without a complaint; `--recompute`
runs the evaluations again and names the item.
"""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from conftest import forge, save_tiny_pair
from mansu_audit import verify
from mansu_audit.cache import NoCache
from mansu_audit.certify import certify
from mansu_audit.cli import main
from mansu_audit.desiderata import assess, cad_control_from_details, per_item_record
from mansu_audit.errors import InputError
from mansu_audit.policy import Policy
from mansu_audit.rederive import rederive
from mansu_audit.stats import Estimate
from mansu_audit.verification import compare_bodies, recertify
from test_cache import small_bundle
from test_forgery import _results_from_body, cad_hook

POLICY = Policy(bootstrap_replicates=200, seed=3)
FLIPPED = 3  # a forget_eval item the tiny candidate answers correctly


@pytest.fixture(scope="module")
def certified(tmp_path_factory, ref_tokenizer):
    root = save_tiny_pair(tmp_path_factory.mktemp("recompute"), ref_tokenizer)
    certify(root / "base", root / "cand", root / "bundle", quantizers=("int8",), policy=POLICY, cad=cad_hook,
            cache=NoCache(), out=root / "out")
    return root / "out" / "certificate.json"



def _flip_one_prediction_consistently(body):
    """Flip the candidate's unquantized prediction on one forget item, then rebuild everything derived."""
    forget, retain = _results_from_body(body, "forget_eval"), _results_from_body(body, "retain_eval")
    key = "candidate/unquantized"
    preds, answers = forget[key].predictions.copy(), forget[key].answers
    i = FLIPPED
    assert preds[i] == answers[i]  # the candidate knew this forget item: the forger hides it
    preds[i] = (preds[i] + 1) % int(forget[key].num_choices[i])
    forget[key] = dataclasses.replace(forget[key], predictions=preds)
    stats = body["statistics"]
    a = assess(forget, retain, list(body["quantizers"]), Policy.from_dict(body["policy"]["values"]),
               cad=Estimate.from_dict(stats["cad"]),
               cad_control=cad_control_from_details({"random_circuit_cad": stats["cad_control"]}))
    d = a.to_dict()
    body.update({"verdict": a.overall, "desiderata": d["verdicts"], "guard": d["guard"], "required": d["required"],
                 "per_item": per_item_record({"forget_eval": forget, "retain_eval": retain})})
    stats.update(d["statistics"])


def test_recompute_of_an_honest_certificate_matches(certified, capsys):
    assert "consistency" in json.loads(certified.read_text())["body"]  # re-run too, and compared
    assert main(["verify", str(certified), "--recompute", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "a full re-computation (no cache) gives the same per-item predictions" in out
    assert "note: CAD (S) not recomputed" in out


def test_recompute_names_a_consistently_forged_prediction(certified, tmp_path, capsys):
    forged, body = forge(certified, _flip_one_prediction_consistently, tmp_path)
    item = body["per_item"]["forget_eval"]["ids"][FLIPPED]
    assert rederive(body) == []  # re-derivation alone cannot see it ...
    assert main(["verify", str(forged)]) == 0
    capsys.readouterr()
    assert main(["verify", str(forged), "--recompute", "--quiet"]) == 1  # ... the re-run can
    out = capsys.readouterr().out
    line = f"predictions differ: split forget_eval, variant unquantized, model candidate: 1 of 24 items (first: {item})"
    assert f"RECOMPUTE MISMATCH: {line}" in out, out
    assert "RECOMPUTE MISMATCH: statistics.forget_eval.acc[candidate/unquantized]" in out
    assert sum("predictions differ" in x for x in out.splitlines()) == 1  # nothing else was touched


def test_compare_bodies_names_verdicts_and_sections(certified):
    body = json.loads(certified.read_text())["body"]
    assert compare_bodies(body, body) == []
    other = copy.deepcopy(body)
    other["verdict"] = "PASS" if body["verdict"] != "PASS" else "FAIL"
    other["desiderata"]["R"]["verdict"] = "INCONCLUSIVE" if body["desiderata"]["R"]["verdict"] != "INCONCLUSIVE" \
        else "FAIL"
    other["quantizers"]["int8"]["settings"]["bits"] = 3
    found = compare_bodies(body, other)
    assert any(x.startswith("verdict: recorded") for x in found)
    assert any(x.startswith("desiderata.R.verdict") for x in found)
    assert any(x.startswith("quantizers.int8.settings.bits") for x in found), found


def test_inputs_that_cannot_be_rerun_are_one_line(certified, tmp_path, capsys):
    body = json.loads(certified.read_text())["body"]
    gone = copy.deepcopy(body)
    gone["models"]["candidate"]["path"] = str(tmp_path / "nowhere")
    with pytest.raises(InputError, match="candidate model recorded at .* is missing; pass --candidate"):
        recertify(gone)
    memory = copy.deepcopy(body)
    memory["models"]["base"]["path"] = None
    with pytest.raises(InputError, match="base was certified as an in-memory model"):
        recertify(memory)
    artifact = copy.deepcopy(body)
    artifact["quantizers"]["q4"] = {"settings": {"kind": "artifact", "artifact": "m.Q4_K_M.gguf"}}
    with pytest.raises(InputError, match="pass --quantized-artifact q4=PATH"):
        recertify(artifact)
    oracle = copy.deepcopy(body)
    oracle["recovery"] = {"oracle": {"statistics": {}}}
    with pytest.raises(InputError, match="pass --oracle MODEL"):
        recertify(oracle)
    forged, _ = forge(certified, lambda b: b["models"]["base"].update(path=None), tmp_path)
    assert main(["verify", str(forged), "--recompute", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in-memory model" in err[0], err
    assert main(["verify", str(certified), "--oracle", "x"]) == 2
    assert capsys.readouterr().err.strip() == "mansu-audit: error: --oracle needs --recompute"


def test_python_api_recompute(certified):
    result = verify(certified, recompute=True)
    assert result.ok and result.recomputed and result.mismatches == [] and result.signature.startswith("signature")
    assert result.to_dict()["ok"] is True


def test_recompute_reruns_the_relearning_attack(tmp_path, ref_tokenizer):
    """A certificate carrying K: the attack runs again (same seeded split and budget) and K's held-out
    vectors and statistics match."""
    save_tiny_pair(tmp_path, ref_tokenizer)
    small_bundle(tmp_path / "bundle", keep_attack=True)  # the same items, with a forget_attack split
    cert = certify(tmp_path / "base", tmp_path / "cand", tmp_path / "bundle", quantizers=("int8",), policy=POLICY,
                   cad=None, cache=NoCache(), out=tmp_path / "out", consistency="skip")
    assert "relearn_heldout" in cert.body["per_item"] and "recovery" in cert.body
    result = verify(tmp_path / "out" / "certificate.json", recompute=True)
    assert result.ok, result.mismatches
    assert result.notes == ["CAD (S) was not computed in the certificate; nothing to compare"]


def test_recompute_cad_runs_eap_ig_again_and_compares_it(tmp_path, ref_tokenizer):
    """With recompute_cad the bundled EAP-IG + CAD runs again: an honest S matches, a moved CAD is named."""
    save_tiny_pair(tmp_path, ref_tokenizer)
    certify(tmp_path / "base", tmp_path / "cand", tmp_path / "bundle", quantizers=("int8",), policy=POLICY,
            cad="auto", cache=NoCache(), out=tmp_path / "out", consistency="skip")
    honest = verify(tmp_path / "out" / "certificate.json", recompute=True, recompute_cad=True)
    assert honest.ok and honest.notes == ["CAD (S) recomputed with the bundled EAP-IG and compared"]

    def move_cad(body):
        body["statistics"]["cad"]["point"] += 0.01
        body["desiderata"]["S"]["estimate"]["point"] += 0.01

    forged, _ = forge(tmp_path / "out" / "certificate.json", move_cad, tmp_path)
    assert not any(m.startswith("statistics.cad:") for m in verify(forged, recompute=True).mismatches)  # as given
    found = verify(forged, recompute=True, recompute_cad=True).mismatches
    assert any(m.startswith("statistics.cad: recorded") for m in found), found


def test_recompute_decides_s_as_the_recorded_suite_did(certified, monkeypatch):
    """S's ceiling rule is new in 0.4.0: `verify` re-derives a body and `--recompute` re-certifies it with the rule
    its recorded suite version used, so certificates written before it keep verifying."""
    from mansu_audit import verification
    from mansu_audit.rederive import ceiling_rule_applies

    body = json.loads(certified.read_text())["body"]
    old = copy.deepcopy(body)
    old["suite"]["version"] = "0.3.0"
    assert ceiling_rule_applies(body) and not ceiling_rule_applies(old)
    seen = []

    def fake(*args, s_ceiling=True, **kwargs):
        seen.append(s_ceiling)
        raise InputError("stop here")

    monkeypatch.setattr(verification, "certify", fake)
    for b in (body, old):
        with pytest.raises(InputError, match="stop here"):
            recertify(b)
    assert seen == [True, False]
