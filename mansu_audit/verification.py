"""`verify(certificate, ...)`: every check `mansu-audit verify` makes, as one function over plain data.

Always: the attestation beside the certificate (signature status; checked against
`trusted_key` when given), the body's own hash and schema, the re-derivation of
every statistic, CI, guard finding and verdict from the body's per-item vectors
(`rederive`), and the recorded SHA-256 of both models, the benchmark, the policy
file and the sidecar (`certificate.verify_certificate`).

With `recompute=True`, a full re-certification (`recertify`): the evaluations are
run again through `certify.certify`, the same pipeline that made certificates,
with NOTHING reused from any cache (`NoCache`), on the models and data recorded
in the body (or given here), and driven by the body's recorded settings:

- quantizers (the keys of `body.quantizers`; artifact variants (GGUF file, bitsandbytes or
  GPTQ folder) need their path, `artifacts={name: path}`, since only its name and digest are
  recorded);
- policy (`body.policy.values`: thresholds, bootstrap size, seed, level, K attack
  budget); a `policy` file given here is only checked against it, not used;
- device (the models' recorded "device ..." loading note; `device` overrides it)
  and dtype (`body.unquantized.dtype`, else the loading note);
- chat template (`prompting.mode`), `prompting.truncate`, `prompting.scoring`
  (when the installed `certify` has scoring modes), the subject line (part of the
  benchmark), the recorded command;
- K: the relearning attack runs again ("on") when the body has `recovery`; an
  oracle's path is not recorded, so a body with `recovery.oracle` needs `oracle`;
- the consistency check runs again when the body has `consistency`, and the second
  formulation (`cross_scoring`) when the body has it;

The batch size is certify's default (predictions do not depend on it). Then
`compare_bodies` names each difference in one line: per-item predictions (split,
variant, model, how many items differ, the first differing item id), every
statistic and CI (including K's), the guard findings, every desideratum's verdict
and the overall verdict, and the sections `chance`, `required`, `quantizers`,
`unquantized`, `prompting`, `consistency` and `recovery` (first differing field).
Not compared: paths, the environment and suite version (they name where and with
what the re-run happened), the sidecar (float margins).

CAD (S): by default NOT recomputed: the recorded CAD and random-circuit control
estimates are handed to the re-run as given, so S's verdict is re-derived but the
attribution itself is not compared (`Verification.notes` says so). With
`recompute_cad=True` the bundled EAP-IG + CAD runs again and `statistics.cad` /
`cad_control` are compared like any statistic (meaningful for certificates made
with `cad="auto"`, the CLI's only CAD source; it costs an attribution run).

Inputs that cannot be re-run exactly (a model certified in memory or whose path is
gone, a missing benchmark, an artifact or oracle not given) raise `InputError`
before anything loads.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from mansu_audit.attest import check_attestation, load_public_key
from mansu_audit.cache import NoCache
from mansu_audit.certificate import Certificate, read_document, verify_certificate
from mansu_audit.certify import certify
from mansu_audit.data import resolve_benchmark
from mansu_audit.errors import InputError
from mansu_audit.policy import Policy
from mansu_audit.rederive import ATOL, ESTIMATE_FIELDS, ceiling_rule_applies, unquantized_label
from mansu_audit.stats import Estimate

COMPARED_SECTIONS = ("chance", "required", "quantizers", "unquantized", "prompting", "consistency", "recovery",
                     "deployment", "cross_scoring")
CAD_NOT_COMPARED = ("CAD (S) not recomputed: the recorded CAD and control estimates were used as given "
                    "(pass --recompute-cad to run EAP-IG again and compare)")
CAD_COMPARED = "CAD (S) recomputed with the bundled EAP-IG and compared"


@dataclass
class Verification:
    """What `verify` found. `changes`: hashes, files, signature and re-derivation; `mismatches`: the
    re-computation's differences (empty when not recomputed); `notes`: what was not compared."""

    certificate: str
    signature: str
    changes: list[str] = field(default_factory=list)
    recomputed: bool = False
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.changes and not self.mismatches

    def to_dict(self) -> dict:
        return {"certificate": self.certificate, "signature": self.signature, "changes": list(self.changes),
                "recomputed": self.recomputed, "mismatches": list(self.mismatches), "notes": list(self.notes),
                "ok": self.ok}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Verification":
        return cls(d["certificate"], d["signature"], list(d["changes"]), bool(d["recomputed"]),
                   list(d["mismatches"]), list(d["notes"]))


