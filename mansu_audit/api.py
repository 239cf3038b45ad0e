"""The Python API behind the CLI: plain functions over plain data."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mansu_audit.data import MCQ_SPLITS, Bundle, load_bundle
from mansu_audit.evaluate import MCQResult, evaluate_mcq
from mansu_audit.models import LoadedModel, load_model
from mansu_audit.stats import DEFAULT_B, DEFAULT_SEED, Estimate, accuracy_ci

FULL_PRECISION = "fp32"


@dataclass
class SplitScore:
    result: MCQResult
    accuracy: Estimate

    def to_dict(self) -> dict:
        return {"n": self.result.n, "accuracy": self.accuracy.point, "ci_low": self.accuracy.low,
                "ci_high": self.accuracy.high, "B": self.accuracy.B, "seed": self.accuracy.seed}


@dataclass
class Evaluation:
    """Accuracies of one model per quantizer ("fp32" = unquantized) and per MCQ split."""

    model: str
    benchmark: str
    scores: dict[str, dict[str, SplitScore]] = field(default_factory=dict)  # quantizer -> split -> score
    chance: float = 0.25

    def to_dict(self) -> dict:
        return {"model": self.model, "benchmark": self.benchmark, "chance": self.chance,
                "results": {q: {s: sc.to_dict() for s, sc in splits.items()} for q, splits in self.scores.items()}}


def as_loaded(model: str | Path | LoadedModel, allow_pickle: bool = False) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, allow_pickle=allow_pickle)


def as_bundle(benchmark: str | Path | Bundle) -> Bundle:
    return benchmark if isinstance(benchmark, Bundle) else load_bundle(benchmark)


def evaluate(model: str | Path | LoadedModel, benchmark: str | Path | Bundle = "synthhazard", *,
             quantizers: tuple[str, ...] = (), splits: tuple[str, ...] | None = None,
             B: int = DEFAULT_B, seed: int = DEFAULT_SEED, batch_size: int = 64,
             progress: bool = False) -> Evaluation:
    """Evaluate a model (and its quantized versions) on every MCQ split of a benchmark."""
    loaded = as_loaded(model)
    bundle = as_bundle(benchmark)
    names = splits or tuple(s for s in MCQ_SPLITS if s in bundle.mcq)
    out = Evaluation(loaded.name, bundle.name, chance=1.0 / bundle.num_choices)
    variants = [(FULL_PRECISION, loaded.model)]
    for qname in quantizers:
        from mansu_audit.quantizers import quantize_model

        variants.append((qname, quantize_model(loaded.model, qname, tokenizer=loaded.tokenizer,
                                               calibration=bundle).model))
    for qname, m in variants:
        out.scores[qname] = {}
        for split in names:
            res = evaluate_mcq(m, loaded.tokenizer, bundle.split(split), split=split,
                               batch_size=batch_size, progress=progress)
            out.scores[qname][split] = SplitScore(res, accuracy_ci(res.correct.astype(np.float64), B=B, seed=seed))
    return out
