"""The one verdict engine: statistics + policy + guard findings -> verdicts (SPEC §3).

`decide(...)` is used by `desiderata.assess` (one certificate), `matrix.pool_seeds`
(several seeds of a method) and `rederive` (`verify` re-deriving a certificate),
so every rule below exists once. It takes estimates, never per-item data: the
statistics are computed by `desiderata.statistics_*` (paired bootstrap), and the
guard findings by `guard_findings` (structured `GuardFinding` records).

Generic rule: PASS if the whole CI lies on the passing side of the threshold,
FAIL if it lies wholly on the failing side, INCONCLUSIVE otherwise; a CI that is
not finite is INCONCLUSIVE.

F (meaningful forgetting): D_F = A_f(θ0) − A_f(θu), PASS if low >= `min_forget_drop`.
  *Below chance is knowledge* (flagged in F, not K): a candidate whose forget
  accuracy's upper CI bound is below chance avoids the right answer more often than
  a guesser would, so it still identifies it. Under letter scoring chance is 1/k
  exactly (each item's answer position is drawn on its own) and the rule is strict:
  a model trained to answer the next letter, at 0.208 [0.172, 0.246], is caught.
  Under the choice-text modes the bound is chance − `chance_margin`
  (`below_chance_margin`): a model scores the choices' own texts, items about one
  entity share its name and answers come from one value pool, so the item bootstrap
  is too narrow and a model that never knew the facts can sit a few points under
  1/k (the bundled oracle: 0.186 [0.150, 0.224]; its empty-context prior picks the
  answer 0.250 of the time). F is where the evidence lives (the
  same forget_eval vector D_F is computed from, available in every certificate,
  while K exists only when the relearning attack ran), and F's claim, "the
  knowledge is gone", is what such a model contradicts. The finding
  (`below_chance`) forces F to FAIL; under a quantizer it forces that Q[q] to FAIL
  (the quantized model identifies the answers).
  *Both formulations* (`mansu_audit.crosscheck`): when the certificate also scored
  forget_eval in a second formulation (letter <-> choice-text on cloze statements) and
  the base demonstrably knows the facts there, F is the worse of F and F's rule on
  that formulation's D_F: a model that hides the facts from one way of asking but
  still states them in the other does not PASS F.
R (retain preservation): D_R, PASS if high <= `max_retain_drop`.
Q (knowledge does not come back under quantization), per quantizer, decided on
  *recovered knowledge* (science issue §2): the SPEC's purpose for Q is "forgotten
  knowledge is not restored by PTQ" and Zhang et al.'s headline is the recovered
  fraction G_Q / D_F. The absolute rule (gap's upper bound <= 0.02) needs a CI
  narrower than 420 items give for a model that recovered nothing (an oracle at
  chance gets [-0.010, +0.029]). So:
  1. when D_F clears F's own bar (low >= `min_forget_drop`: there is forgotten
     knowledge to recover), the statistic is the recovered fraction RF = G_Q / D_F:
     PASS if RF.high <= `max_recovery_fraction` (default 0.10: at most a tenth of
     what was forgotten may return; at n = 420 and D_F ~ 0.5 the MDE of RF is
     ~0.07, so a model that recovered nothing passes), FAIL if RF.low is above it;
  2. otherwise (little or nothing clearly forgotten) the SPEC's absolute gap rule:
     PASS if G_Q <= 0 and G_Q.high <= `max_ptq_gap`, FAIL if G_Q.low > 0. With D_F
     just above 0 the ratio's interval explodes (NPO in the demo: D_F 0.029, G_Q
     -0.002 [-0.012, +0.007], RF -0.08 [-0.67, +0.25]), which says nothing about
     quantization; such a model FAILs F anyway;
  3. chance clause (SPEC "Q near chance"): an INCONCLUSIVE Q[q] is PASS when the
     quantized candidate's forget accuracy CI lies inside chance ± `chance_margin`:
     a model answering at chance has recovered nothing. It never overturns a FAIL.
  Q is the worst Q[q] (FAIL > INCONCLUSIVE > PASS; ties: larger upper bound).
  The MDE of every Q statistic (G_Q, RF, quantized accuracy) is in its estimate.
S (structural erasure): CAD, PASS if CAD.low >= `min_cad` *and* CAD.low > the
  random-circuit control's point estimate: the circuit must have changed more than
  an arbitrary same-size set of neurons (the control point is the best estimate of
  that; requiring the whole CAD CI above it is the generic rule with the control as
  threshold; the paired difference cannot be formed because per-item CAD values
  are not stored). Without a control S cannot PASS (INCONCLUSIVE). FAIL if
  CAD.high < `min_cad`.
  Ceiling (certificates of suite version >= `S_CEILING_SINCE`): when CAD and the
  control both lie within 1 ± `CAD_CEILING` (CI bounds included), the candidate
  attributes nothing to the answer anywhere: no circuit can out-change a random
  one, because there is nothing left to lose. A model that never knew the facts
  lands here (the version-3 `reference-oracle`: CAD +0.999 [+0.996, +1.004], control
  +1.019 [+0.994, +1.051]; its answer metric is -0.32 clean vs -0.28 corrupted,
  against the base's 12.0 vs 0.27), and so would a model that flattens its output
  while keeping the facts upstream: CAD cannot tell them apart here. S then defers to
  K, which can: PASS if K PASSes (relearning does not bring the knowledge back),
  INCONCLUSIVE otherwise (K FAIL, INCONCLUSIVE or not computed). 0.1 keeps out the
  wide intervals of the suppressed models that motivated the control (CAD +0.85
  [+0.57, +1.10] with control +1.43 [+0.40, +2.62]; CAD +0.57 [+0.26, +0.87]): only a
  precisely measured total loss of attribution qualifies.
K (knowledge not recoverable by relearning): recovered fraction on held-out forget
  items RF_K = (A_after − A_cand) / (A_base − A_cand), paired bootstrap over items
  (`k_statistics`). PASS if RF_K.high <= `max_recovery`, FAIL if RF_K.low > it.
  When A_base − A_cand does not clearly clear `min_forget_drop` (low < it) the
  fraction is undefined or unstable and K is INCONCLUSIVE, saying so. Default `max_recovery` 0.25: measured with the
  default attack budget on the bundled benchmark (reports/experiments/panel), on the
  version-1 models a model whose last block was trained to suppress the forget
  answers recovers 0.719 [0.677, 0.762], a quantization-reversed GA model 0.559
  [0.416, 0.680], and the oracle, which never saw the facts, 0.022 [-0.054, 0.093];
  on version 3 (the default) 1.000 [0.988, 1.012], 0.760 [0.691, 0.823] and -0.016
  [-0.079, 0.041]. Fine-tuning on other facts lifts even an oracle a little (format,
  priors), which is why K's bound is looser than Q's, and 0.25 sits well between both
  groups.

Over-unlearning guard: a candidate whose retain accuracy is at chance (upper CI <=
chance + `chance_margin`) or whose outputs are degenerate (one letter for >=
`max_single_letter_fraction` of a split, beyond the answer key's own skew) has not
forgotten meaningfully. On the unquantized candidate: F FAIL and no desideratum may
PASS (scope "all"); under quantizer q: Q[q] FAIL.

Overall: the desiderata in `policy.require` (None: F, R, Q, S, plus K when its
statistics exist) gate it: PASS iff every required one PASSes, FAIL if any
required one FAILs or a scope-"all" guard finding exists, else INCONCLUSIVE.
Desiderata not required are reported but not certified.

`rules=1` reproduces the rules of certificate schema 1 (Q by the absolute gap
only, S without the control, no below-chance finding), so that `verify` can
re-derive the verdicts of version-1 certificates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, Sequence

import numpy as np

from mansu_audit.policy import Policy
from mansu_audit.stats import Estimate, paired_bootstrap

class Outcome(str, Enum):
    """A verdict. A `str` subclass whose value is what certificates store ("PASS", ..., "NOT COMPUTED"), so it
    compares, hashes, formats and serialises as that string: bodies are byte-identical to plain strings, and a
    verdict read back from JSON (a plain str) finds the same dict entries. `Outcome(text)` types a stored verdict.
    (`str, Enum` with str's own __str__/__format__ rather than 3.11's StrEnum: the package supports 3.10.)"""

    __str__ = str.__str__
    __format__ = str.__format__

    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    NOT_COMPUTED = "NOT COMPUTED"


PASS, FAIL, INCONCLUSIVE, NOT_COMPUTED = Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE, Outcome.NOT_COMPUTED
SEVERITY = {PASS: 0, NOT_COMPUTED: 1, INCONCLUSIVE: 1, FAIL: 2}
DEFAULT_REQUIRED = ("F", "R", "Q", "S")
CAD_CEILING = 0.1  # S's ceiling: CAD and control both within 1 ± this (module docstring)
S_CEILING_SINCE = (0, 4, 0)  # certificates of this suite version and later are decided with S's ceiling rule
UNQUANTIZED = "unquantized"  # the variant label of the model as loaded (its dtype is recorded beside it)
BASE, CANDIDATE = "base", "candidate"
# Per-item vectors of the relearning attack on held-out forget items (K).
K_BASE, K_BEFORE, K_AFTER = "base", "candidate", "candidate/relearned"


def variant_key(role: str, variant: str) -> str:
    """'base/unquantized', 'candidate/nf4', ...: the name of one per-item vector."""
    return f"{role}/{variant}"


@dataclass(frozen=True)
class Verdict:
    """One desideratum's verdict and the statistic and threshold that decided it."""

    name: str
    verdict: Outcome
    statistic: str
    estimate: Estimate | None
    threshold: float | None
    reason: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "verdict": self.verdict, "statistic": self.statistic,
                "estimate": None if self.estimate is None else self.estimate.to_dict(),
                "threshold": self.threshold, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Verdict":
        e = d.get("estimate")
        return cls(str(d["name"]), Outcome(d["verdict"]), str(d["statistic"]),
                   None if e is None else Estimate.from_dict(e), d.get("threshold"), str(d.get("reason", "")))


