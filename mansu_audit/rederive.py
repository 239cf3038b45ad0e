"""Re-derive a certificate from its own per-item vectors, and name every mismatch (`verify`).

A certificate's body records, per split, the item ids, the answer key, the number
of choices per item and every model's prediction per item, plus the policy. From
these alone this module recomputes, with the same code the certificate was made
with (`desiderata.split_statistics`, `verdicts.k_statistics`,
`verdicts.guard_findings`, `verdicts.decide`) and the recorded bootstrap seed and
replicate count:

1. consistency: the item counts (`benchmark.splits` vs `per_item`), the
   quantizer list vs the variants that have predictions, predictions in range,
   the policy values vs their recorded SHA-256 and the bootstrap seed;
2. every statistic and CI under `statistics.forget_eval`, `retain_eval` and
   (when present) `relearn_heldout` and `cross_scoring.statistics` (the second
   formulation, `crosscheck`), field by field (point, low, high, se, mde, n, B,
   seed, level, method);
3. the guard findings, every desideratum's verdict (statistic, estimate,
   threshold, reason), the required desiderata and the overall verdict.

CAD is not re-derivable from the body (per-item attributions are not stored); S is
re-derived from the recorded CAD and control estimates. Schema-1 certificates
(variant "fp32", guard findings as text, no per-item choice counts) are re-derived
with the schema-1 rules (`rules=1`), choice counts taken from the recorded chance,
and their guard text is not compared (only the verdicts it caused).

An edit that recomputes `body_sha256` but changes a verdict, a CI, a threshold,
an item count or the quantizer list therefore fails here; an edit that changes
everything consistently (per-item predictions included) is caught only by a
signature.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from mansu_audit.crosscheck import SINCE_VERSION as CROSS_SINCE, cross_statistics, read_section as read_cross
from mansu_audit.crosscheck import version_tuple
from mansu_audit.desiderata import split_statistics, variant_keys
from mansu_audit.policy import Policy
from mansu_audit.stats import Estimate
from mansu_audit.verdicts import (GuardFinding, K_AFTER, K_BASE, K_BEFORE, S_CEILING_SINCE, SplitItems,
                                  cross_informative, cross_verdict, decide, guard_findings, k_statistics)

ATOL = 1e-9
ESTIMATE_FIELDS = ("point", "low", "high", "se", "mde", "n", "B", "seed", "level", "method")


def schema_version_of(body: Mapping) -> int:
    """2 for bodies written with the 'unquantized' variant record, else 1."""
    return 2 if "unquantized" in body else 1


def unquantized_label(body: Mapping) -> str:
    return "unquantized" if schema_version_of(body) >= 2 else "fp32"


def scoring_of(body: Mapping) -> str:
    """How the certificate's items were scored (`prompting.scoring`; letter when not recorded)."""
    return str((body.get("prompting") or {}).get("scoring", "letter"))


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= ATOL
    return a == b


def compare_estimate(where: str, recorded: Mapping | None, derived: Estimate | None) -> list[str]:
    if recorded is None and derived is None:
        return []
    if recorded is None or derived is None:
        return [f"{where}: recorded {'nothing' if recorded is None else 'an estimate'}, re-derived "
                f"{'nothing' if derived is None else _short(derived.to_dict())}"]
    d = derived.to_dict()
    out = []
    for k in ESTIMATE_FIELDS:
        if not _same(recorded.get(k), d.get(k)):
            out.append(f"{where}.{k}: recorded {recorded.get(k)!r}, re-derived {d.get(k)!r}")
    return out


def _short(e: Mapping) -> str:
    return f"{e.get('point')} [{e.get('low')}, {e.get('high')}]"


class _Stop(Exception):
    """Raised when the per-item data cannot be re-derived at all (the message says why)."""


def _split_view(body: Mapping, split: str, keys: list[str], label: str, default_k: int):
    """(correct vectors by v2 key, SplitItems) of one split, after checking lengths and ranges."""

    per = body["per_item"].get(split)
    if per is None:
        raise _Stop(f"per_item.{split}: missing")
    n = len(per["ids"])
    if len(per["answers"]) != n:
        raise _Stop(f"per_item.{split}: {len(per['answers'])} answers for {n} items")
    k = np.asarray(per.get("num_choices", [default_k] * n), dtype=np.int64)
    if len(k) != n:
        raise _Stop(f"per_item.{split}: {len(k)} choice counts for {n} items")
    stored = {key: key.replace("/unquantized", f"/{label}") for key in keys}
    have = set(per["predictions"])
    if have != set(stored.values()):
        raise _Stop(f"per_item.{split}: predictions for {sorted(have)}, but the certificate's quantizers "
                    f"imply {sorted(stored.values())}")
    answers = np.asarray(per["answers"], dtype=np.int64)
    if (answers >= k).any():
        raise _Stop(f"per_item.{split}: an answer outside its item's choices")
    preds = {}
    for key, name in stored.items():
        p = np.asarray(per["predictions"][name], dtype=np.int64)
        if len(p) != n:
            raise _Stop(f"per_item.{split}.predictions.{name}: {len(p)} predictions for {n} items")
        if (p < 0).any() or (p >= k).any():
            raise _Stop(f"per_item.{split}.predictions.{name}: a prediction outside its item's choices")
        preds[key] = p
    recorded_n = body.get("benchmark", {}).get("splits", {}).get(split)
    if recorded_n is not None and recorded_n != n:
        raise _Stop(f"benchmark.splits.{split}: recorded {recorded_n} items, per_item holds {n}")
    correct = {key: p == answers for key, p in preds.items()}
    return correct, SplitItems(split, answers, preds, k)


