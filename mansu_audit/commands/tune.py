"""`mansu-audit tune`: seeded random search of a method's declared search space on the training splits."""
from __future__ import annotations

import argparse

from mansu_audit.commands._common import (BENCHMARK_HELP, MODEL_HELP, add_loading_arguments, add_model_args,
                                          SET_HELP, add_output_args, add_renamed, check_pinned,
                                          non_negative_int, parse_settings, positive_int)
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
    p.add_argument("--out-file", default=None, metavar="FILE", help="write the JSON here (default: print it on stdout)")
    add_renamed(p, "--out", "--out-file")
    p.add_argument("--base", default=DEFAULT_BASE, help="base model: " + MODEL_HELP + " (default %(default)s)")
    p.add_argument("--benchmark", default=DEFAULT_BENCHMARK, help=BENCHMARK_HELP + " (needs forget_train and "
                   "retain_train; default %(default)s)")
    p.add_argument("--policy", default=None, help="YAML policy file (max_retain_drop and the bootstrap settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                   help="hold a setting fixed in every trial, out of the search: " + SET_HELP)
    add_output_args(p)
    add_model_args(p, allow_pickle=False)
    add_loading_arguments(p, float32_only="training stays float32; trials are scored on the CPU",
                          chat_template=False)


def run(args: argparse.Namespace) -> int:
    check_pinned(args, device=False)
    settings = parse_settings(args.overrides, [args.method]).get(args.method, [])
    fixed = dict(setting.split("=", 1) for setting in settings)
    if args.out_file is not None:
        check_out_file(args.out_file)  # before the long run
    result = tune(args.method, args.budget, seed=args.seed, base=args.base, benchmark=args.benchmark,
                  policy=args.policy, fixed=fixed, device=args.device, progress=not args.quiet, threads=args.threads)
    if args.out_file is None:
        print(result_json(result))
    else:
        write_result(result, args.out_file)
        print(format_result(result))
        print(f"wrote {args.out_file}")
    return 0 if result.chosen is not None else 1