@dataclass(frozen=True)
class GuardFinding:
    """A structured guard finding: which model variant, what was found, which verdict it forces.

    `code`: "retain_at_chance", "degenerate_outputs" or "below_chance"; `desideratum`:
    the verdict forced to `cap` ("F" or "Q[<q>]"); `scope`: "all" also turns every
    other PASS into FAIL (over-unlearning), "self" touches only `desideratum`.
    """

    code: str
    desideratum: str
    cap: str
    message: str
    variant: str  # variant_key of the model it concerns
    scope: str = "self"

    def to_dict(self) -> dict:
        return {"code": self.code, "desideratum": self.desideratum, "cap": self.cap, "message": self.message,
                "variant": self.variant, "scope": self.scope}

    @classmethod
    def from_dict(cls, d: Mapping) -> "GuardFinding":
        return cls(str(d["code"]), str(d["desideratum"]), str(d["cap"]), str(d["message"]), str(d["variant"]),
                   str(d.get("scope", "self")))


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
    """Passing side is <= threshold (R: D_R, Q: recovered fraction, K)."""
    if not (np.isfinite(est.low) and np.isfinite(est.high)):
        return INCONCLUSIVE
    if est.high <= threshold:
        return PASS
    if est.low > threshold:
        return FAIL
    return INCONCLUSIVE


