"""The certificate file (SPEC §10): versioned JSON, hashed body, atomic writes.

Layout: `{"schema", "schema_version", "body_sha256", "created_utc", "body"}`.
The body holds every verdict, statistic, policy, hash and per-item prediction;
its SHA-256 is over canonical JSON (sorted keys, no spaces), so any edit shows.
The creation time sits outside the body: the same inputs give a byte-identical
body. The schema (`schemas/certificate.schema.json`, shipped in the package) is
checked on write and on read, with the `jsonschema` library.

Schema versions: 2 (written now) names the unquantized variant "unquantized"
(with each model's dtype in `body.unquantized`), stores guard findings as
records, the required desiderata, per-item choice counts, the random-circuit
control's CAD and, when the relearning attack ran, K's vectors and statistics.
Version 1 (variant "fp32", guard findings as text) is still read, verified and
rendered; `unquantized_label`, `guard_messages` and `guard_records` hide the
difference from readers.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Mapping

from mansu_audit.cache import canonical_json, state_dict_sha256, tokenizer_sha256
from mansu_audit.data import resolve_benchmark
from mansu_audit.errors import InputError
from mansu_audit.io import atomic_write_bytes, read_json_object, sha256_file
from mansu_audit.loading import TOKENIZER_FILES, load_model, model_file_map
from mansu_audit.policy import load_policy
from mansu_audit.rederive import derived_guard, rederive, schema_version_of, unquantized_label as label
from mansu_audit.verdicts import GuardFinding, Outcome, Verdict

SCHEMA_NAME = "mansu-audit-certificate"
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
CERTIFICATE_FILE = "certificate.json"
RESULTS_FILE = "results.json"


@lru_cache(maxsize=1)
def certificate_schema() -> dict:
    text = resources.files("mansu_audit").joinpath("schemas/certificate.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def schema_errors(document: Mapping) -> list[str]:
    """Every schema violation as 'path: message' (empty when valid)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(certificate_schema())
    out = []
    for err in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        out.append(f"{where}: {err.message}")
    return out


