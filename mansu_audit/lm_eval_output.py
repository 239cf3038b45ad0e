"""`evaluate` results in lm-eval's shapes, so dashboards and scripts written for lm-eval read them.

Contract: `results_document(evaluation, bundle)` -> the dict lm-eval 0.4's
`simple_evaluate` returns (the parts that describe results): `results[task]` with
`"acc,none"` (or `"acc_norm,none"` under choice-text-norm scoring, lm-eval's acc_norm)
and `"acc_stderr,none"`, plus `alias`; `n-samples[task]` = {original, effective};
`config` (model, limit, batch size); `versions`. `samples_lines(evaluation, bundle,
task)` -> the JSON lines of lm-eval's `--log_samples` file for one task.

Task names: one per (split, quantizer): the split's name for the model as loaded
(`forget_eval`), `forget_eval@nf4` for its nf4 variant: lm-eval has no notion of a
quantized variant of one model, so the variant is part of the task name.

Choices (ours, stated): `acc_stderr` is lm-eval's own formula (sample standard
deviation with ddof=1 over sqrt(n), `lm_eval.api.metrics.mean_stderr`), not our
bootstrap SE, so the numbers are comparable to lm-eval runs; the bootstrap CI is in
`mansu_audit` (the full `Evaluation.to_dict()`). In a samples line, `doc` is the item
(id, question, choices, answer), `arguments` the (context, continuation) pairs
scored, `filtered_resps` each choice's summed log-likelihood as `[ll, null]`: lm-eval
stores `[ll, is_greedy]`, and is_greedy is not computed here (null, not a guess);
`acc` is 1.0/0.0 and `prediction` the chosen index.
"""
from __future__ import annotations

import json
import math

import numpy as np

from mansu_audit._version import __version__
from mansu_audit.data import Bundle
from mansu_audit.prompts import item_request
from mansu_audit.verdicts import UNQUANTIZED


def task_name(split: str, variant: str) -> str:
    return split if variant == UNQUANTIZED else f"{split}@{variant}"


def metric_name(evaluation) -> str:
    return "acc_norm" if evaluation.prompting.get("scoring") == "choice-text-norm" else "acc"


def mean_stderr(correct: np.ndarray) -> float | str:
    """lm-eval's `mean_stderr`: sample standard deviation (ddof=1) / sqrt(n); "N/A" below 2 items, as lm-eval
    writes it (strict JSON has no NaN)."""
    n = len(correct)
    return float(np.std(np.asarray(correct, dtype=np.float64), ddof=1) / math.sqrt(n)) if n > 1 else "N/A"


def results_document(evaluation, bundle: Bundle) -> dict:
    """lm-eval-shaped results of an `api.Evaluation` (module docstring)."""
    metric = metric_name(evaluation)
    results, n_samples = {}, {}
    for variant, splits in evaluation.scores.items():
        for split, score in splits.items():
            task = task_name(split, variant)
            correct = score.result.correct
            results[task] = {"alias": task, f"{metric},none": float(np.mean(correct)),
                             f"{metric}_stderr,none": mean_stderr(correct)}
            n_samples[task] = {"original": len(bundle.split(split)), "effective": int(len(correct))}
    return {"results": results, "n-samples": n_samples,
            "config": {"model": evaluation.model, "benchmark": evaluation.benchmark, "limit": evaluation.limit,
                       "batch_size": evaluation.batch_size, "dtype": evaluation.dtype,
                       "scoring": evaluation.prompting.get("scoring"),
                       "chat_template": evaluation.prompting.get("applied", False)},
            "versions": {task: 1 for task in results}, "mansu_audit_version": __version__,
            "mansu_audit": evaluation.to_dict()}


def samples_lines(evaluation, bundle: Bundle, split: str, variant: str, prompt_fn=None) -> list[str]:
    """The `--log-samples` JSON lines of one task (module docstring), in item order; `prompt_fn` is the chat
    template the evaluation applied (`prompts.chat_prompt_fn`), so `arguments` hold the contexts as scored."""
    score = evaluation.scores[variant][split]
    result = score.result
    items = {it.id: it for it in bundle.split(split)}
    scoring = evaluation.prompting.get("scoring", "letter")
    metric = metric_name(evaluation)
    lines = []
    for i, item_id in enumerate(result.ids):
        item = items[item_id]
        context, continuations = item_request(item, scoring, bundle.subject_line)
        context = context if prompt_fn is None else prompt_fn(context)
        k = len(item.choices)
        lls = [float(x) for x in result.logprobs[i][:k]]
        lines.append(json.dumps({
            "doc_id": i, "doc": {"id": item.id, "question": item.question, "choices": list(item.choices),
                                 "answer": int(item.answer)},
            "target": int(result.answers[i]), "arguments": [[context, c] for c in continuations],
            "filtered_resps": [[ll, None] for ll in lls], "filter": "none", "metrics": [metric],
            metric: float(result.predictions[i] == result.answers[i]), "prediction": int(result.predictions[i])},
            ensure_ascii=False))
    return lines