def verdict_ptq_gap(est: Estimate, max_gap: float) -> str:
    """The SPEC's absolute gap rule: PASS if point <= 0 and high <= max_gap, FAIL if low > 0."""
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
    return max(verdicts, key=lambda v: (SEVERITY[v.verdict],
                                        -np.inf if v.estimate is None or not np.isfinite(v.estimate.high)
                                        else v.estimate.high))


def _fmt_ci(e: Estimate) -> str:
    return f"{e.point:+.3f} [{e.low:+.3f}, {e.high:+.3f}]"


def q_verdict(q: str, forget: Mapping[str, Estimate], policy: Policy, chance: float, rules: int = 2) -> Verdict:
    """Q[q] from the forget statistics (rule in the module docstring)."""
    gap = forget[f"G_Q[{q}]"]
    if rules == 1:
        return Verdict(f"Q[{q}]", verdict_ptq_gap(gap, policy.max_ptq_gap), f"G_Q[{q}]", gap, policy.max_ptq_gap)
    rf = forget[f"recovery_fraction[{q}]"]
    d_f = forget["D_F"]
    acc_q = forget[f"acc[{variant_key(CANDIDATE, q)}]"]
    if np.isfinite(d_f.low) and d_f.low >= policy.min_forget_drop and np.isfinite(rf.low) and np.isfinite(rf.high):
        v = Verdict(f"Q[{q}]", verdict_at_most(rf, policy.max_recovery_fraction), f"recovery_fraction[{q}]", rf,
                    policy.max_recovery_fraction, f"recovered fraction G_Q/D_F; G_Q {_fmt_ci(gap)}")
    else:
        v = Verdict(f"Q[{q}]", verdict_ptq_gap(gap, policy.max_ptq_gap), f"G_Q[{q}]", gap, policy.max_ptq_gap,
                    f"D_F not clearly above min_forget_drop {policy.min_forget_drop:.2f}: absolute gap rule")
    lo, hi = chance - policy.chance_margin, chance + policy.chance_margin
    if v.verdict == INCONCLUSIVE and np.isfinite(acc_q.low) and lo <= acc_q.low and acc_q.high <= hi:
        v = Verdict(v.name, PASS, v.statistic, v.estimate, v.threshold,
                    f"quantized forget accuracy at chance ({_fmt_ci(acc_q)} within {chance:.2f} ± "
                    f"{policy.chance_margin:.2f}); {v.reason}")
    return v


