"""The desiderata F, R, Q, S (and K) from per-item results (SPEC §3).

Inputs are per-item MCQ results of the base θ0 and the candidate θu, unquantized
(variant "unquantized": the model in the dtype it was loaded in, recorded in the
certificate) and under each quantizer, on `forget_eval` and `retain_eval`. All
statistics of one split come from one paired bootstrap (same resampled items
for every model and quantizer); the two splits hold different items, so each
has its own resample. K's relearning vectors (held-out forget items) get their
own paired bootstrap (`verdicts.k_statistics`).

This module computes statistics and guard findings; every verdict rule (F, R,
Q, S, K, the guard's caps, `require`, overall) lives in `verdicts.decide`, which
the matrix's seed pooling and `verify`'s re-derivation use too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from mansu_audit.evaluate import MCQResult
from mansu_audit.policy import Policy
from mansu_audit.stats import Estimate, paired_bootstrap
from mansu_audit.verdicts import (BASE, CANDIDATE, FAIL, INCONCLUSIVE, K_AFTER, K_BASE, K_BEFORE, NOT_COMPUTED,
                                  PASS, UNQUANTIZED, GuardFinding, SplitItems, Verdict, bootstrap_settings, decide,
                                  guard_findings,
                                  k_statistics, overall_verdict, variant_key, verdict_at_least, verdict_at_most,
                                  verdict_ptq_gap, worst)

__all__ = ["PASS", "FAIL", "INCONCLUSIVE", "NOT_COMPUTED", "UNQUANTIZED", "BASE", "CANDIDATE", "Verdict",
           "GuardFinding", "Assessment", "assess", "variant_key", "verdict_at_least", "verdict_at_most",
           "verdict_ptq_gap", "overall_verdict", "worst", "forget_statistics", "retain_statistics",
           "split_statistics", "split_items"]


@dataclass
class Assessment:
    """Everything the certificate reports about the desiderata."""

    verdicts: dict[str, Verdict]  # "F", "R", "Q", "S", "Q[<quantizer>]" and "K" when computed
    overall: str
    statistics: dict[str, dict[str, Estimate]]  # split -> statistic name -> estimate
    guard: list[GuardFinding] = field(default_factory=list)
    quantizers: tuple[str, ...] = ()
    chance: float = 0.25
    required: tuple[str, ...] = ()
    cad_control: Estimate | None = None
    relearn: dict[str, MCQResult] | None = None  # K's per-item results on held-out forget items

    def to_dict(self) -> dict:
        return {"overall": self.overall, "chance": self.chance, "quantizers": list(self.quantizers),
                "verdicts": {k: v.to_dict() for k, v in self.verdicts.items()},
                "statistics": {s: {k: e.to_dict() for k, e in st.items()} for s, st in self.statistics.items()},
                "guard": [g.to_dict() for g in self.guard], "required": list(self.required)}


def forget_statistics(quantizers: Sequence[str], chance: float) -> dict:
    """Statistic functions of the forget split's per-vector means (SPEC §3 F and Q)."""
    b, c = variant_key(BASE, UNQUANTIZED), variant_key(CANDIDATE, UNQUANTIZED)
    stats = {"D_F": lambda m: m[b] - m[c], "KR": lambda m: (m[b] - m[c]) / (m[b] - chance)}
    for q in quantizers:
        bq, cq = variant_key(BASE, q), variant_key(CANDIDATE, q)
        stats[f"G_Q[{q}]"] = lambda m, cq=cq: m[cq] - m[c]
        stats[f"quantized_forget_drop[{q}]"] = lambda m, cq=cq: m[b] - m[cq]
        stats[f"recovery_fraction[{q}]"] = lambda m, cq=cq: (m[cq] - m[c]) / (m[b] - m[c])
        stats[f"base_gap[{q}]"] = lambda m, bq=bq: m[bq] - m[b]
        stats[f"diff_in_diff[{q}]"] = lambda m, bq=bq, cq=cq: (m[cq] - m[c]) - (m[bq] - m[b])
    return stats


def retain_statistics(quantizers: Sequence[str]) -> dict:
    """Statistic functions of the retain split (SPEC §3 R, and R re-checked under each quantizer)."""
    b, c = variant_key(BASE, UNQUANTIZED), variant_key(CANDIDATE, UNQUANTIZED)
    stats = {"D_R": lambda m: m[b] - m[c]}
    for q in quantizers:
        cq = variant_key(CANDIDATE, q)
        stats[f"retain_drop[{q}]"] = lambda m, cq=cq: m[b] - m[cq]  # R re-checked on the deployed model
    return stats


def _accuracy_statistics(keys: Sequence[str]) -> dict:
    return {f"acc[{k}]": (lambda m, k=k: m[k]) for k in keys}


def variant_keys(quantizers: Sequence[str]) -> list[str]:
    return [variant_key(r, v) for r in (BASE, CANDIDATE) for v in (UNQUANTIZED, *quantizers)]


def split_statistics(correct: Mapping[str, Mapping[str, np.ndarray]], quantizers: Sequence[str], policy: Policy,
                     chance: float) -> dict[str, dict[str, Estimate]]:
    """Every estimate of both splits from per-item 0/1 (or seed-averaged) vectors keyed by variant_key."""
    keys = variant_keys(quantizers)
    boot = bootstrap_settings(policy)
    fstats = {**_accuracy_statistics(keys), **forget_statistics(quantizers, chance)}
    rstats = {**_accuracy_statistics(keys), **retain_statistics(quantizers)}
    return {"forget_eval": paired_bootstrap({k: correct["forget_eval"][k] for k in keys}, fstats, **boot),
            "retain_eval": paired_bootstrap({k: correct["retain_eval"][k] for k in keys}, rstats, **boot)}


