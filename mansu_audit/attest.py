"""Signed certificates: an in-toto Statement v1 in a DSSE envelope, Ed25519 keys.

Contract
- `statement(body)` is the in-toto Statement v1 of a certificate body:
  `{"_type": "https://in-toto.io/Statement/v1", "subject": [...], "predicateType":
  PREDICATE_TYPE, "predicate": body}`. `subject` lists the candidate's weight files
  (name as recorded in `body.models.candidate.files`, `{"sha256": hex}`), sorted by
  name; a candidate certified in memory (no files) has one subject, its state-dict
  hash, named `candidate:state_dict`. The predicate is the certificate body itself,
  so a body edited in certificate.json no longer matches the signed predicate.
- `envelope(statement, key)` is a DSSE envelope (`payloadType`
  `application/vnd.in-toto+json`, base64 `payload` = canonical JSON of the statement,
  `signatures: [{keyid, sig}]`). The signature is Ed25519 over the DSSE v1
  pre-authentication encoding
  `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`
  (LEN: ASCII decimal byte length). `keyid` is the SHA-256 of the raw 32-byte public
  key (hex); it is a hint, never trusted: verification tries the given trusted key.
  Without a key the envelope has an empty `signatures` list (the statement is still
  there for tools that sign it later); `verify` then reports "unsigned".
- The envelope is written as `certificate.intoto.jsonl` (one envelope per line, the
  in-toto bundle convention) beside `certificate.json`; it is not part of the body.
- `check_attestation(cert_dir, body, trusted_key)` returns (status line, problems):
  problems name a bad signature, a predicate that differs from the body, subjects
  that differ from the recorded weight files, or a missing/unsigned attestation when
  a trusted key is required.

Keys are PEM files (`mansu-audit keygen`, or `openssl genpkey -algorithm ed25519`):
PKCS#8 private key (unencrypted), SubjectPublicKeyInfo public key. Bad key files are
one-line `InputError`s.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

from mansu_audit.errors import InputError, first_line
from mansu_audit.loading import TOKENIZER_FILES

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://mansu-audit.dev/certificate/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
ATTESTATION_FILE = "certificate.intoto.jsonl"
PRIVATE_KEY_FILE = "mansu-signing-key.pem"
PUBLIC_KEY_FILE = "mansu-signing-key.pub.pem"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of (payload type, serialized body)."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _is_weight_file(name: str) -> bool:
    leaf = name.rsplit("/", 1)[-1]
    return leaf not in TOKENIZER_FILES and not (leaf.endswith(".json") and not leaf.endswith(".index.json"))


def subjects(body: Mapping) -> list[dict]:
    """The candidate's weight files and their SHA-256 (its state-dict hash when certified in memory)."""
    cand = body["models"]["candidate"]
    files = {n: d for n, d in (cand.get("files") or {}).items() if _is_weight_file(n)}
    if files:
        return [{"name": n, "digest": {"sha256": d}} for n, d in sorted(files.items())]
    return [{"name": "candidate:state_dict", "digest": {"sha256": cand["state_dict_sha256"]}}]


def statement(body: Mapping) -> dict:
    return {"_type": STATEMENT_TYPE, "subject": subjects(body), "predicateType": PREDICATE_TYPE,
            "predicate": body}


# --- keys -------------------------------------------------------------------------------------------------------