def at_cad_ceiling(cad: Estimate, control: Estimate) -> bool:
    """Both CAD and its random-circuit control lie within 1 ± CAD_CEILING, bounds included (S's ceiling)."""
    return all(np.isfinite(e.low) and np.isfinite(e.high) and 1 - CAD_CEILING <= e.low and e.high <= 1 + CAD_CEILING
               for e in (cad, control))


def s_verdict(cad: Estimate | None, control: Estimate | None, policy: Policy, rules: int = 2,
              k: Verdict | None = None, ceiling: bool = False) -> Verdict:
    """S from CAD and the random-circuit control, and at the ceiling (`ceiling`: the rule applies) from K
    (rule in the module docstring)."""
    if cad is None:
        return Verdict("S", NOT_COMPUTED, "CAD", None, policy.min_cad, "CAD not computed")
    v = verdict_at_least(cad, policy.min_cad)
    if rules == 1:
        return Verdict("S", v, "CAD", cad, policy.min_cad)
    if control is None:
        reason = "no random-circuit control CAD"
        if v == PASS:
            return Verdict("S", INCONCLUSIVE, "CAD", cad, policy.min_cad,
                           f"{reason}: the circuit cannot be shown to change more than a random one")
        return Verdict("S", v, "CAD", cad, policy.min_cad, reason)
    reason = f"random-circuit control CAD {_fmt_ci(control)}"
    if v == PASS and not (np.isfinite(control.point) and cad.low > control.point):
        if ceiling and at_cad_ceiling(cad, control):
            gone = (f"no attribution to the answer left anywhere: CAD and the random-circuit control "
                    f"{_fmt_ci(control)} both lie within 1 ± {CAD_CEILING}, so no circuit can out-change a random "
                    f"one and CAD cannot tell erasure from a flattened output")
            if k is not None and k.verdict == PASS:
                return Verdict("S", PASS, "CAD", cad, policy.min_cad,
                               f"{gone}; K PASS decides: relearning does not bring the knowledge back")
            return Verdict("S", INCONCLUSIVE, "CAD", cad, policy.min_cad,
                           f"{gone}; K decides and is {k.verdict if k is not None else 'not computed'}")
        return Verdict("S", INCONCLUSIVE, "CAD", cad, policy.min_cad,
                       f"circuit CAD does not exceed the control: lower bound {cad.low:+.3f} <= control "
                       f"{control.point:+.3f}; {reason}")
    return Verdict("S", v, "CAD", cad, policy.min_cad, reason)


def k_statistics(base: np.ndarray, cand_before: np.ndarray, cand_after: np.ndarray, policy: Policy
                 ) -> dict[str, Estimate]:
    """K's statistics from per-held-out-item 0/1 vectors (same items, same order), or, when seeds are pooled
    (`matrix.pool_seeds`), the candidate's correctness averaged over seeds (the means are the same either way).

    One paired bootstrap (the same resampled items for all three vectors):
    `recovered_fraction` (A_after − A_cand) / (A_base − A_cand), `forgotten`
    A_base − A_cand (its denominator), `recovered` A_after − A_cand, and the three
    accuracies `acc_base`, `acc_before`, `acc_after`.
    """
    vectors = {"base": np.asarray(base, dtype=np.float64), "before": np.asarray(cand_before, dtype=np.float64),
               "after": np.asarray(cand_after, dtype=np.float64)}
    lengths = {len(v) for v in vectors.values()}
    if len(lengths) != 1:
        raise ValueError(f"K vectors must cover the same held-out items, got lengths {sorted(lengths)}")
    stats = {"recovered_fraction": lambda m: (m["after"] - m["before"]) / (m["base"] - m["before"]),
             "forgotten": lambda m: m["base"] - m["before"], "recovered": lambda m: m["after"] - m["before"],
             "acc_base": lambda m: m["base"], "acc_before": lambda m: m["before"], "acc_after": lambda m: m["after"]}
    return paired_bootstrap(vectors, stats, **bootstrap_settings(policy))


