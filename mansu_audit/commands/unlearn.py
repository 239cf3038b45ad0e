"""`mansu-audit unlearn`: run an unlearning method and write a certify-ready checkpoint."""
from __future__ import annotations

import argparse

from mansu_audit.commands._common import (BENCHMARK_HELP, MODEL_HELP, add_loading_arguments, add_model_args,
                                          SET_HELP, add_output_args, check_pinned, parse_settings)
from mansu_audit.unlearn import unlearn

NAME = "unlearn"
HELP = "run an unlearning method on a model and write the checkpoint (safetensors + tokenizer + unlearn.json)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True,
                   help="a method name (see `mansu-audit methods`) or path/to/file.py:ClassName")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--benchmark", default="synthhazard", help=BENCHMARK_HELP + " (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    p.add_argument("--seed", type=int, default=0, help="seed of the method's data order and initialisation "
                   "(default %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                   help=SET_HELP)
    add_output_args(p)
    add_model_args(p, allow_pickle=False)
    add_loading_arguments(p, float32_only="training stays float32", chat_template=False)


def run(args: argparse.Namespace) -> int:
    check_pinned(args, device=False)
    overrides = parse_settings(args.overrides, [args.method]).get(args.method, [])
    result = unlearn(args.method, args.model, args.benchmark, seed=args.seed, overrides=overrides,
                     out=args.out, device=args.device, progress=not args.quiet)
    last = result.diagnostics.get("loop", {}).get("last", {})
    losses = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
    print(f"{result.method}: {result.steps} steps in {result.seconds:.1f}s (seed {result.seed}); last step: {losses}")
    print(f"wrote {args.out}")
    return 0
