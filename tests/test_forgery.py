"""Forgery: edit a certificate's body, recompute body_sha256 the way the suite does, and `verify` must name it.

`verify` re-derives every statistic, CI, guard finding and verdict from the body's own
per-item vectors and recorded policy (`mansu_audit.rederive`), so a consistent hash
no longer makes an edited certificate pass.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import pytest

from conftest import forge, save_tiny_pair
from mansu_audit.cache import NoCache
from mansu_audit.certificate import body_sha256
from mansu_audit.certify import certify
from mansu_audit.cli import main
from mansu_audit.policy import Policy
from mansu_audit.rederive import rederive
from mansu_audit.stats import Estimate
from mansu_audit.verdicts import GuardFinding, decide

POLICY = Policy(bootstrap_replicates=300, seed=5)


@dataclass
class FakeCAD:
    """What a CAD hook may return: the estimate for S and details with the random-circuit control."""

    cad: Estimate
    control: Estimate

    def to_dict(self):
        return {"cad": self.cad.to_dict(), "random_circuit_cad": self.control.to_dict()}


def cad_hook(base, candidate, bundle, policy):
    return FakeCAD(Estimate(0.9, 0.7, 1.1, 24, 300, 5, 0.95), Estimate(0.1, -0.2, 0.4, 24, 300, 5, 0.95))


@pytest.fixture(scope="module")
def certified(tmp_path_factory, ref_tokenizer):
    root = save_tiny_pair(tmp_path_factory.mktemp("forge"), ref_tokenizer)
    certify(root / "base", root / "cand", root / "bundle", quantizers=("int8",),
            policy=POLICY, cad=cad_hook, cache=NoCache(), out=root / "out")
    return root / "out" / "certificate.json"


def test_an_honest_certificate_rederives_exactly(certified, capsys):
    body = json.loads(certified.read_text())["body"]
    assert body["statistics"]["cad_control"]["point"] == 0.1
    assert body["required"] == ["F", "R", "Q", "S"] and body["unquantized"]["dtype"]["candidate"] == "float32"
    assert "candidate/unquantized" in body["per_item"]["forget_eval"]["predictions"]
    assert rederive(body) == []
    assert main(["verify", str(certified)]) == 0


def _flip_verdict(b):
    b["desiderata"]["R"]["verdict"] = "PASS" if b["desiderata"]["R"]["verdict"] != "PASS" else "FAIL"


def _overall_pass(b):
    b["verdict"] = "PASS"


def _move_ci(b):
    b["desiderata"]["F"]["estimate"]["low"] += 0.2
    b["statistics"]["forget_eval"]["D_F"]["low"] += 0.2


def _threshold(b):
    b["policy"]["values"]["min_forget_drop"] = 0.01
    b["desiderata"]["F"]["threshold"] = 0.01


def _threshold_with_policy_hash(b):
    """A careful forger also recomputes the policy's own hash; the verdicts then no longer follow."""
    b["policy"]["values"]["max_retain_drop"] = 0.9
    b["policy"]["sha256"] = Policy.from_dict(b["policy"]["values"]).sha256()


def _item_count(b):
    b["benchmark"]["splits"]["forget_eval"] = 420


def _estimate_n(b):
    for e in b["statistics"]["forget_eval"].values():
        e["n"] = 420


def _drop_quantizer(b):
    b["quantizers"] = {}


def _add_quantizer(b):
    b["quantizers"]["nf4"] = {"settings": {}}


def _drop_item(b):
    per = b["per_item"]["retain_eval"]
    per["ids"].pop()
    per["answers"].pop()
    per["num_choices"].pop()
    for v in per["predictions"].values():
        v.pop()


def _guard_removed(b):
    b["guard"] = []


def _cad_control(b):
    b["statistics"]["cad_control"]["point"] = 2.0


@pytest.mark.parametrize("edit, expected", [
    (_flip_verdict, "desiderata.R.verdict"),
    (_overall_pass, "verdict: recorded PASS"),
    (_move_ci, "statistics.forget_eval.D_F.low"),
    (_threshold, "policy.values: do not match policy.sha256"),
    (_threshold_with_policy_hash, "desiderata.R.threshold"),
    (_item_count, "benchmark.splits.forget_eval: recorded 420"),
    (_estimate_n, "statistics.forget_eval.D_F.n"),
    (_drop_quantizer, "predictions for"),
    (_add_quantizer, "predictions for"),
    (_drop_item, "benchmark.splits.retain_eval"),
    (_guard_removed, "guard: recorded []"),
    (_cad_control, "desiderata.S.reason"),
])
def test_verify_names_each_forgery(certified, tmp_path, capsys, edit, expected):
    forged, body = forge(certified, edit, tmp_path)
    problems = rederive(body)
    assert any(expected in p for p in problems), problems
    capsys.readouterr()
    code = main(["verify", str(forged)])
    out = capsys.readouterr().out
    assert code == 1 and expected in out, out


