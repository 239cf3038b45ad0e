"""Evaluation batch size that backs off on out-of-memory (`AutoBatch`), beside the evaluator.

`start=None` picks 256 on a GPU and 64 elsewhere (64 is the evaluator's
default; CPU never runs out of GPU memory). On a CUDA out-of-memory error the
size halves (down to 1) and the call is repeated; the size that worked is kept
for later calls. `peak_memory_bytes` is the largest
`torch.cuda.max_memory_allocated` seen (0 on CPU), for the documented peak.
Batching never changes a prediction: `evaluate_mcq` scores each sequence alone
(right padding, causal mask; with its cache levers, each row continues its own
context's cache), so any batch size gives the same per-item predictions, and
log-likelihoods equal up to float rounding (matrix products of other shapes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mansu_audit.evaluate import evaluate_mcq
from mansu_audit.loading.device import model_device


def is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


@dataclass
class AutoBatch:
    """Evaluation batch size that backs off on out-of-memory and remembers what worked (see module docstring)."""

    start: int | None = None
    batch_size: int = 0
    peak_memory_bytes: int = 0
    backoffs: int = 0
    evaluator: Callable | None = None  # default `mansu_audit.evaluate.evaluate_mcq`

    def evaluate(self, model: torch.nn.Module, tokenizer, items: Sequence, **kwargs):
        evaluate_fn = self.evaluator or evaluate_mcq
        device = model_device(model)
        if self.batch_size == 0:
            self.batch_size = self.start or (256 if device.type == "cuda" else 64)
        while True:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                result = evaluate_fn(model, tokenizer, items, batch_size=self.batch_size, **kwargs)
            except Exception as exc:
                if not is_oom(exc) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                self.backoffs += 1
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if device.type == "cuda":
                self.peak_memory_bytes = max(self.peak_memory_bytes, torch.cuda.max_memory_allocated(device))
            return result
