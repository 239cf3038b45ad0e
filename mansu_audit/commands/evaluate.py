"""`mansu-audit evaluate`: accuracy per MCQ split (and per quantizer) with bootstrap CIs."""
from __future__ import annotations

import argparse
import json

from mansu_audit.api import evaluate
from mansu_audit.commands._common import (BENCHMARK_HELP, MODEL_HELP, add_loading_args, add_model_args,
                                          STATS_SEED_HELP, add_output_args, add_renamed, non_negative_int,
                                          parse_list, positive_int)
from mansu_audit.data import load_bundle
from mansu_audit.errors import InputError
from mansu_audit.lm_eval_output import results_document, samples_lines, task_name
from mansu_audit.loading import load_model
from mansu_audit.outdir import check_output_dir, publish_dir
from mansu_audit.prompts import chat_mode_for, chat_prompt_fn
from mansu_audit.stats import DEFAULT_B

NAME = "evaluate"
HELP = "evaluate a model's MCQ accuracy per split (and per quantizer) with 95% bootstrap CIs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--benchmark", default="synthhazard", help=BENCHMARK_HELP + " (default %(default)s)")
    p.add_argument("--quantizers", default="", help="comma list, e.g. nf4,gptq,int8 (the unquantized model, as "
                   "loaded, is always included; 'fp32' is accepted as its name; default: none)")
    p.add_argument("--bootstrap", type=positive_int, default=DEFAULT_B, help="bootstrap replicates (default %(default)s)")
    p.add_argument("--stats-seed", type=non_negative_int, default=0, help=STATS_SEED_HELP)
    add_renamed(p, "--seed", "--stats-seed")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="evaluate only the first N items of each split (lm-eval's --limit; default: all)")
    p.add_argument("--out", "--output-path", dest="out", default=None, metavar="DIR",
                   help="also write DIR/results.json in lm-eval's shape (results[task][\"acc,none\"], "
                        "\"acc_stderr,none\"; task = split, or split@quantizer) and DIR/evaluation.json (ours); "
                        "--output-path is lm-eval's name for it (default: print only)")
    p.add_argument("--log-samples", action="store_true",
                   help="with --out: also write DIR/samples_<task>.jsonl, one line per item as lm-eval's "
                        "--log_samples (contexts, continuations, per-choice log-likelihoods, acc)")
    p.add_argument("--share-prefix", action="store_true",
                   help="run each batch's common prompt prefix (few-shot examples) once and reuse its key/value "
                        "cache: same predictions in float32, several times faster on few-shot prompts; off by "
                        "default (in bf16 on a GPU it moved near-tie predictions)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluate output in --out")
    add_output_args(p, json=True)
    add_model_args(p)
    add_loading_args(p)


def format_table(result) -> str:
    width = max(len("quantizer"), *(len(q) for q in result.scores)) + 2
    rows = [f"{'quantizer':<{width}}{'split':<14}{'n':>6}{'accuracy':>10}   95% CI"]
    for q, splits in result.scores.items():
        for s, sc in splits.items():
            rows.append(f"{q:<{width}}{s:<14}{sc.result.n:>6}{sc.accuracy.point:>10.3f}   "
                        f"[{sc.accuracy.low:.3f}, {sc.accuracy.high:.3f}]")
    return "\n".join(rows)


def output_files(result, bundle, log_samples: bool, prompt_fn=None) -> dict[str, bytes]:
    """What `--out` holds: results.json (lm-eval's shape), evaluation.json (ours), samples_<task>.jsonl."""
    files = {"results.json": json.dumps(results_document(result, bundle), indent=2).encode("utf-8"),
             "evaluation.json": json.dumps(result.to_dict(), indent=2).encode("utf-8")}
    if log_samples:
        for variant, splits in result.scores.items():
            for split in splits:
                lines = samples_lines(result, bundle, split, variant, prompt_fn)
                files[f"samples_{task_name(split, variant)}.jsonl"] = ("\n".join(lines) + "\n").encode("utf-8")
    return files


def run(args: argparse.Namespace) -> int:
    if args.log_samples and args.out is None:
        raise InputError("--log-samples needs --out DIR (where the samples files go)")
    if args.out is not None:
        check_output_dir(args.out, args.overwrite)  # before the model loads
    bundle = load_bundle(args.benchmark)  # cheap checks first: a bad file fails before the model loads
    model = load_model(args.model, allow_pickle=args.allow_pickle, device=args.device, dtype=args.dtype)
    result = evaluate(model, bundle, quantizers=parse_list(args.quantizers), B=args.bootstrap,
                      seed=args.stats_seed, batch_size=args.batch_size, chat_template=args.chat_template,
                      truncate=args.truncate, scoring=args.scoring, progress=not args.quiet,
                      threads=args.threads, limit=args.limit, share_prefix=args.share_prefix)
    if args.out is not None:
        prompt_fn = chat_prompt_fn(model.tokenizer, chat_mode_for(args.chat_template, result.prompting["scoring"]))
        publish_dir(args.out, output_files(result, bundle, args.log_samples, prompt_fn), overwrite=args.overwrite)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        chat = "chat template" if result.prompting.get("applied") else "plain prompts"
        print(f"model {result.model} on {result.benchmark} (chance {result.chance:.2f}, {chat}; "
              f"unquantized = {result.dtype} as loaded)")
        print(format_table(result))
    return 0
