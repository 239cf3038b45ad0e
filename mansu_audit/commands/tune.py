"""`mansu-audit tune`: seeded random search of a method's declared search space on the training splits."""
from __future__ import annotations

import argparse

from mansu_audit.commands._common import (BENCHMARK_HELP, MODEL_HELP, add_loading_arguments, add_model_args,
                                          add_output_args, check_pinned, non_negative_int, positive_int)
from mansu_audit.errors import InputError
from mansu_audit.tune import (DEFAULT_BASE, DEFAULT_BENCHMARK, check_out_file, format_result, result_json, tune,
                               write_result)

NAME = "tune"
HELP = ("search a method's declared search space (--budget trials, seeded) on the benchmark's forget_train/"
        "retain_train splits only; choose the largest D_F lower bound with D_R's upper bound within the policy's "
        "max_retain_drop; write the trials and chosen settings as JSON (for `matrix --settings`)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True,
                   help="a method name (see `mansu-audit methods`) or path/to/file.py:ClassName with a search_space")
    p.add_argument("--budget", required=True, type=positive_int, help="number of trials (settings drawn)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the draws and of every trial's unlearning (default %(default)s)")
    p.add_argument("--out", default=None, help="write the JSON here (default: print it on stdout)")
    p.add_argument("--base", default=DEFAULT_BASE, help="base model: " + MODEL_HELP + " (default %(default)s)")
    p.add_argument("--benchmark", default=DEFAULT_BENCHMARK, help=BENCHMARK_HELP + " (needs forget_train and "
                   "retain_train; default %(default)s)")
    p.add_argument("--policy", default=None, help="YAML policy file (max_retain_drop and the bootstrap settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="hold a setting fixed in every trial, out of the search (repeatable)")
    add_output_args(p)
    add_model_args(p, allow_pickle=False)
    add_loading_arguments(p, float32_only="training stays float32; trials are scored on the CPU",
                          chat_template=False)


def run(args: argparse.Namespace) -> int:
    check_pinned(args, device=False)
    fixed = _fixed_settings(args.overrides)
    if args.out is not None:
        check_out_file(args.out)  # before the long run
    result = tune(args.method, args.budget, seed=args.seed, base=args.base, benchmark=args.benchmark,
                  policy=args.policy, fixed=fixed, device=args.device, progress=not args.quiet, threads=args.threads)
    if args.out is None:
        print(result_json(result))
    else:
        write_result(result, args.out)
        print(format_result(result))
        print(f"wrote {args.out}")
    return 0 if result.chosen is not None else 1


def _fixed_settings(values: list[str]) -> dict[str, str]:
    """`--set key=value` pairs as a dict of strings (tune type-checks them against the method's Settings)."""
    out = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {text}: expected key=value")
        out[key.strip()] = value
    return out
