"""Items/s of mansu-audit's MCQ evaluator vs lm-eval on the same model and items, one process.

lm-eval's `multiple_choice` sends one log-likelihood request per choice (4 per item);
ours runs one forward per item and reads all letters at the last position. Both use
the same batch size. Prints both rates and the ratio (target ≥ 3×).

    python perf/eval_throughput.py [--model reference] [--items 200] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_lm_eval_parity import run_lm_eval  # noqa: E402  (the same lm-eval task the parity test uses)

from mansu_audit.data import load_bundle  # noqa: E402
from mansu_audit.evaluate import evaluate_mcq  # noqa: E402
from mansu_audit.models import load_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    loaded = load_model(args.model)
    items = load_bundle("synthhazard").split("forget_eval")[:args.items]
    evaluate_mcq(loaded.model, loaded.tokenizer, items[:8])  # warm-up

    t0 = time.perf_counter()
    ours = evaluate_mcq(loaded.model, loaded.tokenizer, items, batch_size=args.batch_size)
    t_ours = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        preds, _, _ = run_lm_eval(loaded.model, loaded.tokenizer, items, Path(tmp), batch_size=args.batch_size)
        t_lm = time.perf_counter() - t0
    agree = float((preds == ours.predictions).mean())
    print(f"items: {len(items)}  batch size: {args.batch_size}")
    print(f"mansu-audit: {len(items) / t_ours:8.1f} items/s")
    print(f"lm-eval:     {len(items) / t_lm:8.1f} items/s (includes task setup)")
    print(f"ratio (ours / lm-eval): {t_lm / t_ours:.2f}x   prediction agreement: {agree:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