def verify(certificate: str | Path, *, base: str | None = None, candidate: str | None = None,
           benchmark: str | None = None, policy: str | Path | None = None, trusted_key=None,
           recompute: bool = False, recompute_cad: bool = False, oracle: str | Path | None = None,
           artifacts: Mapping[str, str | Path] | None = None, allow_pickle: bool = False,
           device: str | None = None, progress: bool = False) -> Verification:
    """Check `certificate` (a certificate.json path); see the module docstring. `trusted_key` is an Ed25519
    public key or its PEM path; `recompute=True` re-runs every evaluation without any cache and compares."""
    path = Path(certificate)
    if trusted_key is not None and not hasattr(trusted_key, "verify"):
        trusted_key = load_public_key(trusted_key)  # a bad key: InputError before anything else
    body = read_document(path)["body"]
    signature, problems = check_attestation(path.parent, body, trusted_key)
    changes = problems + verify_certificate(path, base=base, candidate=candidate, benchmark=benchmark,
                                            policy=policy)
    result = Verification(str(path), signature, changes)
    if recompute:
        fresh = recertify(body, base=base, candidate=candidate, benchmark=benchmark, oracle=oracle,
                          artifacts=artifacts, allow_pickle=allow_pickle, device=device,
                          recompute_cad=recompute_cad, progress=progress)
        result.recomputed = True
        result.mismatches = compare_bodies(body, fresh.body)
        has_cad = body.get("statistics", {}).get("cad") is not None
        result.notes.append((CAD_COMPARED if recompute_cad else CAD_NOT_COMPARED) if has_cad else
                            "CAD (S) was not computed in the certificate; nothing to compare")
    return result


# --- re-certification --------------------------------------------------------------------------------


@dataclass
class _RecordedCAD:
    """A CAD hook result carrying the certificate's own CAD and control estimates (S re-derived, not
    recomputed)."""

    cad: Estimate
    control: Estimate | None

    def to_dict(self) -> dict:
        out = {"cad": self.cad.to_dict(), "source": "recorded in the certificate (verify --recompute)"}
        if self.control is not None:
            out["random_circuit_cad"] = self.control.to_dict()
        return out


def _model_spec(role: str, record: Mapping, given: str | Path | None) -> str:
    if given is not None:
        return str(given)
    recorded = record.get("path")
    if recorded is None:
        raise InputError(f"recompute: the {role} was certified as an in-memory model (no path recorded); "
                         f"pass --{role} FOLDER")
    if not Path(recorded).exists():
        raise InputError(f"recompute: the {role} model recorded at '{recorded}' is missing; pass --{role} FOLDER")
    return recorded


def _device_note(record: Mapping) -> tuple[str | None, str | None]:
    """(device, dtype) from a model's "device cpu float32" loading note, or (None, None)."""
    for note in reversed(record.get("notes") or []):
        parts = str(note).replace(",", " ").split()
        if len(parts) >= 3 and parts[0] == "device":
            return parts[1], parts[2]
    return None, None


def _artifacts(body: Mapping, given: Mapping[str, str | Path] | None) -> dict[str, str]:
    given = dict(given or {})
    wanted = [q for q, rec in body["quantizers"].items() if (rec.get("settings") or {}).get("kind") == "artifact"]
    unknown = sorted(set(given) - set(wanted))
    if unknown:
        raise InputError(f"recompute: quantized artifact '{unknown[0]}' is not a variant of this certificate")
    for name in wanted:
        if name not in given:
            file = body["quantizers"][name]["settings"].get("artifact")
            raise InputError(f"recompute: variant '{name}' is a quantized artifact ('{file}'); its path is not "
                             f"recorded: pass --quantized-artifact {name}=PATH (the GGUF file or checkpoint folder)")
    return {name: str(given[name]) for name in wanted}