def test_schema_1_certificates_are_still_read_and_rederived(certified, tmp_path):
    """A version-1 body (variant 'fp32', guard as text, no choice counts) re-derives under the v1 rules."""
    from mansu_audit.certificate import guard_messages, guard_records, read_certificate, unquantized_label
    doc = json.loads(certified.read_text())
    body = copy.deepcopy(doc["body"])
    v1 = _to_v1(body)
    assert rederive(v1) == [], rederive(v1)
    assert unquantized_label(v1) == "fp32" and guard_messages(v1) == [g["message"] for g in body["guard"]]
    assert [g.code for g in guard_records(v1)] == [g["code"] for g in body["guard"] if g["code"] != "below_chance"]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({"schema": "mansu-audit-certificate", "schema_version": 1,
                                "body_sha256": body_sha256(v1), "created_utc": doc["created_utc"], "body": v1}))
    cert = read_certificate(path)
    assert cert.schema_version == 1 and cert.document()["schema_version"] == 1
    v1["desiderata"]["F"]["verdict"] = "PASS"
    assert any("desiderata.F.verdict" in p for p in rederive(v1))


def _to_v1(body):
    """What the suite wrote before schema 2, derived from a v2 body (same vectors, v1 rules)."""
    out = copy.deepcopy(body)
    for key in ("required", "unquantized"):
        out.pop(key)
    out["statistics"].pop("cad_control")
    for split in ("forget_eval", "retain_eval"):
        per = out["per_item"][split]
        per.pop("num_choices")
        per["predictions"] = {k.replace("/unquantized", "/fp32"): v for k, v in per["predictions"].items()}
        out["statistics"][split] = {k.replace("/unquantized]", "/fp32]"): v
                                    for k, v in out["statistics"][split].items()}
    out["guard"] = [g["message"] for g in body["guard"] if g["code"] != "below_chance"]
    pol = Policy.from_dict(out["policy"]["values"])
    stats = {s: {k.replace("/fp32]", "/unquantized]"): Estimate.from_dict(v) for k, v in out["statistics"][s].items()}
             for s in ("forget_eval", "retain_eval")}
    guard = [GuardFinding.from_dict(g) for g in body["guard"] if g["code"] != "below_chance"]
    d = decide(stats["forget_eval"], stats["retain_eval"], list(out["quantizers"]), pol, chance=out["chance"],
               cad=Estimate.from_dict(out["statistics"]["cad"]), guard=guard, rules=1)
    out["desiderata"] = {k: v.to_dict() for k, v in d.verdicts.items()}
    out["verdict"] = d.overall
    return out


def _results_from_body(body, split):
    """MCQResults rebuilt from a certificate's per-item record (predictions, answers, choice counts)."""
    import numpy as np

    from mansu_audit.evaluate import MCQResult

    per = body["per_item"][split]
    k = np.asarray(per["num_choices"])
    lp = np.where(np.arange(k.max())[None, :] < k[:, None], -1.0, -np.inf)
    return {key: MCQResult(split, tuple(per["ids"]), np.asarray(per["answers"]), np.asarray(p), lp.copy())
            for key, p in per["predictions"].items()}


def test_k_is_rederived_and_its_forgeries_named(certified):
    """A body carrying K (relearning vectors on held-out items) re-derives, and a moved K CI is named."""
    import numpy as np

    from mansu_audit.desiderata import assess, cad_control_from_details, per_item_record
    from mansu_audit.evaluate import MCQResult

    body = json.loads(certified.read_text())["body"]
    forget, retain = _results_from_body(body, "forget_eval"), _results_from_body(body, "retain_eval")
    n = 60
    answers = np.arange(n) % 4
    preds = {"base": answers, "candidate": (answers + 1) % 4,
             "candidate/relearned": np.where(np.arange(n) < 40, answers, (answers + 1) % 4)}
    lp = np.zeros((n, 4))
    relearn = {k: MCQResult("relearn_heldout", tuple(f"h{i}" for i in range(n)), answers, p, lp)
               for k, p in preds.items()}
    cad = Estimate.from_dict(body["statistics"]["cad"])
    control = cad_control_from_details({"random_circuit_cad": body["statistics"]["cad_control"]})
    a = assess(forget, retain, list(body["quantizers"]), Policy.from_dict(body["policy"]["values"]), cad=cad,
               cad_control=control, relearn=relearn)
    d = a.to_dict()
    body.update({"verdict": a.overall, "desiderata": d["verdicts"], "guard": d["guard"], "required": d["required"],
                 "per_item": per_item_record({"forget_eval": forget, "retain_eval": retain}, relearn)})
    body["statistics"].update(d["statistics"])
    assert a.verdicts["K"].verdict == "FAIL" and body["required"][-1] == "K"  # 40 of 60 came back
    assert rederive(body) == []
    body["statistics"]["relearn_heldout"]["recovered_fraction"]["high"] = 0.2
    body["desiderata"]["K"]["verdict"] = "PASS"
    problems = rederive(body)
    assert any("relearn_heldout.recovered_fraction.high" in p for p in problems)
    assert any("desiderata.K.verdict: recorded PASS, re-derived FAIL" in p for p in problems)