def rederive(body: Mapping) -> list[str]:
    """Every mismatch between the body and what its per-item vectors and policy give (empty: none)."""
    try:
        return _rederive(body)
    except _Stop as stop:
        return [f"re-derivation impossible: {stop}"]
    except (KeyError, TypeError, ValueError) as exc:
        return [f"re-derivation impossible: malformed body ({type(exc).__name__}: {exc})"]


def ceiling_rule_applies(body: Mapping) -> bool:
    """Whether S was decided with its ceiling rule: bodies of suite version >= `verdicts.S_CEILING_SINCE`."""
    return version_tuple(body.get("suite", {}).get("version", "")) >= S_CEILING_SINCE


def _rederive(body: Mapping) -> list[str]:
    rules = schema_version_of(body)
    label = unquantized_label(body)
    out: list[str] = []
    policy = Policy.from_dict(body["policy"]["values"])
    if policy.sha256() != body["policy"]["sha256"]:
        out.append("policy.values: do not match policy.sha256 (a recorded setting was changed)")
    if body["seeds"]["bootstrap"] != policy.seed:
        out.append(f"seeds.bootstrap: recorded {body['seeds']['bootstrap']}, policy seed {policy.seed}")
    quantizers = list(body["quantizers"])
    keys = variant_keys(quantizers)
    default_k = max(2, int(round(1.0 / float(body["chance"])))) if body.get("chance") else 4
    f_correct, f_items = _split_view(body, "forget_eval", keys, label, default_k)
    r_correct, r_items = _split_view(body, "retain_eval", keys, label, default_k)
    chance = f_items.chance
    if not _same(round(chance, 12), round(float(body["chance"]), 12)):
        out.append(f"chance: recorded {body['chance']!r}, re-derived {chance!r} from the items' choice counts")
    stats = split_statistics({"forget_eval": f_correct, "retain_eval": r_correct}, quantizers, policy, chance)

    recorded_stats = body["statistics"]
    for split in ("forget_eval", "retain_eval"):
        rec = recorded_stats.get(split, {})
        derived = {_stored_stat(name, label): e for name, e in stats[split].items()}
        for name in sorted(set(rec) | set(derived)):
            out += compare_estimate(f"statistics.{split}.{name}", rec.get(name), derived.get(name))

    k_stats = None
    if "relearn_heldout" in body["per_item"]:
        per = body["per_item"]["relearn_heldout"]
        answers = np.asarray(per["answers"], dtype=np.int64)
        vec = {}
        for k in (K_BASE, K_BEFORE, K_AFTER):
            p = per["predictions"].get(k)
            if p is None or len(p) != len(answers):
                raise _Stop(f"per_item.relearn_heldout.predictions.{k}: missing or of the wrong length")
            vec[k] = np.asarray(p, dtype=np.int64) == answers
        k_stats = k_statistics(vec[K_BASE], vec[K_BEFORE], vec[K_AFTER], policy)
        rec = recorded_stats.get("relearn_heldout") or {}
        for name in sorted(set(rec) | set(k_stats)):
            out += compare_estimate(f"statistics.relearn_heldout.{name}", rec.get(name), k_stats.get(name))
    elif recorded_stats.get("relearn_heldout"):
        out.append("statistics.relearn_heldout: recorded, but per_item has no relearn_heldout vectors")

    guard = guard_findings(f_items, r_items, stats["forget_eval"], stats["retain_eval"], quantizers, policy, rules,
                           scoring_of(body))
    if rules >= 2:
        recorded_guard = [GuardFinding.from_dict(g) for g in body["guard"]]
        if recorded_guard != guard:
            out.append(f"guard: recorded {[g.code + ' ' + g.variant for g in recorded_guard]}, re-derived "
                       f"{[g.code + ' ' + g.variant for g in guard]}")
    elif bool(body["guard"]) != bool(guard):
        out.append(f"guard: recorded {len(body['guard'])} finding(s), re-derived {len(guard)}")

    cross, cross_mode = None, ""
    if rules >= 2:
        cross, cross_mode, found = _rederive_cross(body, policy, chance)
        out += found

    cad_rec = recorded_stats.get("cad")
    cad = None if cad_rec is None else Estimate.from_dict(cad_rec)
    ctrl_rec = recorded_stats.get("cad_control")
    control = None if ctrl_rec is None else Estimate.from_dict(ctrl_rec)
    decision = decide(stats["forget_eval"], stats["retain_eval"], quantizers, policy, chance=chance, cad=cad,
                      cad_control=control, relearn=k_stats, guard=guard, rules=rules, cross=cross,
                      cross_scoring=cross_mode,
                      s_ceiling=ceiling_rule_applies(body))
    recorded = body["desiderata"]
    for name in sorted(set(recorded) | set(decision.verdicts)):
        rec, der = recorded.get(name), decision.verdicts.get(name)
        if rec is None or der is None:
            out.append(f"desiderata.{name}: {'not recorded' if rec is None else 'recorded'}, "
                       f"{'not re-derived' if der is None else 're-derived ' + der.verdict}")
            continue
        dd = der.to_dict()
        if rec["verdict"] != dd["verdict"]:
            out.append(f"desiderata.{name}.verdict: recorded {rec['verdict']}, re-derived {dd['verdict']}")
        if rec["statistic"] != _stored_stat(dd["statistic"], label):
            out.append(f"desiderata.{name}.statistic: recorded {rec['statistic']}, re-derived {dd['statistic']}")
        if not _same(rec["threshold"], dd["threshold"]):
            out.append(f"desiderata.{name}.threshold: recorded {rec['threshold']!r}, re-derived {dd['threshold']!r}")
        out += compare_estimate(f"desiderata.{name}.estimate", rec["estimate"], der.estimate)
        if rules >= 2 and rec["reason"] != dd["reason"]:
            out.append(f"desiderata.{name}.reason: recorded {rec['reason']!r}, re-derived {dd['reason']!r}")
    if body["verdict"] != decision.overall:
        out.append(f"verdict: recorded {body['verdict']}, re-derived {decision.overall}")
    if rules >= 2 and list(body.get("required", [])) != list(decision.required):
        out.append(f"required: recorded {body.get('required')}, re-derived {list(decision.required)}")
    return out


