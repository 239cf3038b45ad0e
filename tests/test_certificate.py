"""Certificate: schema on write and read, hashed body, byte-identical bodies, and `verify` naming each change."""
from __future__ import annotations

import json

import pytest

from conftest import save_tiny_pair
from mansu_audit.certificate import (Certificate, body_sha256, read_certificate, schema_errors,
                                     verify_certificate)
from mansu_audit.cli import main
from mansu_audit.errors import InputError


@pytest.fixture(scope="module")
def saved(tmp_path_factory, ref_tokenizer):
    """Tiny base and candidate saved as safetensors folders, a small bundle and a policy file."""
    root = save_tiny_pair(tmp_path_factory.mktemp("cert"), ref_tokenizer)
    (root / "policy.yaml").write_text("bootstrap_replicates: 500\nseed: 3\n")
    return root


def certify_cli(root, out, *extra):
    return main(["certify", "--base", str(root / "base"), "--candidate", str(root / "cand"), "--benchmark",
                 str(root / "bundle"), "--quantizers", "int8", "--out", str(out), "--policy",
                 str(root / "policy.yaml"), "--cad", "skip", "--no-cache", "--quiet", *extra])


def test_certify_writes_a_valid_certificate_and_verify_accepts_it(saved, tmp_path, capsys):
    code = certify_cli(saved, tmp_path / "out")
    printed = capsys.readouterr().out
    cert = read_certificate(tmp_path / "out" / "certificate.json")
    assert code == {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[cert.verdict]
    assert cert.verdict != "PASS"  # S is not computed
    for row in ("F ", "R ", "Q[int8]", "Q (worst)", "S ", "overall"):
        assert row in printed
    body = cert.body
    assert body["policy"]["values"]["bootstrap_replicates"] == 500 and body["seeds"]["bootstrap"] == 3
    assert set(body["models"]["candidate"]["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert set(body["benchmark"]["files"]) >= {"manifest.json", "forget_eval.jsonl", "retain_eval.jsonl"}
    assert body["quantizers"]["int8"]["settings"]["bits"] == 8
    assert len(body["per_item"]["forget_eval"]["predictions"]["candidate/int8"]) == 24
    assert (tmp_path / "out" / "results.json").is_file()
    assert not list((tmp_path / "out").glob("*.tmp"))
    assert main(["verify", str(tmp_path / "out" / "certificate.json")]) == 0


def test_results_are_typed(saved, tmp_path):
    """`Certificate.verdict` is an `Outcome`, `.verdicts` maps each desideratum to a `Verdict` record; both equal
    what the body stores, and an Outcome serialises exactly as its string (bodies are unchanged)."""
    from mansu_audit import Outcome, Verdict
    from mansu_audit.cache import canonical_json

    certify_cli(saved, tmp_path / "out")
    cert = read_certificate(tmp_path / "out" / "certificate.json")
    assert isinstance(cert.verdict, Outcome) and cert.verdict == cert.body["verdict"]
    typed = cert.verdicts
    assert set(typed) == set(cert.body["desiderata"]) >= {"F", "R", "Q", "Q[int8]", "S"}
    for name, v in typed.items():
        assert isinstance(v, Verdict) and isinstance(v.verdict, Outcome)
        assert v.to_dict() == cert.body["desiderata"][name]
    assert typed["S"].verdict is Outcome.NOT_COMPUTED and typed["S"].estimate is None
    assert typed["F"].estimate.low <= typed["F"].estimate.point <= typed["F"].estimate.high
    assert canonical_json({"v": Outcome.NOT_COMPUTED}) == canonical_json({"v": "NOT COMPUTED"})
    assert {"NOT COMPUTED": 1}[Outcome.NOT_COMPUTED] == 1 and f"{Outcome.PASS}" == "PASS"


def test_same_inputs_give_a_byte_identical_body(saved, tmp_path):
    certify_cli(saved, tmp_path / "a")
    certify_cli(saved, tmp_path / "b")
    a = json.loads((tmp_path / "a" / "certificate.json").read_text())
    b = json.loads((tmp_path / "b" / "certificate.json").read_text())
    assert json.dumps(a["body"], sort_keys=True) == json.dumps(b["body"], sort_keys=True)
    assert a["body_sha256"] == b["body_sha256"] == body_sha256(a["body"])
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()


@pytest.fixture(scope="module")
def certified_once(saved, tmp_path_factory):
    out = tmp_path_factory.mktemp("certified") / "out"
    certify_cli(saved, out)
    return out


@pytest.fixture()
def certified(saved, certified_once, tmp_path):
    """Fresh copies of the inputs and of their certificate (verify is pointed at the copies)."""
    import shutil

    root = tmp_path / "inputs"
    shutil.copytree(saved, root)
    shutil.copytree(certified_once, tmp_path / "out")
    return root, tmp_path / "out" / "certificate.json"


def verify_cli(root, cert, capsys):
    code = main(["verify", str(cert), "--base", str(root / "base"), "--candidate", str(root / "cand"),
                 "--benchmark", str(root / "bundle"), "--policy", str(root / "policy.yaml")])
    return code, capsys.readouterr().out


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("edit, expected", [
    (lambda r: flip_last_byte(r / "cand" / "model.safetensors"), "candidate weights: 'model.safetensors' changed"),
    (lambda r: flip_last_byte(r / "base" / "model.safetensors"), "base weights: 'model.safetensors' changed"),
    (lambda r: (r / "cand" / "tokenizer.json").write_text(
        (r / "cand" / "tokenizer.json").read_text().replace('"A"', '"Z"', 1)), "candidate tokenizer"),
    (lambda r: (r / "base" / "config.json").write_text(
        (r / "base" / "config.json").read_text().replace("0.02", "0.03")), "base config"),
    (lambda r: (r / "bundle" / "forget_eval.jsonl").write_text(
        (r / "bundle" / "forget_eval.jsonl").read_text().replace("Rankel", "Rankle", 1)), "data: 'forget_eval.jsonl'"),
    (lambda r: (r / "policy.yaml").write_text("bootstrap_replicates: 500\nseed: 4\n"), "policy"),
    (lambda r: (r / "policy.yaml").write_text("bootstrap_replicates: 500\nseed: 3\n# comment\n"), "policy"),
])
def test_verify_names_what_changed(certified, capsys, edit, expected):
    root, cert = certified
    assert verify_cli(root, cert, capsys)[0] == 0
    edit(root)
    code, out = verify_cli(root, cert, capsys)
    assert code == 1
    assert expected in out, out


def test_verify_detects_an_edited_body_and_sidecar(certified, capsys):
    root, cert = certified
    side = cert.parent / "results.json"
    side.write_text(side.read_text().replace("1", "2", 1))
    code, out = verify_cli(root, cert, capsys)
    assert code == 1 and "results.json" in out
    doc = json.loads(cert.read_text())
    doc["body"]["verdict"] = "PASS"
    cert.write_text(json.dumps(doc))
    code, out = verify_cli(root, cert, capsys)
    assert code == 1 and "certificate body edited" in out
    with pytest.raises(InputError, match="body was edited"):
        read_certificate(cert)


def test_schema_is_checked_on_write_and_read(certified, tmp_path):
    _, cert_path = certified
    cert = read_certificate(cert_path)
    assert schema_errors(cert.document()) == []
    broken = json.loads(json.dumps(cert.body))
    broken["desiderata"]["F"]["verdict"] = "MAYBE"
    with pytest.raises(ValueError, match="schema"):
        Certificate(broken, cert.created_utc).write(tmp_path / "never")
    assert not (tmp_path / "never").exists()  # nothing written when invalid
    doc = Certificate(broken, cert.created_utc).document()  # consistent hash, invalid content
    cert_path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="schema"):
        read_certificate(cert_path)
    assert main(["verify", str(cert_path)]) == 2


def test_verify_bad_input_exits_2(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "x.json").write_text("{not json")
    assert main(["verify", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err