def recertify(body: Mapping, *, base=None, candidate=None, benchmark=None, oracle=None, artifacts=None,
              allow_pickle: bool = False, device: str | None = None, recompute_cad: bool = False,
              progress: bool = False) -> Certificate:
    """Certify again, from scratch (`NoCache`), under the settings recorded in `body` (module docstring)."""
    models = body["models"]
    base_spec = _model_spec("base", models["base"], base)
    cand_spec = _model_spec("candidate", models["candidate"], candidate)
    bench = benchmark if benchmark is not None else body["benchmark"]["path"]
    if benchmark is None and not Path(bench).is_dir():
        raise InputError(f"recompute: the benchmark recorded at '{bench}' is missing; pass --benchmark FOLDER")
    resolve_benchmark(bench)
    arts = _artifacts(body, artifacts)
    recovery = body.get("recovery")
    if recovery is not None and recovery.get("oracle") is not None and oracle is None:
        raise InputError("recompute: K was certified with an oracle model, whose path is not recorded; "
                         "pass --oracle MODEL")
    note_device, note_dtype = _device_note(models["candidate"])
    dtype = (body.get("unquantized") or {}).get("dtype", {}).get("candidate") or note_dtype
    prompting = body.get("prompting") or {}
    stats = body["statistics"]
    if stats.get("cad") is None:
        cad = None
    elif recompute_cad:
        cad = "auto"
    else:
        control = stats.get("cad_control")
        recorded = _RecordedCAD(Estimate.from_dict(stats["cad"]), None if control is None else Estimate.from_dict(control))
        cad = lambda *_args: recorded  # noqa: E731 - a certify CAD hook
    kwargs = {}
    if body.get("deployment") is not None:  # adapter-on-quantized-base: quantized base + the adapter's delta
        kwargs["deployment"] = body["deployment"].get("mode", "merged")
    kwargs.update(_cross_kwargs(body))
    if "s_ceiling" in inspect.signature(certify).parameters:  # S decided as the recorded suite decided it
        kwargs["s_ceiling"] = ceiling_rule_applies(body)
    if "scoring" in inspect.signature(certify).parameters:
        kwargs["scoring"] = prompting.get("scoring", "letter")
    elif prompting.get("scoring", "letter") != "letter":
        raise InputError(f"recompute: the certificate used scoring '{prompting['scoring']}', which this "
                         f"version of the suite cannot run")
    return certify(base_spec, cand_spec, bench, quantizers=[q for q in body["quantizers"] if q not in arts],
                   artifacts=arts, policy=Policy.from_dict(body["policy"]["values"]), out=None, cad=cad,
                   cache=NoCache(), allow_pickle=allow_pickle, device=device or note_device or "cpu", dtype=dtype,
                   chat_template=prompting.get("mode", "auto"), truncate=prompting.get("truncate"),
                   progress=progress, command=body.get("command"),
                   relearn="on" if recovery is not None else "skip", oracle=oracle,
                   consistency="on" if body.get("consistency") is not None else "skip", **kwargs)


def _cross_kwargs(body: Mapping) -> dict:
    """`cross_scoring=` for the re-run: the mode the body records (it rebuilds the same section, also a
    "did not run" one); "skip" for bodies of suites before the second formulation existed."""
    if "cross_scoring" not in inspect.signature(certify).parameters:
        return {}
    return {"cross_scoring": (body.get("cross_scoring") or {}).get("requested", "skip")}


# --- comparison ----------------------------------------------------------------------------------------


def _v2(name: str, label: str) -> str:
    """A variant key or statistic name with a schema-1 'fp32' renamed 'unquantized'."""
    return name if label == "unquantized" else name.replace(f"/{label}", "/unquantized")


def _describe_key(key: str) -> tuple[str, str]:
    """(variant, model) of a per-item key: 'candidate/int8' -> ('int8', 'candidate'); 'base' -> ('unquantized',
    'base') (K's held-out vectors are named by role only)."""
    model, _, variant = key.partition("/")
    return variant or "unquantized", model


