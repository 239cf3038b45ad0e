"""The Python API behind the CLI: plain functions over plain data.

`evaluate` names the model as loaded "unquantized" (as `certify` does: `verdicts.UNQUANTIZED`)
and records its dtype beside it (`Evaluation.dtype`): it is not always fp32 (bf16 on a GPU by
default). "fp32" is still accepted in a quantizer list as an alias of the unquantized model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mansu_audit.batching import AutoBatch
from mansu_audit.data import MCQ_SPLITS, Bundle, load_bundle
from mansu_audit.errors import InputError
from mansu_audit.evaluate import MCQResult
from mansu_audit.loading import LoadedModel, load_model
from mansu_audit.prompts import chat_mode_for, chat_prompt_fn, chat_template_record
from mansu_audit.quantizers import quantize_model
from mansu_audit.stats import DEFAULT_B, DEFAULT_SEED, Estimate, accuracy_ci
from mansu_audit.threads import with_thread_policy
from mansu_audit.verdicts import UNQUANTIZED

UNQUANTIZED_ALIASES = (UNQUANTIZED, "fp32")  # names a quantizer list may use for the model as loaded


@dataclass
class SplitScore:
    result: MCQResult
    accuracy: Estimate

    def to_dict(self) -> dict:
        return {"n": self.result.n, "accuracy": self.accuracy.point, "ci_low": self.accuracy.low,
                "ci_high": self.accuracy.high, "B": self.accuracy.B, "seed": self.accuracy.seed,
                **({"truncated": self.result.truncated} if self.result.truncated else {})}


@dataclass
class Evaluation:
    """Accuracies of one model per quantizer ("unquantized" = as loaded, in `dtype`) and per MCQ split."""

    model: str
    benchmark: str
    scores: dict[str, dict[str, SplitScore]] = field(default_factory=dict)  # quantizer -> split -> score
    chance: float = 0.25
    prompting: dict = field(default_factory=dict)  # chat-template mode, whether applied, template hash
    notes: list[str] = field(default_factory=list)  # how the model was loaded (device, dtype, adapter, GGUF)
    dtype: str = ""  # the weights' dtype as evaluated
    batch_size: int = 0  # the evaluation batch size used (after any out-of-memory back-off)
    limit: int | None = None  # only the first `limit` items of each split were evaluated

    def to_dict(self) -> dict:
        return {"model": self.model, "benchmark": self.benchmark, "chance": self.chance,
                "prompting": self.prompting, "notes": self.notes, "dtype": self.dtype, "batch_size": self.batch_size,
                **({"limit": self.limit} if self.limit is not None else {}),
                "results": {q: {s: sc.to_dict() for s, sc in splits.items()} for q, splits in self.scores.items()}}


def as_bundle(benchmark: str | Path | Bundle) -> Bundle:
    return benchmark if isinstance(benchmark, Bundle) else load_bundle(benchmark)


@with_thread_policy
def evaluate(model: str | Path | LoadedModel, benchmark: str | Path | Bundle = "synthhazard", *,
             quantizers: tuple[str, ...] = (), splits: tuple[str, ...] | None = None,
             B: int = DEFAULT_B, seed: int = DEFAULT_SEED, batch_size: int | None = None,
             chat_template: str = "auto", truncate: str | None = None, progress: bool = False,
             threads: int | None = None, scoring: str | None = None, device: str = "auto",
             dtype: str | None = "auto", allow_pickle: bool = False, limit: int | None = None,
             share_prefix: bool = False) -> Evaluation:
    """Evaluate a model (and its quantized versions) on every MCQ split of a benchmark.

    Defaults are the CLI's (device and dtype "auto", automatic batch size), so the two
    give the same numbers. `batch_size=None` chooses it automatically (halving on out-of-memory);
    `chat_template` (auto|on|off) wraps prompts in the tokenizer's chat template;
    `truncate="left"` cuts prompts longer than the model's context (counted per split as
    `truncated`) instead of refusing them. `scoring` (letter | choice-text |
    choice-text-norm; None: the benchmark's default) is how items are scored
    (`mansu_audit.prompts`), recorded in `prompting`. `threads`: torch CPU threads while it runs
    (None: $MANSU_THREADS, else the detected default; `mansu_audit.threads`), restored after.
    `limit`: evaluate only the first `limit` items of each split (lm-eval's `--limit`; for quick
    looks, recorded in the result). `share_prefix`: run a batch's common prefix (few-shot examples)
    once (`mansu_audit.evaluate`; same predictions in float32, 2.6-4.0x faster on 4-shot prompts on the
    CPU; off by default because in bf16 on a GPU it moved near-tie predictions), recorded in `prompting`.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer or None, not {limit!r}")
    bundle = as_bundle(benchmark)  # cheap checks first
    scoring = bundle.check_scoring(scoring)
    loaded = load_model(model, device=device, dtype=dtype, allow_pickle=allow_pickle)
    chat_template = chat_mode_for(chat_template, scoring)
    prompt_fn = chat_prompt_fn(loaded.tokenizer, chat_template)
    batcher = AutoBatch(start=batch_size)
    names = splits or tuple(s for s in MCQ_SPLITS if s in bundle.mcq)
    chance = float(np.mean([1.0 / len(it.choices) for it in bundle.split(names[0])]))
    out = Evaluation(loaded.name, bundle.name, chance=chance,
                     prompting={**chat_template_record(loaded.tokenizer, chat_template),
                                **({"truncate": truncate} if truncate else {}),
                                **({"share_prefix": True} if share_prefix else {}), "scoring": scoring},
                     notes=list(loaded.notes),
                     limit=limit)
    variants = [(UNQUANTIZED, loaded.model)]
    for qname in dict.fromkeys(q for q in quantizers if q not in UNQUANTIZED_ALIASES):
        variants.append((qname, quantize_model(loaded.model, qname, tokenizer=loaded.tokenizer,
                                               calibration=bundle).model))
    for qname, m in variants:
        out.scores[qname] = {}
        for split in names:
            res = batcher.evaluate(m, loaded.tokenizer, bundle.split(split)[:limit], split=split, prompt_fn=prompt_fn,
                                   subject_line=bundle.subject_line, progress=progress, truncate=truncate,
                                   scoring=scoring, share_prefix=share_prefix)
            out.scores[qname][split] = SplitScore(res, accuracy_ci(res.correct.astype(np.float64), B=B, seed=seed))
    out.dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    out.batch_size = batcher.batch_size
    return out
