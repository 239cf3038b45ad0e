"""The four desiderata F, R, Q, S and their verdicts (SPEC §3).

Inputs are per-item MCQ results of the base θ0 and the candidate θu, unquantized
("fp32") and under each quantizer, on `forget_eval` and `retain_eval`. All
statistics of one split come from one paired bootstrap (same resampled items
for every model and quantizer); the two splits hold different items, so each
has its own resample.

Verdict rule: PASS if the whole CI lies on the passing side of the threshold,
FAIL if the whole CI lies on the failing side, INCONCLUSIVE otherwise. For Q
(our reading of "non-positive PTQ gap"): PASS if the point estimate is <= 0 and
the upper bound <= `max_ptq_gap`; FAIL if the lower bound is above 0 (the
quantized candidate is confidently better on the forget set) or above
`max_ptq_gap`; INCONCLUSIVE otherwise. Q is the worst over quantizers.
Overall PASS iff F, R, Q and S all PASS; FAIL if any FAILs; else INCONCLUSIVE.

Over-unlearning guard (our choice): a candidate whose retain accuracy is at
chance (upper CI <= chance + `chance_margin`) or whose outputs are degenerate
(one letter for >= `max_single_letter_fraction` of a split's items, when the
answer key is not itself that skewed) has not forgotten meaningfully: F is FAIL
and no desideratum may PASS. Under a quantizer, the same guard fails that
quantizer's Q.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from mansu_audit.evaluate import MCQResult
from mansu_audit.policy import Policy
from mansu_audit.stats import Estimate, paired_bootstrap

PASS, FAIL, INCONCLUSIVE, NOT_COMPUTED = "PASS", "FAIL", "INCONCLUSIVE", "NOT COMPUTED"
FULL_PRECISION = "fp32"
BASE, CANDIDATE = "base", "candidate"
_SEVERITY = {PASS: 0, NOT_COMPUTED: 1, INCONCLUSIVE: 1, FAIL: 2}


def variant_key(role: str, variant: str) -> str:
    """'base/fp32', 'candidate/nf4', ...: the name of one per-item vector."""
    return f"{role}/{variant}"


@dataclass(frozen=True)
class Verdict:
    """One desideratum's verdict and the statistic and threshold that decided it."""

    name: str
    verdict: str
    statistic: str
    estimate: Estimate | None
    threshold: float | None
    reason: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "verdict": self.verdict, "statistic": self.statistic,
                "estimate": None if self.estimate is None else self.estimate.to_dict(),
                "threshold": self.threshold, "reason": self.reason}


def verdict_at_least(est: Estimate, threshold: float) -> str:
    """Passing side is >= threshold (F: D_F, S: CAD)."""
    if not (np.isfinite(est.low) and np.isfinite(est.high)):
        return INCONCLUSIVE
    if est.low >= threshold:
        return PASS
    if est.high < threshold:
        return FAIL
    return INCONCLUSIVE


def verdict_at_most(est: Estimate, threshold: float) -> str:
    """Passing side is <= threshold (R: D_R)."""
    if not (np.isfinite(est.low) and np.isfinite(est.high)):
        return INCONCLUSIVE
    if est.high <= threshold:
        return PASS
    if est.low > threshold:
        return FAIL
    return INCONCLUSIVE


def verdict_ptq_gap(est: Estimate, max_gap: float) -> str:
    """Q: non-positive gap, tolerance `max_gap` on the upper bound (see module docstring)."""
    if not (np.isfinite(est.low) and np.isfinite(est.high)):
        return INCONCLUSIVE
    if est.point <= 0 and est.high <= max_gap:
        return PASS
    if est.low > 0 or est.low > max_gap:
        return FAIL
    return INCONCLUSIVE


def overall_verdict(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == PASS for v in verdicts):
        return PASS
    if any(v == FAIL for v in verdicts):
        return FAIL
    return INCONCLUSIVE


def worst(verdicts: Sequence[Verdict]) -> Verdict:
    """Most severe verdict; ties broken by the larger upper bound (the worse gap)."""
    return max(verdicts, key=lambda v: (_SEVERITY[v.verdict],
                                        -np.inf if v.estimate is None else v.estimate.high))


def _cap(v: Verdict, reason: str, force_fail: bool = False) -> Verdict:
    if force_fail or v.verdict == PASS:
        return Verdict(v.name, FAIL, v.statistic, v.estimate, v.threshold,
                       f"{reason}; {v.reason}" if v.reason else reason)
    return v