def compare_predictions(recorded: Mapping, recomputed: Mapping, label: str = "unquantized") -> list[str]:
    """One line per (split, variant key) whose per-item predictions differ, and per split whose items differ."""
    out = []
    for split in sorted(set(recorded) | set(recomputed)):
        old, new = recorded.get(split), recomputed.get(split)
        if old is None or new is None:
            out.append(f"per_item.{split}: {'not recorded' if old is None else 'recorded'}, "
                       f"{'not recomputed' if new is None else 'recomputed'}")
            continue
        if list(old["ids"]) != list(new["ids"]) or list(old["answers"]) != list(new["answers"]):
            out.append(f"per_item.{split}: the items differ (recorded {len(old['ids'])}, recomputed "
                       f"{len(new['ids'])}; ids or answer key changed)")
            continue
        ids = list(old["ids"])
        old_preds = {_v2(k, label): v for k, v in old["predictions"].items()}
        for key in sorted(set(old_preds) | set(new["predictions"])):
            variant, model = _describe_key(key)
            a, b = old_preds.get(key), new["predictions"].get(key)
            if a is None or b is None:
                out.append(f"predictions {split} {key}: {'not recorded' if a is None else 'not recomputed'}")
                continue
            differ = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
            if len(a) != len(b) or differ:
                first = ids[differ[0]] if differ else ids[min(len(a), len(b))]
                out.append(f"predictions differ: split {split}, variant {variant}, model {model}: "
                           f"{len(differ) + abs(len(a) - len(b))} of {len(ids)} items (first: {first})")
    return out


def _estimate_differs(a: Mapping | None, b: Mapping | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    for k in ESTIMATE_FIELDS:
        x, y = a.get(k), b.get(k)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            if abs(float(x) - float(y)) > ATOL:
                return True
        elif x != y:
            return True
    return False


def _fmt(e: Mapping | None) -> str:
    if e is None:
        return "nothing"
    return f"{e.get('point')!r} [{e.get('low')!r}, {e.get('high')!r}] (n {e.get('n')})"


def compare_statistics(recorded: Mapping, recomputed: Mapping, label: str = "unquantized") -> list[str]:
    """One line per statistic (per split, and CAD/control) whose estimate or CI differs."""
    out = []
    for group in sorted(set(recorded) | set(recomputed)):
        old, new = recorded.get(group), recomputed.get(group)
        is_split = isinstance(old, Mapping) and "point" not in old or isinstance(new, Mapping) and "point" not in new
        if not is_split:
            if _estimate_differs(old, new):
                out.append(f"statistics.{group}: recorded {_fmt(old)}, recomputed {_fmt(new)}")
            continue
        old = {_v2(k, label): v for k, v in (old or {}).items()}
        new = dict(new or {})
        for name in sorted(set(old) | set(new)):
            if _estimate_differs(old.get(name), new.get(name)):
                out.append(f"statistics.{group}.{name}: recorded {_fmt(old.get(name))}, "
                           f"recomputed {_fmt(new.get(name))}")
    return out


def first_difference(a, b, where: str) -> str | None:
    """The path of the first differing field of two JSON values (floats within ATOL are equal), or None."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{where}.{k}: {'not recorded' if k not in a else 'not recomputed'}"
            found = first_difference(a[k], b[k], f"{where}.{k}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: recorded {len(a)} entries, recomputed {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if (numbers and abs(float(a) - float(b)) > ATOL) or (not numbers and a != b):
        return f"{where}: recorded {a!r}, recomputed {b!r}"
    return None


def compare_bodies(recorded: Mapping, recomputed: Mapping) -> list[str]:
    """Every difference between a certificate body and its re-computation, one line each (module docstring)."""
    label = unquantized_label(recorded)
    out = compare_predictions(recorded["per_item"], recomputed["per_item"], label)
    out += compare_statistics(recorded["statistics"], recomputed["statistics"], label)
    if label == "unquantized":  # schema-1 guard findings are text; their effect shows in the verdicts
        found = first_difference(recorded["guard"], recomputed["guard"], "guard")
        if found:
            out.append(found)
    for name in sorted(set(recorded["desiderata"]) | set(recomputed["desiderata"])):
        old = (recorded["desiderata"].get(name) or {}).get("verdict")
        new = (recomputed["desiderata"].get(name) or {}).get("verdict")
        if old != new:
            out.append(f"desiderata.{name}.verdict: recorded {old}, recomputed {new}")
    if recorded["verdict"] != recomputed["verdict"]:
        out.append(f"verdict: recorded {recorded['verdict']}, recomputed {recomputed['verdict']}")
    for section in COMPARED_SECTIONS:
        if section in ("required", "unquantized") and label != "unquantized":
            continue  # not recorded by schema 1
        found = first_difference(recorded.get(section), recomputed.get(section), section)
        if found:
            out.append(found)
    return out