def _rederive_cross(body: Mapping, policy: Policy, chance: float) -> tuple[dict | None, str, list[str]]:
    """(statistics, mode, mismatches) of the body's second formulation (`crosscheck`), from its per-item vectors,
    tied to per_item.forget_eval (same ids, answers and choice counts). A body of suite version >= 0.3.0 must
    carry the section (so deleting it is caught); older bodies are re-derived without it."""
    rec = body.get("cross_scoring")
    if rec is None:
        version = body.get("suite", {}).get("version", "")
        if version_tuple(version) >= CROSS_SINCE:
            return None, "", [f"cross_scoring: missing (every certificate of mansu-audit >= "
                              f"{'.'.join(map(str, CROSS_SINCE))} records it; this one says {version})"]
        return None, "", []
    if rec.get("scoring") is None:
        return None, "", []
    try:
        ids, answers, predictions = read_cross(rec)
    except (KeyError, TypeError, ValueError) as exc:
        raise _Stop(f"cross_scoring.per_item: unreadable ({exc})") from None
    forget = body["per_item"]["forget_eval"]
    if ids != list(forget["ids"]) or answers.tolist() != list(forget["answers"]):
        raise _Stop("cross_scoring.per_item: ids or answers differ from per_item.forget_eval")
    k = np.asarray(forget.get("num_choices", [4] * len(ids)), dtype=np.int64)
    for key, p in predictions.items():
        if len(p) != len(ids) or (p < 0).any() or (p >= k).any():
            raise _Stop(f"cross_scoring.per_item.predictions.{key}: wrong length or a prediction outside its "
                        f"item's choices")
    mode = str(rec["scoring"])
    cross = cross_statistics(answers, predictions, policy)
    out = []
    for name in sorted(set(rec.get("statistics", {})) | set(cross)):
        out += compare_estimate(f"cross_scoring.statistics.{name}", rec.get("statistics", {}).get(name),
                                cross.get(name))
    informative = cross_informative(cross, policy, chance)
    if rec.get("informative") != informative:
        out.append(f"cross_scoring.informative: recorded {rec.get('informative')}, re-derived {informative}")
    v_x = cross_verdict(cross, policy, chance, mode)[0]
    if rec.get("verdict_F") != v_x:
        out.append(f"cross_scoring.verdict_F: recorded {rec.get('verdict_F')}, re-derived {v_x}")
    return cross, mode, out


def _stored_stat(name: str, label: str) -> str:
    """A statistic's name as a certificate of this schema stores it ('acc[base/fp32]' in schema 1)."""
    return name.replace("/unquantized]", f"/{label}]")


def derived_guard(body: Mapping):
    """The guard findings of a certificate, re-derived from its per-item vectors (for schema-1 bodies)."""

    policy = Policy.from_dict(body["policy"]["values"])
    quantizers = list(body["quantizers"])
    keys = variant_keys(quantizers)
    label = unquantized_label(body)
    default_k = max(2, int(round(1.0 / float(body["chance"])))) if body.get("chance") else 4
    f_correct, f_items = _split_view(body, "forget_eval", keys, label, default_k)
    r_correct, r_items = _split_view(body, "retain_eval", keys, label, default_k)
    stats = split_statistics({"forget_eval": f_correct, "retain_eval": r_correct}, quantizers, policy,
                             f_items.chance)
    return guard_findings(f_items, r_items, stats["forget_eval"], stats["retain_eval"], quantizers, policy,
                          schema_version_of(body), scoring_of(body))