@dataclass
class Assessment:
    """Everything the certificate reports about F, R, Q, S."""

    verdicts: dict[str, Verdict]  # "F", "R", "Q", "S" and "Q[<quantizer>]"
    overall: str
    statistics: dict[str, dict[str, Estimate]]  # split -> statistic name -> estimate
    guard: list[str] = field(default_factory=list)  # over-unlearning findings
    quantizers: tuple[str, ...] = ()
    chance: float = 0.25

    def to_dict(self) -> dict:
        return {"overall": self.overall, "chance": self.chance, "quantizers": list(self.quantizers),
                "verdicts": {k: v.to_dict() for k, v in self.verdicts.items()},
                "statistics": {s: {k: e.to_dict() for k, e in st.items()} for s, st in self.statistics.items()},
                "guard": list(self.guard)}


def _forget_statistics(quantizers: Sequence[str], chance: float) -> dict:
    b, c = variant_key(BASE, FULL_PRECISION), variant_key(CANDIDATE, FULL_PRECISION)
    stats = {"D_F": lambda m: m[b] - m[c], "KR": lambda m: (m[b] - m[c]) / (m[b] - chance)}
    for q in quantizers:
        bq, cq = variant_key(BASE, q), variant_key(CANDIDATE, q)
        stats[f"G_Q[{q}]"] = lambda m, cq=cq: m[cq] - m[c]
        stats[f"quantized_forget_drop[{q}]"] = lambda m, cq=cq: m[b] - m[cq]
        stats[f"recovery_fraction[{q}]"] = lambda m, cq=cq: (m[cq] - m[c]) / (m[b] - m[c])
        stats[f"base_gap[{q}]"] = lambda m, bq=bq: m[bq] - m[b]
        stats[f"diff_in_diff[{q}]"] = lambda m, bq=bq, cq=cq: (m[cq] - m[c]) - (m[bq] - m[b])
    return stats


def _retain_statistics(quantizers: Sequence[str]) -> dict:
    b, c = variant_key(BASE, FULL_PRECISION), variant_key(CANDIDATE, FULL_PRECISION)
    stats = {"D_R": lambda m: m[b] - m[c]}
    for q in quantizers:
        cq = variant_key(CANDIDATE, q)
        stats[f"retain_drop[{q}]"] = lambda m, cq=cq: m[b] - m[cq]  # R re-checked on the deployed model
    return stats


def _accuracy_statistics(keys: Sequence[str]) -> dict:
    return {f"acc[{k}]": (lambda m, k=k: m[k]) for k in keys}


def degenerate_letter(result: MCQResult, num_choices: int, max_fraction: float) -> str | None:
    """A finding if one letter is predicted for >= max_fraction of items (beyond the answer key's skew)."""
    counts = np.bincount(result.predictions, minlength=num_choices)
    top = int(counts.argmax())
    frac = counts[top] / max(len(result.predictions), 1)
    key_frac = float(np.mean(result.answers == top)) if len(result.answers) else 0.0
    if frac >= max_fraction and key_frac < max_fraction:
        return f"predicts '{chr(ord('A') + top)}' for {frac:.0%} of {result.split or 'the'} items"
    return None