def body_sha256(body: Mapping) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class Certificate:
    """A certificate in memory. `body` is plain JSON data; everything else derives from it."""

    body: dict
    created_utc: str
    schema_version: int = SCHEMA_VERSION

    @property
    def verdict(self) -> Outcome:
        """The overall verdict, typed (an `Outcome`, which equals its stored string)."""
        return Outcome(self.body["verdict"])

    @property
    def verdicts(self) -> dict[str, Verdict]:
        """Every desideratum's verdict record, typed: {"F": Verdict(...), ..., "Q[nf4]": ...}."""
        return {name: Verdict.from_dict(d) for name, d in self.body["desiderata"].items()}

    @property
    def body_sha256(self) -> str:
        return body_sha256(self.body)

    @property
    def desiderata(self) -> dict:
        """The body's desiderata as stored (plain JSON dicts; `verdicts` is the typed view)."""
        return self.body["desiderata"]

    def document(self) -> dict:
        return {"schema": SCHEMA_NAME, "schema_version": self.schema_version, "body_sha256": self.body_sha256,
                "created_utc": self.created_utc, "body": self.body}

    def to_json(self) -> str:
        return json.dumps(self.document(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"

    def validate(self) -> None:
        errors = schema_errors(self.document())
        if errors:
            raise ValueError(f"certificate does not match its schema: {errors[0]}")

    def write(self, out_dir: str | Path, sidecar: bytes | None = None) -> Path:
        """Validate, then write `results.json` (if given) and `certificate.json`, each atomically."""
        self.validate()
        out_dir = Path(out_dir)
        if sidecar is not None:
            atomic_write_bytes(out_dir / RESULTS_FILE, sidecar)
        path = out_dir / CERTIFICATE_FILE
        atomic_write_bytes(path, self.to_json().encode("utf-8"))
        return path


def now_utc() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def read_document(path: str | Path) -> dict:
    """The raw certificate JSON (no checks beyond being a JSON object with a body)."""
    path = Path(path)
    doc = read_json_object(path, "certificate")
    if not isinstance(doc.get("body"), dict):
        raise InputError("not a mansu-audit certificate (no 'body' object)", path)
    if doc.get("schema") != SCHEMA_NAME:
        raise InputError(f"not a mansu-audit certificate (schema {doc.get('schema')!r})", path)
    if doc.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise InputError(f"unsupported certificate schema version {doc.get('schema_version')!r} "
                         f"(this suite reads {', '.join(map(str, READABLE_SCHEMA_VERSIONS))})", path)
    return doc


def read_certificate(path: str | Path) -> Certificate:
    """Read, check the body hash and validate against the schema; `InputError` otherwise."""
    doc = read_document(path)
    if body_sha256(doc["body"]) != doc.get("body_sha256"):
        raise InputError("certificate body was edited (its SHA-256 does not match body_sha256)", path)
    errors = schema_errors(doc)
    if errors:
        raise InputError(f"certificate does not match its schema: {errors[0]}", path)
    return Certificate(doc["body"], doc["created_utc"], doc["schema_version"])


def body_schema_version(body: Mapping) -> int:
    """The schema version a body was written under (2 has the 'unquantized' record)."""

    return schema_version_of(body)


def unquantized_label(body: Mapping) -> str:
    """The variant name of the unquantized model in this body: 'unquantized' (schema 2) or 'fp32' (1)."""

    return label(body)


def guard_messages(body: Mapping) -> list[str]:
    """The guard findings as lines of text (schema 1 stored text, schema 2 records)."""
    return [g if isinstance(g, str) else g["message"] for g in body["guard"]]


def guard_records(body: Mapping) -> list:
    """The guard findings as `GuardFinding`s; a schema-1 body's are re-derived from its per-item vectors."""

    if body_schema_version(body) >= 2:
        return [GuardFinding.from_dict(g) for g in body["guard"]]

    return derived_guard(body)


def _fmt(v) -> str:
    return "    -" if v is None else f"{v:+.3f}"


def format_verdict_table(body: Mapping) -> str:
    """The verdict table printed by `certify` (and readable from any certificate)."""
    d = body["desiderata"]
    order = ["F", "R", *sorted(k for k in d if k.startswith("Q[")), "Q", "S", *(["K"] if "K" in d else [])]
    level = body.get("policy", {}).get("values", {}).get("level", 0.95)
    lines = [f"{'':<12}{'verdict':<14}{'statistic':<22}{'point':>8}   {f'{level:.0%} CI':<19}{'threshold':>9}{'MDE':>8}"]
    for name in order:
        v = d[name]
        e = v["estimate"]
        label = "Q (worst)" if name == "Q" else name
        if e is None:
            point, ci, mde = "    -", "-", "-"
        else:
            point = _fmt(e["point"])
            ci = f"[{_fmt(e['low'])}, {_fmt(e['high'])}]"
            mde = "-" if e.get("mde") is None else f"{e['mde']:.3f}"
        thr = "-" if v["threshold"] is None else f"{v['threshold']:.3f}"
        lines.append(f"{label:<12}{v['verdict']:<14}{v['statistic']:<22}{point:>8}   {ci:<19}{thr:>9}{mde:>8}"
                     + (f"   {v['reason']}" if v["reason"] else ""))
    lines.append(f"{'overall':<12}{body['verdict']}")
    if "required" in body:
        others = [k for k in ("F", "R", "Q", "S", "K") if k in d and k not in body["required"]]
        lines.append(f"{'certified':<12}{', '.join(body['required'])}"
                     + (f"   (reported, not certified: {', '.join(others)})" if others else ""))
    return "\n".join(lines)


def _file_kind(name: str) -> str:
    name = name.rsplit("/", 1)[-1]  # adapter certificates prefix names with base/ and adapter/
    if name in TOKENIZER_FILES:
        return "tokenizer"
    if name.endswith(".json") and not name.endswith(".index.json"):
        return "config"
    return "weights"


def _compare_files(label: str, recorded: Mapping[str, str], current: Mapping[str, str],
                   kind=lambda name: "") -> list[str]:
    changes = []
    for name in sorted(set(recorded) | set(current)):
        what = f"{label} {kind(name)}".rstrip()
        if name not in current:
            changes.append(f"{what}: file '{name}' is missing")
        elif name not in recorded:
            changes.append(f"{what}: new file '{name}' was not certified")
        elif recorded[name] != current[name]:
            changes.append(f"{what}: '{name}' changed (sha256 {current[name][:12]}…, certified {recorded[name][:12]}…)")
    return changes


def _verify_model(role: str, record: Mapping, spec: str | None) -> list[str]:
    spec = spec or record.get("path")
    if spec is None:
        return [f"{role}: certified as an in-memory model; pass --{role} FOLDER to check its weights"]
    if not record["files"]:  # certified in memory: compare the weights (and tokenizer) themselves

        loaded = load_model(spec)
        changes = []
        if state_dict_sha256(loaded.model) != record["state_dict_sha256"]:
            changes.append(f"{role} weights: state dict differs from the certified one")
        if record.get("tokenizer_sha256") not in (None, tokenizer_sha256(loaded.tokenizer)):
            changes.append(f"{role} tokenizer: vocabulary or special tokens differ from the certified one")
        return changes
    try:  # the same file map loading built: folder, GGUF file, or LoRA adapter + its base (base/, adapter/)
        files = model_file_map(spec)
    except InputError as exc:
        raise InputError(f"{role} model: {exc.message}", exc.path, exc.line) from None
    current = {name: sha256_file(p) for name, p in files.items()}
    return _compare_files(role, record["files"], current, _file_kind)


def verify_certificate(path: str | Path, *, base: str | None = None, candidate: str | None = None,
                       benchmark: str | None = None, policy: str | Path | None = None) -> list[str]:
    """Every difference between a certificate and the files it certifies (empty list: all match).

    Checks, in order: the body's own hash (an edited certificate stops here), the
    schema, the re-derivation of every statistic, CI, guard finding and verdict from
    the body's own per-item vectors and policy (`rederive`; each mismatch named),
    both models' weight/config/tokenizer files, the benchmark files, the policy
    file and the `results.json` sidecar. (A signature check belongs after the schema.)
    """

    path = Path(path)
    doc = read_document(path)
    if body_sha256(doc["body"]) != doc.get("body_sha256"):
        return ["certificate body edited (its SHA-256 no longer matches body_sha256)"]
    errors = schema_errors(doc)
    if errors:
        raise InputError(f"certificate does not match its schema: {errors[0]}", path)
    body = doc["body"]
    changes = [f"re-derivation: {m}" for m in rederive(body)]
    changes += _verify_model("base", body["models"]["base"], base)
    changes += _verify_model("candidate", body["models"]["candidate"], candidate)

    root = resolve_benchmark(benchmark or body["benchmark"]["path"])
    current = {rel: sha256_file(root / rel) for rel in body["benchmark"]["files"] if (root / rel).is_file()}
    changes += _compare_files("data", body["benchmark"]["files"], current)

    recorded = body["policy"]
    source = policy or recorded["source"]
    if source is not None:
        source = Path(source)
        if not source.is_file():
            changes.append(f"policy: file '{source}' is missing")
        else:
            if load_policy(source).sha256() != recorded["sha256"]:
                changes.append(f"policy: '{source}' gives different settings than the certified ones")
            elif recorded["source_sha256"] is not None and sha256_file(source) != recorded["source_sha256"]:
                changes.append(f"policy: '{source}' was edited (same settings, different file)")

    for name, digest in body["sidecars"].items():
        side = path.parent / name
        if not side.is_file():
            changes.append(f"sidecar: '{name}' is missing")
        elif sha256_file(side) != digest:
            changes.append(f"sidecar: '{name}' was edited")
    return changes
