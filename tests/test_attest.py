"""Signed certificates (in-toto Statement v1 in a DSSE envelope, Ed25519), output folders, determinism."""
from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from conftest import tiny_llama
from mansu_audit import attest
from mansu_audit.cache import NoCache
from mansu_audit.certificate import body_sha256
from mansu_audit.cli import main
from mansu_audit.loading import model_from_objects
from mansu_audit.policy import Policy
from conftest import small_bundle

certify_module = importlib.import_module("mansu_audit.certify")
FAST = Policy(bootstrap_replicates=200)


def test_pae_matches_the_dsse_test_vector():
    # secure-systems-lab/dsse protocol.md, "Test Vectors"
    assert attest.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert attest.pae("", b"") == b"DSSEv1 0  0 "


def test_keygen_writes_a_private_pair_and_never_overwrites(tmp_path, capsys):
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    priv, pub = tmp_path / "keys" / attest.PRIVATE_KEY_FILE, tmp_path / "keys" / attest.PUBLIC_KEY_FILE
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert priv.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    key = attest.load_private_key(priv)
    assert attest.keyid(key.public_key()) == attest.keyid(attest.load_public_key(pub))
    before = priv.read_bytes()
    capsys.readouterr()
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]
    assert priv.read_bytes() == before


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    priv, pub = attest.generate_keypair(d)
    other_priv, other_pub = attest.generate_keypair(d / "other")
    return {"priv": priv, "pub": pub, "other_pub": other_pub}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys):
    """A certificate of two tiny in-memory models, signed, written through certify(out=...)."""
    from transformers import AutoTokenizer

    from conftest import REFERENCE_DIR

    tok = AutoTokenizer.from_pretrained(str(REFERENCE_DIR))
    root = tmp_path_factory.mktemp("signed")
    base = model_from_objects(tiny_llama(len(tok), seed=0, hidden=32, intermediate=64), tok, "b")
    cand = model_from_objects(tiny_llama(len(tok), seed=1, hidden=32, intermediate=64), tok, "c")
    bundle = small_bundle(root / "bundle", n=8)
    cert = certify_module.certify(base, cand, bundle, quantizers=(), policy=FAST, cad=None,
                                  cache=certify_module.ResultCache(root / "cache"), out=root / "out", relearn=None,
                                  consistency=None,
                                  sign_key=keys["priv"], command="mansu-audit certify --base b --candidate c")
    return root / "out", cert


def _envelope(out: Path) -> dict:
    return json.loads((out / attest.ATTESTATION_FILE).read_text())


def test_envelope_is_an_in_toto_statement_signed_over_the_pae(signed, keys):
    out, cert = signed
    env = _envelope(out)
    assert env["payloadType"] == "application/vnd.in-toto+json"
    payload = base64.b64decode(env["payload"])
    stmt = json.loads(payload)
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["predicateType"] == attest.PREDICATE_TYPE
    assert stmt["predicate"] == cert.body
    assert stmt["subject"] == [{"name": "candidate:state_dict",
                                "digest": {"sha256": cert.body["models"]["candidate"]["state_dict_sha256"]}}]
    pub = attest.load_public_key(keys["pub"])
    [sig] = env["signatures"]
    assert sig["keyid"] == attest.keyid(pub)
    pub.verify(base64.b64decode(sig["sig"]), attest.pae(env["payloadType"], payload))  # raises if wrong
    assert cert.body["command"] == "mansu-audit certify --base b --candidate c"
    run = json.loads((out / certify_module.RUN_FILE).read_text())
    assert run["body_sha256"] == cert.body_sha256 and run["signed"] and "total" in run["wall_seconds"]
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".out")) == []  # no staging left


def test_signature_checks(signed, keys):
    out, cert = signed
    body = json.loads((out / "certificate.json").read_text())["body"]
    pub, other = attest.load_public_key(keys["pub"]), attest.load_public_key(keys["other_pub"])
    status, problems = attest.check_attestation(out, body, pub)
    assert status.startswith("signature: valid") and problems == []
    status, problems = attest.check_attestation(out, body, other)
    assert status == "signature: INVALID" and problems
    status, problems = attest.check_attestation(out, body, None)
    assert "not checked" in status and problems == []


