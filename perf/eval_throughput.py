"""Items/s of mansu-audit's MCQ evaluator vs lm-eval on the same model and items, one process.

lm-eval's `multiple_choice` sends one log-likelihood request per choice (4 per item)
and, for causal models, its Collator groups requests sharing a context into one
forward (`logits_cache`), so its *scoring loop* also runs one forward per item; the
end-to-end rate adds task building (datasets, jinja rendering, request objects).
Ours runs one forward per item and reads all letters at the last position. Both use
the same model, items and batch size; best of `--repeats` runs each. Prints both
rates and the ratios (the issue's target was ≥ 3× end to end).

Thread comparison (first; `--threads-only` skips lm-eval): our items/s with 1, 2
and the thread policy's choice (`mansu_audit.threads`) of torch threads, without
and then with a busy neighbour (a subprocess spinning on one core), and each rate
as a ratio of the 1-thread rate measured in the same condition in this process.
The load average is printed with each condition: the machine may be shared.

    python perf/eval_throughput.py [--model reference] [--items 200] [--batch-size 32] [--threads-only]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_lm_eval_parity import run_lm_eval  # noqa: E402  (the same lm-eval task the parity test uses)

from mansu_audit.data import load_bundle  # noqa: E402
from mansu_audit.evaluate import evaluate_mcq  # noqa: E402
from mansu_audit.loading import load_model  # noqa: E402
from mansu_audit.threads import choose_threads, torch_threads  # noqa: E402


def load_text() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextmanager
def busy_neighbour():
    """A subprocess spinning on one core for the duration of the block (a CI runner's or colleague's job)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it reach the scheduler
        yield proc
    finally:
        proc.kill()
        proc.wait()


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Minimum wall time of `repeats` calls (the machine is shared: the minimum is the least noisy) and a result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def thread_comparison(loaded, items, batch_size: int, repeats: int) -> None:
    chosen = choose_threads()
    print(f"thread policy: {chosen.threads} threads ({chosen.source}; available {chosen.available}, "
          f"affinity {chosen.affinity}, cgroup quota {chosen.quota})")
    counts = list(dict.fromkeys((1, 2, chosen.threads)))
    for label, neighbour in (("no neighbour", nullcontext), ("busy neighbour", busy_neighbour)):
        best, preds = dict.fromkeys(counts, float("inf")), {}
        with neighbour():
            for _ in range(repeats):  # interleaved, so a change of load on the machine hits every count alike
                for n in counts:
                    with torch_threads(n):
                        t, res = best_time(lambda: evaluate_mcq(loaded.model, loaded.tokenizer, items,
                                                                batch_size=batch_size), 1)
                    best[n], preds[n] = min(best[n], t), res.predictions
            load = load_text()
        rates = {n: len(items) / t for n, t in best.items()}
        cells = "  ".join(f"{n} thr {rates[n]:7.1f} items/s ({rates[n] / rates[1]:.2f}x)" for n in counts)
        same = all(np.array_equal(preds[n], preds[1]) for n in counts)
        print(f"{label:15s} {cells}  predictions identical: {same}  [{load}]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads-only", action="store_true", help="only the thread comparison (no lm-eval)")
    ap.add_argument("--no-threads", action="store_true", help="skip the thread comparison")
    args = ap.parse_args()
    loaded = load_model(args.model)
    items = load_bundle("synthhazard").split("forget_eval")[:args.items]
    evaluate_mcq(loaded.model, loaded.tokenizer, items[:8])  # warm-up
    print(f"model: {loaded.name}  items: {len(items)}  batch size: {args.batch_size}  cores: {os.cpu_count()}  "
          f"[{load_text()}]")
    if not args.no_threads:
        thread_comparison(loaded, items, args.batch_size, args.repeats)
    if args.threads_only:
        return 0

    with torch_threads() as choice:  # both sides at the policy's thread count
        print(f"lm-eval comparison at {choice.threads} thread(s) [{load_text()}]")
        lm_eval_comparison(loaded, items, args.batch_size, args.repeats)
    return 0


def lm_eval_comparison(loaded, items, batch_size: int, repeats: int) -> None:
    t_ours, ours = best_time(lambda: evaluate_mcq(loaded.model, loaded.tokenizer, items, batch_size=batch_size),
                             repeats)
    from lm_eval.models.huggingface import HFLM

    scoring = []  # time inside lm-eval's scoring loop alone (task setup excluded): the fair comparison
    original = HFLM._loglikelihood_tokens

    def timed(self, *a, **kw):
        t = time.perf_counter()
        try:
            return original(self, *a, **kw)
        finally:
            scoring.append(time.perf_counter() - t)

    HFLM._loglikelihood_tokens = timed
    t_lm, t_scoring = float("inf"), float("inf")
    try:
        for _ in range(repeats):
            scoring.clear()
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                preds, _, _ = run_lm_eval(loaded.model, loaded.tokenizer, items, Path(tmp), batch_size=batch_size)
                t_lm = min(t_lm, time.perf_counter() - t0)
            t_scoring = min(t_scoring, sum(scoring))
    finally:
        HFLM._loglikelihood_tokens = original
    agree = float((preds == ours.predictions).mean())
    print(f"mansu-audit:           {len(items) / t_ours:8.1f} items/s")
    print(f"lm-eval scoring only:  {len(items) / t_scoring:8.1f} items/s")
    print(f"lm-eval end to end:    {len(items) / t_lm:8.1f} items/s (task setup included)")
    print(f"ratio vs scoring only: {t_scoring / t_ours:.2f}x   end to end: {t_lm / t_ours:.2f}x   "
          f"prediction agreement: {agree:.3f}")


if __name__ == "__main__":
    sys.exit(main())