def split_items(name: str, results: Mapping[str, MCQResult]) -> SplitItems:
    first = next(iter(results.values()))
    return SplitItems(name, first.answers, {k: r.predictions for k, r in results.items()}, first.num_choices)


def assess(forget: Mapping[str, MCQResult], retain: Mapping[str, MCQResult], quantizers: Sequence[str],
           policy: Policy, *, num_choices: int | None = None, cad: Estimate | None = None,
           cad_control: Estimate | None = None, relearn: Mapping[str, MCQResult] | None = None,
           scoring: str = "letter", cross: Mapping[str, Estimate] | None = None,
           cross_scoring: str = "", s_ceiling: bool = True) -> Assessment:
    """Statistics, guard findings and verdicts (`verdicts.decide`) from per-item results.

    `forget` / `retain` map `variant_key(role, variant)` to that model's results on
    the split, for roles base and candidate and variants "unquantized" + `quantizers`.
    `cad` is the CAD estimate (S; None leaves S "NOT COMPUTED") and `cad_control` the
    random-circuit control's (without it S cannot PASS). `relearn` maps K_BASE,
    K_BEFORE, K_AFTER to results on the same held-out forget items (K; None: K not
    computed). `scoring` (how the items were scored) sets the below-chance bound
    (`verdicts.below_chance_margin`). `cross` / `cross_scoring`: forget_eval scored in a second formulation
    (`crosscheck.cross_statistics`; F takes the worse of both). `s_ceiling`: S's ceiling rule (`verdicts`). Chance is each split's own mean of 1/k_i; `num_choices` is accepted
    for compatibility (the letter check uses the items' own choice counts).
    """
    quantizers = tuple(quantizers)
    keys = variant_keys(quantizers)
    for split_name, results in (("forget_eval", forget), ("retain_eval", retain)):
        missing = [k for k in keys if k not in results]
        if missing:
            raise ValueError(f"{split_name}: no results for {', '.join(missing)}")
        ids = {results[k].ids for k in keys}
        if len(ids) != 1:
            raise ValueError(f"{split_name}: results are not aligned on the same items (cannot pair)")
    first = variant_key(BASE, UNQUANTIZED)
    chance = forget[first].chance
    stats = split_statistics({"forget_eval": {k: forget[k].correct for k in keys},
                              "retain_eval": {k: retain[k].correct for k in keys}}, quantizers, policy, chance)
    f_items = split_items("forget_eval", {k: forget[k] for k in keys})
    r_items = split_items("retain_eval", {k: retain[k] for k in keys})
    guard = guard_findings(f_items, r_items, stats["forget_eval"], stats["retain_eval"], quantizers, policy,
                           scoring=scoring)
    k_stats = None
    if relearn is not None:
        missing = [k for k in (K_BASE, K_BEFORE, K_AFTER) if k not in relearn]
        if missing:
            raise ValueError(f"relearning results lack {', '.join(missing)}")
        if len({relearn[k].ids for k in (K_BASE, K_BEFORE, K_AFTER)}) != 1:
            raise ValueError("relearning results are not aligned on the same held-out items (cannot pair)")
        k_stats = k_statistics(relearn[K_BASE].correct, relearn[K_BEFORE].correct, relearn[K_AFTER].correct, policy)
        stats["relearn_heldout"] = k_stats
    d = decide(stats["forget_eval"], stats["retain_eval"], quantizers, policy, chance=chance, cad=cad,
               cad_control=cad_control, relearn=k_stats, guard=guard, cross=cross, cross_scoring=cross_scoring,
               s_ceiling=s_ceiling)
    return Assessment(d.verdicts, d.overall, stats, d.guard, quantizers, chance, d.required, cad_control,
                      None if relearn is None else dict(relearn))


def cad_control_from_details(details: Mapping | None) -> Estimate | None:
    """The random-circuit control's CAD from CAD details (`CADResult.to_dict()`), if they have one."""
    control = None if details is None else details.get("random_circuit_cad")
    return None if control is None else Estimate.from_dict(control)


def per_item_record(results: Mapping[str, Mapping[str, MCQResult]],
                    relearn: Mapping[str, MCQResult] | None = None) -> dict:
    """The certificate's `per_item`: per split ids, answers, choices per item and every model's predictions.

    `relearn_heldout` (K's held-out forget items) is added when the relearning attack ran.
    Everything `verify` needs to re-derive statistics, guard and verdicts is here.
    """
    splits = dict(results)
    if relearn is not None:
        splits["relearn_heldout"] = relearn
    out = {}
    for split, by_key in splits.items():
        first = next(iter(by_key.values()))
        out[split] = {"ids": list(first.ids), "answers": first.answers.tolist(),
                      "num_choices": first.num_choices.astype(int).tolist(),
                      "predictions": {k: r.predictions.tolist() for k, r in sorted(by_key.items())}}
    return out


def unquantized_record(models: Mapping) -> dict:
    """What "unquantized" means in this certificate: each model's parameter dtype and device type ("cpu",
    "cuda", "mps": no index, so the body stays identical on another GPU of the same kind) as evaluated."""
    out, device = {}, {}
    for role, m in models.items():
        p = next(m.model.parameters())
        out[role], device[role] = str(p.dtype).replace("torch.", ""), p.device.type
    return {"label": UNQUANTIZED, "dtype": out, "device": device}
