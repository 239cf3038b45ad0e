"""Every bad input is one line on stderr, exit 2, and leaves no output folder or cache entry behind.

Each case runs the CLI in-process (`mansu_audit.cli.main`) on a fresh copy of a small
bundle; the cases fail before any model loads, so the file stays fast. The bundle
and policy readers are also fuzzed with hypothesis: random JSON lines and random
bytes never raise anything but `InputError`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import small_bundle
from mansu_audit.cli import main

N = 4  # items per split in the bundle copies


def make_bundle(root: Path) -> Path:
    """A copy of synthhazard with N items per split (every split the manifest names)."""
    small_bundle(root, n=N, keep_attack=True)
    return root


def edit_item(root: Path, split: str, change, line: int = 0) -> None:
    """Apply `change(obj)` to one item of a split (change may return a replacement line as str/bytes)."""
    path = root / f"{split}.jsonl"
    lines = path.read_bytes().splitlines()
    obj = json.loads(lines[line])
    new = change(obj)
    if new is None:
        new = json.dumps(obj)
    lines[line] = new if isinstance(new, bytes) else new.encode()
    path.write_bytes(b"\n".join(lines) + b"\n")


def edit_manifest(root: Path, change) -> None:
    m = json.loads((root / "manifest.json").read_text())
    new = change(m)
    data = new if new is not None else json.dumps(m)
    (root / "manifest.json").write_bytes(data if isinstance(data, bytes) else data.encode())


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _set(key, value):
    def change(obj):
        obj[key] = value
    return change


def _del(key):
    def change(obj):
        del obj[key]
    return change


def _rsa_key(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))


def _public_key(path: Path) -> Path:
    from mansu_audit.attest import generate_keypair

    _, pub = generate_keypair(path.parent / "kp")
    return pub


# Each case: name -> (setup(tmp) -> extra argv or full argv, expected text in the one stderr line).
# `setup` gets the tmp folder with a fresh bundle at tmp/b; certify cases get --out tmp/out --cache-dir tmp/cache.
B = "forget_eval"
CERTIFY_CASES = {
    # -- bundle: bytes and JSON
    "split non-UTF-8": (lambda t: edit_item(t / "b", B, lambda o: b'{"id": "\xff\xfe"}'), "forget_eval.jsonl:1"),
    "split bad JSON": (lambda t: edit_item(t / "b", B, lambda o: '{"id": '), "forget_eval.jsonl:1"),
    "split line is a list": (lambda t: edit_item(t / "b", B, lambda o: "[1, 2]"), "forget_eval.jsonl:1"),
    "split line is a string": (lambda t: edit_item(t / "b", B, lambda o: '"text"'), "forget_eval.jsonl:1"),
    "split deeply nested": (lambda t: edit_item(t / "b", B, lambda o: "[" * 100000), "forget_eval.jsonl:1"),
    "split empty": (lambda t: write(t / "b" / f"{B}.jsonl", b"\n\n"), "split is empty"),
    "split missing": (lambda t: (t / "b" / f"{B}.jsonl").unlink(), "split file not found"),
    "manifest non-UTF-8": (lambda t: write(t / "b" / "manifest.json", b'{"splits": "\xff"}'), "manifest.json"),
    "manifest bad JSON": (lambda t: write(t / "b" / "manifest.json", "{"), "manifest.json"),
    "manifest is a list": (lambda t: write(t / "b" / "manifest.json", "[1]"), "manifest.json"),
    "manifest without forget_eval": (lambda t: edit_manifest(t / "b", lambda m: m["splits"].pop(B) and None), "forget_eval"),
    "manifest path outside": (lambda t: edit_manifest(t / "b", lambda m: m["splits"][B].update(path="../x.jsonl")),
                              "points outside"),
    "manifest path NUL": (lambda t: edit_manifest(t / "b", lambda m: m["splits"][B].update(path="a\u0000b")),
                          "needs a 'path'"),
    "manifest path number": (lambda t: edit_manifest(t / "b", lambda m: m["splits"][B].update(path=3)),
                             "needs a 'path'"),
    "manifest unknown kind": (lambda t: edit_manifest(t / "b", lambda m: m["splits"]["retain_corpus"].update(
        kind="video")), "unknown kind"),
    "manifest forget_eval as corpus": (lambda t: edit_manifest(t / "b", lambda m: m["splits"][B].update(
        kind="corpus")), "kind 'mcq'"),
    "benchmark folder missing": (lambda t: shutil.rmtree(t / "b"), "no such benchmark"),
    "benchmark without manifest": (lambda t: (t / "b" / "manifest.json").unlink(), "no manifest.json"),
    # -- bundle: items
    "question missing": (lambda t: edit_item(t / "b", B, _del("question")), "'question'"),
    "question not a string": (lambda t: edit_item(t / "b", B, _set("question", 7)), "'question'"),
    "question empty": (lambda t: edit_item(t / "b", B, _set("question", "")), "'question' is empty"),
    "question blank": (lambda t: edit_item(t / "b", B, _set("question", " \n\t")), "'question' is empty"),
    "id missing": (lambda t: edit_item(t / "b", B, _del("id")), "'id'"),
    "id a number": (lambda t: edit_item(t / "b", B, _set("id", 12)), "'id'"),
    "one choice": (lambda t: edit_item(t / "b", B, _set("choices", ["only"])), "'choices'"),
    "choices not strings": (lambda t: edit_item(t / "b", B, _set("choices", [1, 2, 3, 4])), "'choices'"),
    "choices a string": (lambda t: edit_item(t / "b", B, _set("choices", "ABCD")), "'choices'"),
    "30 choices": (lambda t: edit_item(t / "b", B, _set("choices", [f"c{i}" for i in range(30)])), "30 choices"),
    "answer out of range": (lambda t: edit_item(t / "b", B, _set("answer", 4)), "out of range"),
    "answer negative": (lambda t: edit_item(t / "b", B, _set("answer", -1)), "out of range"),
    "answer boolean": (lambda t: edit_item(t / "b", B, _set("answer", True)), "'answer'"),
    "answer a string": (lambda t: edit_item(t / "b", B, _set("answer", "A")), "'answer'"),
    "subject a number": (lambda t: edit_item(t / "b", B, _set("subject", 3)), "'subject'"),
    "duplicate id": (lambda t: edit_item(t / "b", B, lambda o: json.dumps(
        {**o, "id": json.loads((t / "b" / f"{B}.jsonl").read_text().splitlines()[0])["id"]}), line=1),
        "duplicate id"),
    "id shared by two splits": (lambda t: edit_item(t / "b", "retain_eval", _set(
        "id", json.loads((t / "b" / f"{B}.jsonl").read_text().splitlines()[0])["id"])), "splits must not overlap"),
    "corpus text missing": (lambda t: edit_item(t / "b", "retain_corpus", _del("text")), "'text'"),
    # -- policy
    "policy non-UTF-8": (lambda t: ["--policy", str(write(t / "p.yaml", b"seed: \xff\n"))], "p.yaml"),
    "policy duplicate key": (lambda t: ["--policy", str(write(t / "p.yaml", "seed: 1\nseed: 2\n"))],
                             "duplicate key 'seed'"),
    "policy unknown key": (lambda t: ["--policy", str(write(t / "p.yaml", "min_forget: 0.2\n"))], "min_forget"),
    "policy bad YAML": (lambda t: ["--policy", str(write(t / "p.yaml", "seed: [1\n"))], "bad YAML"),
    "policy is a list": (lambda t: ["--policy", str(write(t / "p.yaml", "- 1\n- 2\n"))], "mapping"),
    "policy B a string": (lambda t: ["--policy", str(write(t / "p.yaml", "bootstrap_replicates: many\n"))],
                          "bootstrap_replicates"),
    "policy B too small": (lambda t: ["--policy", str(write(t / "p.yaml", "bootstrap_replicates: 5\n"))],
                           "bootstrap_replicates"),
    "policy level 1.5": (lambda t: ["--policy", str(write(t / "p.yaml", "level: 1.5\n"))], "level"),
    "policy level NaN": (lambda t: ["--policy", str(write(t / "p.yaml", "level: .nan\n"))], "level"),
    "policy seed negative": (lambda t: ["--policy", str(write(t / "p.yaml", "seed: -1\n"))], "seed"),
    "policy seed boolean": (lambda t: ["--policy", str(write(t / "p.yaml", "seed: true\n"))], "seed"),
    "policy ci_method": (lambda t: ["--policy", str(write(t / "p.yaml", "ci_method: magic\n"))], "ci_method"),
    "policy missing": (lambda t: ["--policy", str(t / "nope.yaml")], "nope.yaml"),
    # -- arguments
    "unknown quantizer": (lambda t: ["--quantizers", "nf5"], "nf5"),
    "no quantizer named": (lambda t: ["--quantizers", ",,"], "--quantizers"),
    "batch size zero": (lambda t: ["--batch-size", "0"], "--batch-size"),
    "batch size text": (lambda t: ["--batch-size", "big"], "--batch-size"),
    "cad choice": (lambda t: ["--cad", "maybe"], "--cad"),
    # -- output, cache, key
    "out is a file": (lambda t: ["--out", str(write(t / "f", "x"))], "--out"),
    "out under a file": (lambda t: ["--out", str(write(t / "f", "x") / "sub")], "is a file"),
    "out not empty": (lambda t: ["--out", str(write(t / "o" / "notes.txt", "x").parent)], "not empty"),
    "out overwrite foreign": (lambda t: ["--out", str(write(t / "o" / "notes.txt", "x").parent), "--overwrite"],
                              "no earlier mansu-audit output"),
    "out unwritable": (lambda t: ["--out", "/proc/mansu-audit-out"], "cannot create folders"),
    "cache dir is a file": (lambda t: ["--cache-dir", str(write(t / "cachefile", "x"))], "--cache-dir"),
    "cache dir under a file": (lambda t: ["--cache-dir", str(write(t / "cachefile", "x") / "c")], "--cache-dir"),
    "sign key missing": (lambda t: ["--sign-key", str(t / "none.pem")], "signing key not found"),
    "sign key junk": (lambda t: ["--sign-key", str(write(t / "k.pem", "hello"))], "k.pem"),
    "sign key is public": (lambda t: ["--sign-key", str(_public_key(t / "pub"))], "private key"),
    "sign key not Ed25519": (lambda t: ["--sign-key", str(_rsa_key(t / "ec.pem"))], "Ed25519"),
}


def _cert_doc(t: Path, edit=None, raw: bytes | None = None) -> list[str]:
    path = t / "cert" / "certificate.json"
    if raw is None:
        doc = {"schema": "mansu-audit-certificate", "schema_version": 1, "body_sha256": "0" * 64,
               "created_utc": "x", "body": {}}
        if edit:
            edit(doc)
        raw = json.dumps(doc).encode()
    write(path, raw)
    return ["verify", str(path)]


OTHER_CASES = {
    "verify certificate missing": (lambda t: ["verify", str(t / "none.json")], "none.json"),
    "verify certificate non-UTF-8": (lambda t: _cert_doc(t, raw=b'{"body": "\xff"}'), "certificate.json"),
    "verify certificate not JSON": (lambda t: _cert_doc(t, raw=b"{{"), "certificate.json"),
    "verify certificate a list": (lambda t: _cert_doc(t, raw=b"[]"), "certificate.json"),
    "verify certificate no body": (lambda t: _cert_doc(t, lambda d: d.pop("body")), "body"),
    "verify schema version 99": (lambda t: _cert_doc(t, lambda d: d.update(schema_version=99)), "schema version"),
    "verify trusted key junk": (lambda t: [*_cert_doc(t), "--trusted-key", str(write(t / "k.pub", "x"))], "k.pub"),
    "evaluate bundle non-UTF-8": (lambda t: [
        "evaluate", "--model", "reference", "--benchmark", str(t / "b"),
        *([] if edit_item(t / "b", "retain_eval", lambda o: b"\xc3\x28") else [])], "retain_eval.jsonl:1"),
    "evaluate bootstrap zero": (lambda t: ["evaluate", "--model", "reference", "--bootstrap", "0"], "--bootstrap"),
    "evaluate seed negative": (lambda t: ["evaluate", "--model", "reference", "--stats-seed", "-3"], "--stats-seed"),
    "matrix --set without =": (lambda t: ["matrix", "--methods", "ga", "--set", "ga:steps", "--out", str(t / "out")],
                               "--set"),
    "matrix --set other method": (lambda t: ["matrix", "--methods", "ga", "--set", "npo:steps=3", "--out",
                                             str(t / "out")], "--set"),
    "matrix seeds not numbers": (lambda t: ["matrix", "--methods", "ga", "--seeds", "a,b", "--out", str(t / "out")],
                                 "--seeds"),
    "matrix unknown method": (lambda t: ["matrix", "--methods", "gradient-magic", "--out", str(t / "out"),
                                         "--cache-dir", str(t / "cache")], "gradient-magic"),
    "matrix unknown quantizer": (lambda t: ["matrix", "--methods", "ga", "--quantizers", "int3", "--out",
                                            str(t / "out"), "--cache-dir", str(t / "cache")], "int3"),
    "keygen out is a file": (lambda t: ["keygen", "--out", str(write(t / "f", "x"))], "--out"),
    "unknown command": (lambda t: ["certifyy"], "invalid choice"),
}

ALL = {**CERTIFY_CASES, **OTHER_CASES}
assert len(ALL) >= 60, len(ALL)


def _run(argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", sorted(ALL))
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MANSU_CACHE_DIR", str(tmp_path / "cache"))
    make_bundle(tmp_path / "b")
    setup, expected = ALL[case]
    extra = setup(tmp_path)
    extra = extra if isinstance(extra, list) else []  # file-editing setups return None or a path
    if case in CERTIFY_CASES:
        argv = ["certify", "--base", "reference", "--candidate", "reference", "--benchmark", str(tmp_path / "b"),
                "--quantizers", "int8", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                "--quiet", *extra]
    else:
        argv = extra
    before = {p for p in tmp_path.rglob("*")}
    rc, err = _run(argv, capsys)
    assert rc == 2, (case, rc, err)
    assert len(err) == 1, (case, err)
    assert expected in err[0], (case, err[0])
    assert "Traceback" not in err[0]
    assert not (tmp_path / "out").exists() or "out" in {p.name for p in before}
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.json"))
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written, nothing half-written


def test_evaluate_help_shows_a_single_percent(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "95%" in out and "95%%" not in out


# --- fuzzing ------------------------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mansu_audit.data import load_bundle  # noqa: E402
from mansu_audit.errors import InputError  # noqa: E402
from mansu_audit.policy import load_policy  # noqa: E402

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4), max_leaves=12)
ITEM = st.fixed_dictionaries({}, optional={"id": JSON | st.text(max_size=6), "question": JSON | st.text(max_size=10),
                                           "choices": JSON | st.lists(st.text(max_size=4), max_size=30),
                                           "answer": JSON | st.integers(-2, 30), "subject": JSON,
                                           "corrupt": JSON})
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def _fuzz_root(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("fuzz"))


@FUZZ
@given(lines=st.lists(ITEM | JSON, min_size=0, max_size=5))
def test_fuzz_split_json_lines(tmp_path_factory, lines):
    root = _fuzz_root(tmp_path_factory)
    (root / f"{B}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    try:
        load_bundle(root)
    except InputError:
        pass


@FUZZ
@given(data=st.binary(max_size=200), which=st.sampled_from([f"{B}.jsonl", "manifest.json", "retain_corpus.jsonl"]))
def test_fuzz_bundle_random_bytes(tmp_path_factory, data, which):
    root = _fuzz_root(tmp_path_factory)
    (root / which).write_bytes(data)
    try:
        load_bundle(root)
    except InputError:
        pass


@FUZZ
@given(manifest=JSON | st.fixed_dictionaries({"splits": st.dictionaries(
    st.sampled_from(["forget_eval", "retain_eval", "forget_attr", "retain_corpus", "x"]),
    JSON | st.fixed_dictionaries({"path": JSON | st.text(max_size=12), "kind": JSON}), max_size=5)}))
def test_fuzz_manifest_json(tmp_path_factory, manifest):
    root = _fuzz_root(tmp_path_factory)
    (root / "manifest.json").write_text(json.dumps(manifest))
    try:
        load_bundle(root)
    except InputError:
        pass


@FUZZ
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.dictionaries(st.sampled_from(["seed", "level", "bootstrap_replicates", "ci_method", "require",
                                          "min_cad", "unknown"]), JSON, max_size=4).map(
           lambda d: json.dumps(d).encode()))
def test_fuzz_policy(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("pol") / "p.yaml"
    path.write_bytes(data)
    try:
        load_policy(path)
    except InputError:
        pass
