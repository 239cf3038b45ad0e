"""Permutation consistency: does a model's MCQ accuracy survive reordering the choices? (issue 18 §0)

Letter-scored MCQ evaluation has a known weakness: a model can score by
memorising the answer *letter* of each prompt (or by a position bias) without
knowing the fact. Reordering the choices of an item keeps the question and the
choice texts and moves the right answer to another letter; a model that reads
the content keeps its accuracy, a letter memoriser falls towards chance.

Contract. `permutation_consistency(model, tokenizer, items)` evaluates every item
under `k` orders of its choices and returns a `ConsistencyResult` with, per item,

    c0_i  = 1 if the original order is answered right, else 0
    cp_i  = (1/k) sum_r 1[order r is answered right]      (rotation-averaged)

and the paired bootstrap (`stats.paired_bootstrap`, same resamples for both) of
`acc_original = mean c0`, `acc_permuted = mean cp` and the order dependence
`d = mean(c0 - cp)`. The model is flagged **order-dependent** when the lower CI
bound of `d` exceeds `max_order_dependence` (default 0.05; our choice: a few
points of position bias are common in real LMs, a memoriser loses far more).

Orders. `mode="rotations"` (default) uses the k cyclic rotations of the choices
(rotation r puts choice (j + r) mod k at letter j), so every choice text appears at
every letter exactly once per item: the rotation average cancels any fixed
letter preference, and it needs no randomness. `mode="permutations"` uses
`orders` seeded random permutations (a `numpy.random.Generator` from `seed`; the
identity is always order 0). Items keep their own number of choices.

Choices. Rotated items are ordinary `MCQItem`s scored by `evaluate.evaluate_mcq`
(no second evaluator); every order of every item is one evaluator call, batched.
Chance under permutation is the same as for the original order (mean 1/k_i).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from mansu_audit.cache import ResultCache, files_sha256, mcq_items_sha256
from mansu_audit.data import MCQItem
from mansu_audit.evaluate import evaluate_mcq
from mansu_audit.io import json_copy
from mansu_audit.stats import DEFAULT_B, DEFAULT_LEVEL, DEFAULT_SEED, Estimate, paired_bootstrap

DEFAULT_MAX_ORDER_DEPENDENCE = 0.05
MODES = ("rotations", "permutations")


def rotate_item(item: MCQItem, r: int) -> MCQItem:
    """The item with its choices rotated by r: new choice j is old choice (j + r) mod k."""
    k = len(item.choices)
    r %= k
    choices = tuple(item.choices[(j + r) % k] for j in range(k))
    return replace(item, choices=choices, answer=(item.answer - r) % k)


def permute_item(item: MCQItem, order: Sequence[int]) -> MCQItem:
    """The item with new choice j = old choice order[j]."""
    order = list(order)
    if sorted(order) != list(range(len(item.choices))):
        raise ValueError(f"order {order} is not a permutation of {len(item.choices)} choices")
    return replace(item, choices=tuple(item.choices[o] for o in order), answer=order.index(item.answer))


def choice_orders(items: Sequence[MCQItem], mode: str = "rotations", orders: int | None = None,
                  seed: int = DEFAULT_SEED) -> list[list[list[int]]]:
    """Per item, the list of choice orders evaluated (order 0 is always the identity)."""
    if mode not in MODES:
        raise ValueError(f"unknown permutation mode '{mode}' (known: {', '.join(MODES)})")
    rng = np.random.default_rng(seed)
    out = []
    for it in items:
        k = len(it.choices)
        if mode == "rotations":
            out.append([[(j + r) % k for j in range(k)] for r in range(k)])
        else:
            m = orders if orders is not None else k
            out.append([list(range(k))] + [rng.permutation(k).tolist() for _ in range(max(m, 1) - 1)])
    return out


@dataclass(frozen=True)
class ConsistencyResult:
    """Per-item correctness under every order and the summary statistics."""

    split: str
    ids: tuple[str, ...]
    mode: str
    correct: np.ndarray  # float64 [n, m]: column 0 is the original order (m orders; NaN where an item has fewer)
    original: Estimate
    permuted: Estimate
    dependence: Estimate  # mean(c0 - cp)
    threshold: float
    chance: float

    @property
    def order_dependent(self) -> bool:
        return bool(np.isfinite(self.dependence.low) and self.dependence.low > self.threshold)

    @property
    def per_item_permuted(self) -> np.ndarray:
        return np.nanmean(self.correct, axis=1)

    def to_dict(self, per_item: bool = False) -> dict:
        out = {"split": self.split, "mode": self.mode, "orders": int(self.correct.shape[1]), "n": len(self.ids),
               "accuracy_original": self.original.to_dict(), "accuracy_permuted": self.permuted.to_dict(),
               "order_dependence": self.dependence.to_dict(), "max_order_dependence": self.threshold,
               "chance": round(self.chance, 10), "order_dependent": self.order_dependent}
        if per_item:
            out["ids"] = list(self.ids)
            out["per_item_permuted"] = [round(float(v), 6) for v in self.per_item_permuted]
        return out


def summarize(split: str, ids: Sequence[str], correct: np.ndarray, mode: str, chance: float, *,
              threshold: float = DEFAULT_MAX_ORDER_DEPENDENCE, B: int = DEFAULT_B, seed: int = DEFAULT_SEED,
              level: float = DEFAULT_LEVEL, method: str = "percentile") -> ConsistencyResult:
    """Pure statistics of a per-item x per-order 0/1 matrix (column 0: original order)."""
    correct = np.asarray(correct, dtype=np.float64)
    c0 = correct[:, 0]
    cp = np.nanmean(correct, axis=1)
    est = paired_bootstrap({"c0": c0, "cp": cp}, {"original": lambda m: m["c0"], "permuted": lambda m: m["cp"],
                                                   "dependence": lambda m: m["c0"] - m["cp"]},
                           B=B, seed=seed, level=level, method=method)
    return ConsistencyResult(split, tuple(ids), mode, correct, est["original"], est["permuted"], est["dependence"],
                             float(threshold), float(chance))


def permutation_consistency(model: torch.nn.Module, tokenizer, items: Sequence[MCQItem], *, split: str = "",
                            mode: str = "rotations", orders: int | None = None, seed: int = DEFAULT_SEED,
                            threshold: float = DEFAULT_MAX_ORDER_DEPENDENCE, B: int = DEFAULT_B,
                            level: float = DEFAULT_LEVEL, ci_method: str = "percentile", batch_size: int = 64,
                            subject_line: bool = False, prompt_fn: Callable[[str], str] | None = None,
                            evaluator: Callable | None = None) -> ConsistencyResult:
    """Accuracy of `model` on `items` under every choice order (see the module docstring).

    `evaluator` defaults to `evaluate.evaluate_mcq` (same signature; e.g. an
    auto-batching wrapper). The bootstrap uses `seed`; the permutations (mode
    "permutations") use their own generator from the same seed.
    """

    evaluator = evaluator or evaluate_mcq
    items = list(items)
    if not items:
        raise ValueError("no items to check")
    per_item_orders = choice_orders(items, mode, orders, seed)
    width = max(len(o) for o in per_item_orders)
    variants, where = [], []
    for i, (it, its_orders) in enumerate(zip(items, per_item_orders)):
        for r, order in enumerate(its_orders):
            variants.append(replace(permute_item(it, order), id=f"{it.id}#order{r}"))
            where.append((i, r))
    result = evaluator(model, tokenizer, variants, split=split, batch_size=batch_size, subject_line=subject_line,
                       prompt_fn=prompt_fn)
    correct = np.full((len(items), width), np.nan)
    for (i, r), ok in zip(where, result.correct):
        correct[i, r] = float(ok)
    chance = float(np.mean([1.0 / len(it.choices) for it in items]))
    return summarize(split, [it.id for it in items], correct, mode, chance, threshold=threshold, B=B, seed=seed,
                     level=level, method=ci_method)


# ---- certification stage

CHECKED_SPLITS = ("forget_eval", "retain_eval")


def _code_sha256() -> str:
    from pathlib import Path

    here = Path(__file__).resolve().parent
    return files_sha256(here / n for n in ("consistency.py", "evaluate.py", "prompts.py") if (here / n).is_file())


def run_stage(models: dict, bundle, policy, cache, *, prompt_fns: dict | None = None, prompting: dict | None = None,
              truncate: str | None = None, batch_size: int | None = 64, scoring: str = "letter",
              log: Callable[[str], None] | None = None) -> tuple[dict, dict[str, float]]:
    """(certificate body `consistency` section, run-record seconds) for every model on both eval splits.

    Per-item correctness under each rotation is cached by model content, items and code;
    the statistics are recomputed from it (policy B, seed, level, `max_order_dependence`).
    Under choice-text scoring the check does not run (the section says why): the prompt
    does not list the choices, so their order cannot change a prediction, and a verbatim
    lm-eval context lists them in text that rotating `choices` would not rotate.
    """
    import json
    import time

    from mansu_audit.certify import model_content_sha256, runtime_record

    log = log or (lambda _m: None)
    threshold = float(getattr(policy, "max_order_dependence", DEFAULT_MAX_ORDER_DEPENDENCE))
    code = _code_sha256()
    if scoring != "letter":
        return {"mode": "not-applicable", "scoring": scoring, "max_order_dependence": threshold, "models": {},
                "flags": [],
                "note": "choice-text scoring: the prompts do not list the choices, so choice order cannot "
                        "change a prediction"}, {}
    out: dict = {"mode": "rotations", "max_order_dependence": threshold, "models": {}, "flags": []}
    seconds: dict[str, float] = {}
    for role, m in models.items():
        for split in CHECKED_SPLITS:
            items = bundle.split(split)
            inputs = {"model": model_content_sha256(m), "split": split, "items": mcq_items_sha256(items),
                      "mode": "rotations", "code": code, "prompting": (prompting or {}).get(role),
                      "subject_line": bundle.subject_line, "truncate": truncate, **runtime_record(m.model)}
            key = ResultCache.key("consistency", inputs)
            entry = cache.get(key, validate=lambda v: np.asarray(v["correct"], dtype=np.float64).reshape(len(items), -1))
            started = time.perf_counter()
            extra = {} if truncate is None else {"truncate": truncate}
            if entry is None:
                log(f"permutation consistency of {role} on {split} (every cyclic rotation of the choices)")
                res = permutation_consistency(
                    m.model, m.tokenizer, items, split=split, B=policy.bootstrap_replicates, seed=policy.seed,
                    level=policy.level, ci_method=policy.ci_method, threshold=threshold, batch_size=batch_size or 64,
                    subject_line=bundle.subject_line, prompt_fn=(prompt_fns or {}).get(role),
                    evaluator=(lambda *a, **kw: _evaluate(*a, **kw, **extra)))
                entry = {"correct": np.where(np.isnan(res.correct), -1, res.correct).astype(int).tolist()}
                cache.put(key, entry, stage="consistency", inputs=inputs)
            else:
                log(f"permutation consistency of {role} on {split}: cached")
            seconds[f"consistency[{role}/{split}]"] = round(time.perf_counter() - started, 3)
            correct = np.asarray(json_copy(entry["correct"]), dtype=np.float64)
            correct[correct < 0] = np.nan
            chance = float(np.mean([1.0 / len(it.choices) for it in items]))
            res = summarize(split, [it.id for it in items], correct, "rotations", chance, threshold=threshold,
                            B=policy.bootstrap_replicates, seed=policy.seed, level=policy.level,
                            method=policy.ci_method)
            out["models"].setdefault(role, {})[split] = res.to_dict()
            if res.order_dependent:
                d = res.dependence
                out["flags"].append(
                    f"{role}: accuracy on {split} depends on choice order (original {res.original.point:.3f}, "
                    f"averaged over rotations {res.permuted.point:.3f}; difference {d.point:+.3f} "
                    f"[{d.low:+.3f}, {d.high:+.3f}] > {threshold:.3f}): F, R and Q measure memorised answer letters")
    return out, seconds


def _evaluate(*args, **kwargs):
    return evaluate_mcq(*args, **kwargs)