def assess(forget: Mapping[str, MCQResult], retain: Mapping[str, MCQResult], quantizers: Sequence[str],
           policy: Policy, *, num_choices: int | None = None, cad: Estimate | None = None) -> Assessment:
    """Verdicts for F, R, Q (per quantizer and worst) and S from per-item results.

    `forget` / `retain` map `variant_key(role, variant)` to that model's results on
    the split, for roles base and candidate and variants "fp32" + `quantizers`.
    `cad` is the CAD estimate (S); None leaves S "NOT COMPUTED" (never PASS).
    Chance is each split's own mean of 1/k_i (items may have different numbers of
    choices); `num_choices` (the most choices of an item) only bounds the letter check.
    """
    quantizers = tuple(quantizers)
    keys = [variant_key(r, v) for r in (BASE, CANDIDATE) for v in (FULL_PRECISION, *quantizers)]
    for split_name, results in (("forget_eval", forget), ("retain_eval", retain)):
        missing = [k for k in keys if k not in results]
        if missing:
            raise ValueError(f"{split_name}: no results for {', '.join(missing)}")
        ids = {results[k].ids for k in keys}
        if len(ids) != 1:
            raise ValueError(f"{split_name}: results are not aligned on the same items (cannot pair)")
    first = variant_key(BASE, FULL_PRECISION)
    chance, retain_chance = forget[first].chance, retain[first].chance
    if num_choices is None:
        num_choices = int(max(forget[first].num_choices.max(), retain[first].num_choices.max()))

    boot = dict(B=policy.bootstrap_replicates, seed=policy.seed, level=policy.level, method=policy.ci_method,
                power=policy.mde_power)
    fstats = {**_accuracy_statistics(keys), **_forget_statistics(quantizers, chance)}
    rstats = {**_accuracy_statistics(keys), **_retain_statistics(quantizers)}
    f_est = paired_bootstrap({k: forget[k].correct for k in keys}, fstats, **boot)
    r_est = paired_bootstrap({k: retain[k].correct for k in keys}, rstats, **boot)

    verdicts: dict[str, Verdict] = {}
    d_f = f_est["D_F"]
    kr = f_est["KR"]
    verdicts["F"] = Verdict("F", verdict_at_least(d_f, policy.min_forget_drop), "D_F", d_f, policy.min_forget_drop,
                            f"KR = {kr.point:.3f}" if np.isfinite(kr.point) else "")
    d_r = r_est["D_R"]
    verdicts["R"] = Verdict("R", verdict_at_most(d_r, policy.max_retain_drop), "D_R", d_r, policy.max_retain_drop)
    per_q = []
    for q in quantizers:
        g = f_est[f"G_Q[{q}]"]
        v = Verdict(f"Q[{q}]", verdict_ptq_gap(g, policy.max_ptq_gap), f"G_Q[{q}]", g, policy.max_ptq_gap,
                    f"diff-in-diff {f_est[f'diff_in_diff[{q}]'].point:+.3f}")
        verdicts[v.name] = v
        per_q.append(v)
    if per_q:
        w = worst(per_q)
        verdicts["Q"] = Verdict("Q", w.verdict, w.statistic, w.estimate, w.threshold, f"worst: {w.name[2:-1]}")
    else:
        verdicts["Q"] = Verdict("Q", NOT_COMPUTED, "G_Q", None, policy.max_ptq_gap, "no quantizer configured")
    if cad is None:
        verdicts["S"] = Verdict("S", NOT_COMPUTED, "CAD", None, policy.min_cad, "CAD not computed")
    else:
        verdicts["S"] = Verdict("S", verdict_at_least(cad, policy.min_cad), "CAD", cad, policy.min_cad)

    guard = []
    for variant in (FULL_PRECISION, *quantizers):
        key = variant_key(CANDIDATE, variant)
        findings = []
        acc = r_est[f"acc[{key}]"]
        if acc.high <= retain_chance + policy.chance_margin:
            findings.append(f"retain accuracy at chance ({acc.point:.3f}, upper CI {acc.high:.3f} "
                            f"<= {retain_chance:.2f} + {policy.chance_margin:.2f})")
        for results in (forget, retain):
            finding = degenerate_letter(results[key], num_choices, policy.max_single_letter_fraction)
            if finding:
                findings.append(f"degenerate outputs: {finding}")
        if not findings:
            continue
        guard.append(f"over-unlearning ({key}): " + "; ".join(findings))
        reason = f"over-unlearning guard ({key}: " + "; ".join(f.split(" (")[0] for f in findings) + ")"
        if variant == FULL_PRECISION:
            verdicts["F"] = _cap(verdicts["F"], reason, force_fail=True)
            for name in list(verdicts):
                if name != "F":
                    verdicts[name] = _cap(verdicts[name], reason)
        else:
            verdicts[f"Q[{variant}]"] = _cap(verdicts[f"Q[{variant}]"], reason, force_fail=True)
    if guard and per_q:
        w = worst([verdicts[f"Q[{q}]"] for q in quantizers])
        verdicts["Q"] = Verdict("Q", w.verdict, w.statistic, w.estimate, w.threshold,
                                f"worst: {w.name[2:-1]}" + (f"; {w.reason}" if w.reason else ""))

    overall = overall_verdict([verdicts[k].verdict for k in ("F", "R", "Q", "S")])
    return Assessment(verdicts, overall, {"forget_eval": f_est, "retain_eval": r_est}, guard, quantizers, chance)