def _raw_public(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid(public_key) -> str:
    return hashlib.sha256(_raw_public(public_key)).hexdigest()


def _read_key_bytes(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}", path) from None


def load_private_key(path: str | Path):
    """An Ed25519 private key from an unencrypted PEM (PKCS#8) file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_bytes(Path(path), "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InputError("signing key is encrypted; give an unencrypted PEM key (mansu-audit keygen)", path) from None
    except (ValueError, binascii.Error) as exc:
        raise InputError(f"not a PEM private key ({first_line(exc)})",
                         path) from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for unknown key types
        raise InputError(f"not a usable private key ({type(exc).__name__})", path) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"signing key must be Ed25519, not {type(key).__name__}", path)
    return key


def load_public_key(path: str | Path):
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key_bytes(Path(path), "trusted key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, binascii.Error) as exc:
        raise InputError(f"not a PEM public key ({first_line(exc)})",
                         path) from None
    except Exception as exc:
        raise InputError(f"not a usable public key ({type(exc).__name__})", path) from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"trusted key must be Ed25519, not {type(key).__name__}", path)
    return key


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` (refusing an existing file); the process umask is left alone."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(out_dir: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 pair into `out_dir`: private PEM (mode 0600) and public PEM; refuses to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("--out must be a folder", out)
    priv_path, pub_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    for p in (priv_path, pub_path):
        if p.exists() or p.is_symlink():
            raise InputError("key file already exists (refusing to overwrite a key)", p)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the key folder: {exc.strerror}", out) from None
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        _write_new(priv_path, priv, 0o600)
        try:
            _write_new(pub_path, pub, 0o644)
        except OSError:
            priv_path.unlink()
            raise
    except OSError as exc:
        raise InputError(f"cannot write the key pair: {exc.strerror}", out) from None
    return priv_path, pub_path


# --- envelopes ---------------------------------------------------------------------------------------------------

def envelope(stmt: Mapping, private_key=None) -> dict:
    """A DSSE envelope around `stmt`, signed with `private_key` (Ed25519) if given."""
    payload = _canonical(stmt)
    sigs = []
    if private_key is not None:
        sig = private_key.sign(pae(PAYLOAD_TYPE, payload))
        sigs.append({"keyid": keyid(private_key.public_key()), "sig": base64.b64encode(sig).decode("ascii")})
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode("ascii"), "signatures": sigs}


def attestation_bytes(body: Mapping, private_key=None) -> bytes:
    """The `certificate.intoto.jsonl` file: one DSSE envelope on one line."""
    return json.dumps(envelope(statement(body), private_key), sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64 (DSSE verifiers must accept both)."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    text = text.strip()
    alt = "-_" if ("-" in text or "_" in text) else None
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded, altchars=alt, validate=True)


def read_envelope(path: Path) -> dict:
    """The single DSSE envelope of an attestation file; `InputError` if it is not one."""
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(lines) != 1:
            raise ValueError(f"expected one envelope line, found {len(lines)}")
        env = json.loads(lines[0])
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"not a DSSE attestation: {first_line(exc)}", path) from None
    if not (isinstance(env, dict) and isinstance(env.get("payloadType"), str) and isinstance(env.get("payload"), str)
            and isinstance(env.get("signatures"), list)):
        raise InputError("not a DSSE envelope (needs payloadType, payload and signatures)", path)
    return env


def verify_envelope(env: Mapping, public_key) -> bool:
    """True if some signature in `env` verifies under `public_key` (keyids are hints only)."""
    from cryptography.exceptions import InvalidSignature

    try:
        payload = _b64decode(env["payload"])
    except (ValueError, binascii.Error):
        return False
    message = pae(env["payloadType"], payload)
    for s in env["signatures"]:
        try:
            public_key.verify(_b64decode(s["sig"]), message)
            return True
        except (InvalidSignature, KeyError, TypeError, ValueError, binascii.Error):
            continue
    return False


def check_attestation(cert_dir: str | Path, body: Mapping, trusted_key=None) -> tuple[str, list[str]]:
    """(status line, problems) for the attestation beside a certificate; see the module docstring."""
    path = Path(cert_dir) / ATTESTATION_FILE
    if not path.is_file():
        if trusted_key is not None:
            return "signature: missing", [f"signature: no {ATTESTATION_FILE} beside the certificate "
                                          f"(it is unsigned, but --trusted-key was given)"]
        return f"signature: unsigned (no {ATTESTATION_FILE})", []
    env = read_envelope(path)
    problems = []
    if env["payloadType"] != PAYLOAD_TYPE:
        problems.append(f"attestation: payloadType {env['payloadType']!r} is not {PAYLOAD_TYPE}")
    try:
        stmt = json.loads(_b64decode(env["payload"]).decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return "signature: unreadable", [f"attestation: {ATTESTATION_FILE} payload is not base64 JSON"]
    if not isinstance(stmt, dict) or stmt.get("_type") != STATEMENT_TYPE or stmt.get("predicateType") != PREDICATE_TYPE:
        problems.append("attestation: payload is not a mansu-audit in-toto Statement v1")
    elif _canonical(stmt.get("predicate")) != _canonical(body):
        problems.append("attestation: the signed predicate differs from the certificate body (body edited)")
    elif stmt.get("subject") != subjects(body):
        problems.append("attestation: subjects differ from the candidate's recorded weight files")
    if trusted_key is None:
        if not env["signatures"]:
            return "signature: unsigned", problems
        ids = ", ".join(str(s.get("keyid", "?"))[:16] for s in env["signatures"] if isinstance(s, dict))
        return f"signature: signed (keyid {ids}…), not checked: pass --trusted-key PUB", problems
    if not env["signatures"]:
        return "signature: unsigned", problems + ["signature: certificate is unsigned, but --trusted-key was given"]
    if not verify_envelope(env, trusted_key):
        return "signature: INVALID", problems + [f"signature: no signature verifies under the trusted key "
                                                 f"(keyid {keyid(trusted_key)[:16]}…)"]
    return f"signature: valid (Ed25519, keyid {keyid(trusted_key)[:16]}…)", problems