def k_verdict(stats: Mapping[str, Estimate], policy: Policy) -> Verdict:
    """K from `k_statistics` (rule in the module docstring)."""
    den, rf, after = stats["forgotten"], stats["recovered_fraction"], stats["acc_after"]
    # The ratio is only read when the denominator clears F's own bar: with A_base - A_cand near 0 it swings
    # wildly (a model that forgot 0.04 [0.017, 0.064] gave -1.6 [-4.7, -0.7], which would read as PASS).
    if not (np.isfinite(den.low) and den.low >= policy.min_forget_drop):
        return Verdict("K", INCONCLUSIVE, "recovered_fraction", rf, policy.max_recovery,
                       f"A_base - A_cand {_fmt_ci(den)} is not clearly above min_forget_drop "
                       f"{policy.min_forget_drop:.2f} on the held-out items: too little forgotten for the "
                       f"recovered fraction to mean anything")
    return Verdict("K", verdict_at_most(rf, policy.max_recovery), "recovered_fraction", rf, policy.max_recovery,
                   f"held-out accuracy after the attack {_fmt_ci(after)}")


def bootstrap_settings(policy: Policy) -> dict:
    return dict(B=policy.bootstrap_replicates, seed=policy.seed, level=policy.level, method=policy.ci_method,
                power=policy.mde_power)


def required_desiderata(policy: Policy, k_computed: bool) -> tuple[str, ...]:
    if policy.require is not None:
        return tuple(policy.require)
    return DEFAULT_REQUIRED + (("K",) if k_computed else ())


def degenerate_letter(predictions: np.ndarray, answers: np.ndarray, num_choices: int, max_fraction: float,
                      split: str = "") -> str | None:
    """A finding if one letter is predicted for >= max_fraction of items (beyond the answer key's skew)."""
    predictions = np.asarray(predictions, dtype=np.int64)
    answers = np.asarray(answers, dtype=np.int64)
    counts = np.bincount(predictions, minlength=num_choices)
    top = int(counts.argmax())
    frac = counts[top] / max(len(predictions), 1)
    key_frac = float(np.mean(answers == top)) if len(answers) else 0.0
    if frac >= max_fraction and key_frac < max_fraction:
        return f"predicts '{chr(ord('A') + top)}' for {frac:.0%} of {split or 'the'} items"
    return None


@dataclass(frozen=True)
class SplitItems:
    """What the guard needs of one split: answers, every model's predictions, choices per item."""

    name: str
    answers: np.ndarray
    predictions: Mapping[str, np.ndarray]
    num_choices: np.ndarray

    @property
    def chance(self) -> float:
        return float(np.mean(1.0 / np.maximum(self.num_choices, 1)))


def below_chance_margin(policy: Policy, scoring: str = "letter") -> float:
    """How far under chance a forget accuracy's upper bound must be to count as knowledge (module docstring):
    0 under letter scoring, `chance_margin` under the choice-text modes."""
    return 0.0 if scoring == "letter" else policy.chance_margin


def guard_findings(forget: SplitItems, retain: SplitItems, forget_stats: Mapping[str, Estimate],
                   retain_stats: Mapping[str, Estimate], quantizers: Sequence[str], policy: Policy,
                   rules: int = 2, scoring: str = "letter") -> list[GuardFinding]:
    """Over-unlearning and below-chance findings for every candidate variant (module docstring)."""
    num_choices = int(max(forget.num_choices.max(), retain.num_choices.max()))
    out = []
    for variant in (UNQUANTIZED, *quantizers):
        key = variant_key(CANDIDATE, variant)
        target = "F" if variant == UNQUANTIZED else f"Q[{variant}]"
        scope = "all" if variant == UNQUANTIZED else "self"
        acc = retain_stats[f"acc[{key}]"]
        if acc.high <= retain.chance + policy.chance_margin:
            out.append(GuardFinding("retain_at_chance", target, FAIL,
                                    f"over-unlearning ({key}): retain accuracy at chance ({acc.point:.3f}, upper CI "
                                    f"{acc.high:.3f} <= {retain.chance:.2f} + {policy.chance_margin:.2f})", key, scope))
        for split in (forget, retain):
            finding = degenerate_letter(split.predictions[key], split.answers, num_choices,
                                        policy.max_single_letter_fraction, split.name)
            if finding:
                out.append(GuardFinding("degenerate_outputs", target, FAIL,
                                        f"over-unlearning ({key}): degenerate outputs: {finding}", key, scope))
        if rules >= 2:
            out += below_chance_findings(forget_stats, (variant,), policy, forget.chance, scoring)
    return out