FORGERIES = {
    "verdict flipped to PASS": lambda b: b.update(verdict="PASS"),
    "F verdict flipped": lambda b: b["desiderata"]["F"].update(verdict="PASS"),
    "CI moved": lambda b: b["desiderata"]["F"]["estimate"].update(low=0.5),
    "threshold changed": lambda b: b["policy"]["values"].update(min_forget_drop=0.0),
    "item count changed": lambda b: b["benchmark"]["splits"].update(forget_eval=5000),
    "quantizer list changed": lambda b: b["quantizers"].update(nf4={"settings": {}}),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_body_with_recomputed_hash_fails_the_signature(signed, keys, tmp_path, forgery, capsys):
    out, _ = signed
    forged = tmp_path / "forged"
    forged.mkdir()
    for f in out.iterdir():
        (forged / f.name).write_bytes(f.read_bytes())
    doc = json.loads((forged / "certificate.json").read_text())
    FORGERIES[forgery](doc["body"])
    doc["body_sha256"] = body_sha256(doc["body"])  # recomputed the way the suite does
    (forged / "certificate.json").write_text(json.dumps(doc))
    status, problems = attest.check_attestation(forged, doc["body"], attest.load_public_key(keys["pub"]))
    assert any("predicate differs" in p for p in problems), problems
    capsys.readouterr()
    rc = main(["verify", str(forged / "certificate.json"), "--trusted-key", str(keys["pub"])])
    assert rc == 1
    assert "predicate differs from the certificate body" in capsys.readouterr().out


def test_re_signed_payload_with_another_key_fails(signed, keys, tmp_path):
    """An attacker who rewrites the envelope must sign it: with their own key it does not verify."""
    out, _ = signed
    body = json.loads((out / "certificate.json").read_text())["body"]
    body["verdict"] = "PASS"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    (tmp_path / attest.ATTESTATION_FILE).write_bytes(attest.attestation_bytes(body, Ed25519PrivateKey.generate()))
    status, problems = attest.check_attestation(tmp_path, body, attest.load_public_key(keys["pub"]))
    assert status == "signature: INVALID" and problems


def test_unsigned_certificate_says_unsigned(tmp_path, signed, keys, capsys):
    out, _ = signed
    body = json.loads((out / "certificate.json").read_text())["body"]
    (tmp_path / attest.ATTESTATION_FILE).write_bytes(attest.attestation_bytes(body))
    assert attest.check_attestation(tmp_path, body, None) == ("signature: unsigned", [])
    status, problems = attest.check_attestation(tmp_path, body, attest.load_public_key(keys["pub"]))
    assert problems == ["signature: certificate is unsigned, but --trusted-key was given"]
    status, problems = attest.check_attestation(tmp_path / "nothing-here", body, None)
    assert status.startswith("signature: unsigned") and problems == []


def test_bad_key_files_are_one_line(tmp_path, keys):
    from mansu_audit.errors import InputError

    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(InputError, match="not a PEM private key"):
        attest.load_private_key(tmp_path / "junk.pem")
    with pytest.raises(InputError, match="not a PEM public key"):
        attest.load_public_key(keys["priv"])
    with pytest.raises(InputError, match="not found"):
        attest.load_private_key(tmp_path / "missing.pem")


def test_reproducible_command_drops_storage_options():
    from mansu_audit.commands.certify import reproducible_command

    argv = ["certify", "--base", "reference", "--candidate", "my model", "--out", "o1", "--overwrite",
            "--cache-dir=/c", "--quiet", "--sign-key", "k.pem", "--quantizers", "int8", "--no-cache", "--over"]
    assert reproducible_command(argv) == "mansu-audit certify --base reference --candidate 'my model' --quantizers int8"


# --- output folders ----------------------------------------------------------------------------------------------

def _tiny_pair():
    from transformers import AutoTokenizer

    from conftest import REFERENCE_DIR

    tok = AutoTokenizer.from_pretrained(str(REFERENCE_DIR))
    return (model_from_objects(tiny_llama(len(tok), seed=0, hidden=32, intermediate=64), tok, "b"),
            model_from_objects(tiny_llama(len(tok), seed=1, hidden=32, intermediate=64), tok, "c"))


def test_out_folder_is_replaced_whole_or_refused(tmp_path):
    from mansu_audit.errors import InputError

    base, cand = _tiny_pair()
    bundle = small_bundle(tmp_path / "bundle", n=8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "certificate.json").write_text("{}")
    (out / "index.html").write_text("stale PASS")
    kwargs = dict(quantizers=(), policy=FAST, cad=None, cache=NoCache(), out=out, relearn=None, consistency=None)
    with pytest.raises(InputError, match="not empty"):
        certify_module.certify(base, cand, bundle, **kwargs)
    assert (out / "index.html").read_text() == "stale PASS"  # untouched
    certify_module.certify(base, cand, bundle, overwrite=True, **kwargs)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["certificate.json", "results.json", "run.json", attest.ATTESTATION_FILE])  # no stale index.html
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="no earlier mansu-audit output"):
        certify_module.certify(base, cand, bundle, overwrite=True, **{**kwargs, "out": other})


# --- determinism (slow: CAD on the reference model) ---------------------------------------------------------------

@pytest.mark.slow
def test_two_identical_certify_runs_with_cad_give_identical_bodies(tmp_path, capsys, keys):
    """CAD attribution wall times go to run.json, never into the hashed body or results.json.

    The first run is signed, the second is not, in other folders and caches: none of that is in the body.
    """
    small_bundle(tmp_path / "bundle", n=8)
    bodies, sidecars = [], []
    for i in range(2):
        out = tmp_path / f"out{i}"
        rc = main(["certify", "--base", "reference", "--candidate", "reference", "--benchmark",
                   str(tmp_path / "bundle"), "--quantizers", "int8", "--cad", "auto", "--out", str(out),
                   "--cache-dir", str(tmp_path / f"cache{i}"), "--quiet", "--relearn", "skip", "--consistency", "skip",
                   *(["--sign-key", str(keys["priv"])] if i == 0 else [])])
        assert rc in (0, 1, 3)
        doc = json.loads((out / "certificate.json").read_text())
        bodies.append(json.dumps(doc["body"], sort_keys=True).encode())
        sidecars.append((out / "results.json").read_bytes())
        run = json.loads((out / "run.json").read_text())
        assert run["cad_attribution_seconds"]  # the timings are kept, outside the body
    assert bodies[0] == bodies[1]
    assert sidecars[0] == sidecars[1]
    assert hashlib.sha256(sidecars[0]).hexdigest() == json.loads(bodies[0])["sidecars"]["results.json"]
    assert json.loads(bodies[0])["command"].startswith("mansu-audit certify --base reference")
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "out0" / "certificate.json"), "--trusted-key", str(keys["pub"])]) == 0
    assert "signature: valid" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "out1" / "certificate.json"), "--trusted-key", str(keys["pub"])]) == 1
    assert "unsigned" in capsys.readouterr().out
