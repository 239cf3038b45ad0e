"""`mansu-audit unlearn`: run an unlearning method and write a certify-ready checkpoint."""
from __future__ import annotations

import argparse

from mansu_audit.unlearn import unlearn

NAME = "unlearn"
HELP = "run an unlearning method on a model and write the checkpoint (safetensors + tokenizer + unlearn.json)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True,
                   help="a method name (see `mansu-audit methods`) or path/to/file.py:ClassName")
    p.add_argument("--model", required=True, help="'reference', 'reference-nf4grid' or a local causal-LM folder")
    p.add_argument("--benchmark", default="synthhazard", help="'synthhazard' or a bundle folder")
    p.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method setting (repeatable); types are checked")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    result = unlearn(args.method, args.model, args.benchmark, seed=args.seed, overrides=args.overrides,
                     out=args.out, device=args.device, progress=not args.quiet)
    last = result.diagnostics.get("loop", {}).get("last", {})
    losses = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
    print(f"{result.method}: {result.steps} steps in {result.seconds:.1f}s (seed {result.seed}); last step: {losses}")
    print(f"wrote {args.out}")
    return 0