def is_below_chance(acc: Estimate, chance: float, margin: float) -> bool:
    """The "below chance is knowledge" test (module docstring, F): the accuracy's upper bound under chance − margin."""
    return bool(np.isfinite(acc.high) and acc.high < chance - margin)


def _chance_bound(chance: float, margin: float) -> str:
    return f"{chance:.2f}" + (f" - {margin:.2f}" if margin else "")


def below_chance_findings(forget_stats: Mapping[str, Estimate], variants: Sequence[str], policy: Policy,
                          chance: float, scoring: str = "letter") -> list[GuardFinding]:
    """"Below chance is knowledge" (module docstring, F) for the candidate's `variants` (UNQUANTIZED or a
    quantizer name), from the forget statistics alone: also applied to seed-pooled statistics
    (`matrix.pool_seeds`), whose interval is narrower than any one seed's."""
    margin = below_chance_margin(policy, scoring)
    out = []
    for variant in variants:
        key = variant_key(CANDIDATE, variant)
        f_acc = forget_stats[f"acc[{key}]"]
        if is_below_chance(f_acc, chance, margin):
            out.append(GuardFinding("below_chance", "F" if variant == UNQUANTIZED else f"Q[{variant}]", FAIL,
                                    f"below chance ({key}): forget accuracy {_fmt_ci(f_acc)} is wholly below chance "
                                    f"{_chance_bound(chance, margin)}: the model still identifies the right answer "
                                    f"by avoiding it", key, "self"))
    return out


@dataclass
class Decision:
    """Verdicts of every desideratum, the overall verdict, and what decided it."""

    verdicts: dict[str, Verdict]  # "F", "R", "Q", "Q[<q>]", "S", and "K" when computed
    overall: str
    required: tuple[str, ...]
    guard: list[GuardFinding] = field(default_factory=list)


def _cap(v: Verdict, reason: str, force: bool) -> Verdict:
    if force or v.verdict == PASS:
        return Verdict(v.name, FAIL, v.statistic, v.estimate, v.threshold,
                       f"{reason}; {v.reason}" if v.reason else reason)
    return v


def cross_informative(cross: Mapping[str, Estimate], policy: Policy, chance: float) -> bool:
    """The second formulation can show knowledge only if the base demonstrably has it there
    (`mansu_audit.crosscheck`): acc[base/unquantized].low > chance + max(chance_margin, min_forget_drop), so
    a forget drop of `min_forget_drop` is possible there at all."""
    acc = cross[f"acc[{variant_key(BASE, UNQUANTIZED)}]"]
    return bool(np.isfinite(acc.low) and acc.low > chance + max(policy.chance_margin, policy.min_forget_drop))


def cross_verdict(cross: Mapping[str, Estimate], policy: Policy, chance: float, scoring: str
                  ) -> tuple[str | None, str]:
    """F's verdict in the second formulation and why (`mansu_audit.crosscheck` docstring), or (None, "") when
    that formulation shows nothing:

    1. below chance there is knowledge there too (F's own bound, `below_chance_margin(policy, scoring)`):
       FAIL, informative or not;
    2. a candidate at chance there (upper bound <= chance + chance_margin) shows no knowledge: None;
    3. a formulation the base does not demonstrably know (`cross_informative`) proves nothing: None;
    4. otherwise F's rule on the second formulation's D_F."""
    b, c = cross[f"acc[{variant_key(BASE, UNQUANTIZED)}]"], cross[f"acc[{variant_key(CANDIDATE, UNQUANTIZED)}]"]
    margin = below_chance_margin(policy, scoring)
    if is_below_chance(c, chance, margin):
        return FAIL, (f"the forget accuracy {_fmt_ci(c)} is below chance {_chance_bound(chance, margin)}: the model "
                      f"still identifies the right answers by avoiding them")
    if not np.isfinite(c.high) or c.high <= chance + policy.chance_margin or \
            not cross_informative(cross, policy, chance):
        return None, ""
    v_x = verdict_at_least(cross["D_F"], policy.min_forget_drop)
    return v_x, (f"the forget facts are {'still stated' if v_x == FAIL else 'not clearly gone'}: D_F = "
                 f"{_fmt_ci(cross['D_F'])} (base {b.point:.3f}, candidate {c.point:.3f})")


def cross_f_verdict(f: Verdict, cross: Mapping[str, Estimate], policy: Policy, chance: float,
                    scoring: str) -> Verdict:
    """F under both formulations: the worse of `f` and `cross_verdict` (never better than `f`)."""
    v_x, what = cross_verdict(cross, policy, chance, scoring)
    if v_x is None or SEVERITY[v_x] <= SEVERITY[f.verdict]:
        return f
    reason = f"scored {scoring}, {what}; F takes the worse of both formulations"
    return Verdict("F", v_x, f.statistic, f.estimate, f.threshold, f"{reason}; {f.reason}" if f.reason else reason)


def decide(forget: Mapping[str, Estimate], retain: Mapping[str, Estimate], quantizers: Sequence[str],
           policy: Policy, *, chance: float, cad: Estimate | None = None, cad_control: Estimate | None = None,
           relearn: Mapping[str, Estimate] | None = None, guard: Sequence[GuardFinding] = (),
           rules: int = 2, cross: Mapping[str, Estimate] | None = None, cross_scoring: str = "",
           s_ceiling: bool = True) -> Decision:
    """Every verdict from the statistics, the policy and the guard findings (module docstring).

    `forget` needs D_F, KR and, per quantizer q, G_Q[q], recovery_fraction[q] and
    acc[candidate/q]; `retain` needs D_R; `relearn` is `k_statistics(...)` or None;
    `cross` (`crosscheck.cross_statistics`, scored `cross_scoring`) makes F the worse of both formulations;
    `s_ceiling` applies S's ceiling rule (certificates written before `S_CEILING_SINCE` are re-derived without).
    """
    quantizers = tuple(quantizers)
    verdicts: dict[str, Verdict] = {}
    d_f, kr = forget["D_F"], forget.get("KR")
    verdicts["F"] = Verdict("F", verdict_at_least(d_f, policy.min_forget_drop), "D_F", d_f, policy.min_forget_drop,
                            f"KR = {kr.point:.3f}" if kr is not None and np.isfinite(kr.point) else "")
    if cross is not None:
        verdicts["F"] = cross_f_verdict(verdicts["F"], cross, policy, chance, cross_scoring)
    d_r = retain["D_R"]
    verdicts["R"] = Verdict("R", verdict_at_most(d_r, policy.max_retain_drop), "D_R", d_r, policy.max_retain_drop)
    for q in quantizers:
        verdicts[f"Q[{q}]"] = q_verdict(q, forget, policy, chance, rules)
    k = k_verdict(relearn, policy) if relearn is not None else None
    verdicts["S"] = s_verdict(cad, cad_control, policy, rules, k=k, ceiling=s_ceiling and rules >= 2)
    if k is not None:
        verdicts["K"] = k

    for g in guard:  # the guard caps verdicts: its target is forced to FAIL; scope "all" caps every PASS
        reason = g.message
        if g.desideratum in verdicts:
            verdicts[g.desideratum] = _cap(verdicts[g.desideratum], reason, force=True)
        if g.scope == "all":
            for name in list(verdicts):
                if name != g.desideratum:
                    verdicts[name] = _cap(verdicts[name], reason, force=False)

    if quantizers:
        w = worst([verdicts[f"Q[{q}]"] for q in quantizers])
        verdicts["Q"] = Verdict("Q", w.verdict, w.statistic, w.estimate, w.threshold,
                                f"worst: {w.name[2:-1]}" + (f"; {w.reason}" if w.reason else ""))
    else:
        verdicts["Q"] = Verdict("Q", NOT_COMPUTED, "G_Q", None, policy.max_ptq_gap, "no quantizer configured")
    required = required_desiderata(policy, relearn is not None)
    gating = [verdicts[k].verdict if k in verdicts else NOT_COMPUTED for k in required]
    overall = overall_verdict(gating)
    if any(g.scope == "all" for g in guard):
        overall = FAIL
    order = ["F", "R", *[f"Q[{q}]" for q in quantizers], "Q", "S", *(["K"] if "K" in verdicts else [])]
    return Decision({k: verdicts[k] for k in order}, overall, required, list(guard))
