"""`mansu-audit matrix`: methods × quantizers × seeds, cached and resumable, with a baseline gate for CI."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mansu_audit.cache import NoCache, ResultCache
from mansu_audit.commands._common import (BENCHMARK_HELP, MODEL_HELP, SET_HELP, add_grid_args, check_pinned,
                                          parse_list, parse_settings)
from mansu_audit.errors import InputError
from mansu_audit.executors import make_executor
from mansu_audit.matrix import format_matrix_table, parse_tolerance, read_results, run_matrix, write_results
from mansu_audit.outdir import check_cache_dir, check_output_dir
from mansu_audit.tune import tuned_overrides

NAME = "matrix"
HELP = ("run methods x quantizers x seeds (cached, resumable); write OUT/matrix.json, matrix.html and index.html; "
        "with --baseline exit 1 on any regression (worse verdict or a statistic beyond tolerance)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", required=True, help="comma list of method names (see `mansu-audit methods`)")
    p.add_argument("--quantizers", default="nf4,gptq,int8", help="comma list (default %(default)s)")
    p.add_argument("--seeds", default="0", help="comma list of unlearning seeds (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder (replaced whole at the end; see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier mansu-audit output in --out (refused otherwise when --out is not empty)")
    p.add_argument("--base", default="reference", help="base model: " + MODEL_HELP + " (default %(default)s)")
    p.add_argument("--benchmark", default="synthhazard", help=BENCHMARK_HELP + " (default %(default)s)")
    p.add_argument("--policy", default=None, help="YAML policy file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                   help=SET_HELP + ", e.g. ga:steps=30")
    p.add_argument("--settings", dest="settings_files", action="append", default=[], metavar="FILE",
                   help="a `mansu-audit tune` output: its method's chosen settings (repeatable; --set wins)")
    p.add_argument("--baseline", default=None, help="baseline file (matrix.json format) to compare against")
    p.add_argument("--tolerance", default=None,
                   help="allowed change of a statistic's point estimate: 0.02 (default) or e.g. 0.02,CAD=0.1,G_Q=0.01")
    p.add_argument("--save-baseline", default=None, metavar="FILE", help="write this run's results as a baseline")
    add_grid_args(p)
    g = p.add_argument_group("executor (where the cells run)")
    g.add_argument("--executor", choices=("inprocess", "ray"), default="inprocess",
                   help="inprocess (default: one cell after another here) or ray (each cell a Ray task; "
                        "needs mansu-audit[ray])")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster: 'auto' (a running cluster), 'ray://host:10001' (Ray Client); "
                        "default: start a local one")
    g.add_argument("--gpus-per-cell", type=float, default=None, metavar="N",
                   help="GPUs each cell reserves (default 1 when the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-cell", type=float, default=None, metavar="N",
                   help="CPUs each cell reserves and its torch thread count (default: 1 on Ray, torch's count "
                        "in-process); results are byte-identical across executors for equal values")
    g.add_argument("--max-retries", type=int, default=3, metavar="N",
                   help="reruns of a cell whose worker died (default %(default)s)")


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in parse_list(text))
    except ValueError:
        raise InputError(f"--seeds '{text}': expected a comma list of integers") from None


def run(args: argparse.Namespace) -> int:
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    check_pinned(args, device=False)
    methods = parse_list(args.methods)
    overrides = parse_settings(args.overrides, methods)
    overrides = tuned_overrides(args.settings_files, methods, overrides)
    tolerances = parse_tolerance(args.tolerance)
    baseline = read_results(args.baseline) if args.baseline else None  # fail before the long run
    check_output_dir(args.out, args.overwrite)
    if not args.no_cache:
        check_cache_dir(args.cache_dir)
    cache = NoCache() if args.no_cache else ResultCache(args.cache_dir)

    executor = make_executor(getattr(args, "executor", "inprocess"), address=getattr(args, "ray_address", None),
                             cpus_per_cell=getattr(args, "cpus_per_cell", None),
                             gpus_per_cell=getattr(args, "gpus_per_cell", None),
                             max_retries=getattr(args, "max_retries", 3))
    run_ = run_matrix(methods, parse_list(args.quantizers), parse_seeds(args.seeds), Path(args.out),
                      base=args.base, benchmark=args.benchmark, policy=args.policy, cache=cache, overrides=overrides,
                      device=args.device, progress=not args.quiet, executor=executor,
                      include_forget_text=args.include_forget_text, overwrite=args.overwrite, baseline=baseline,
                      baseline_path=None if baseline is None else str(args.baseline), tolerances=tolerances,
                      cad=args.cad, relearn=args.relearn, consistency=args.consistency,
                      cross_scoring=args.cross_scoring)
    regressions = run_.regressions
    if args.json:
        saved = None if not args.save_baseline else str(write_results(run_.results, args.save_baseline))
        print(json.dumps({"results": run_.results, "results_path": str(run_.results_path),
                          "matrix": str(run_.html_path), "report": str(run_.report_path), "baseline_saved": saved,
                          "regressions": None if baseline is None else [str(r) for r in regressions]}, indent=2))
        return 1 if regressions else 0
    print(format_matrix_table(run_.results))
    print(f"results: {run_.results_path}")
    print(f"matrix: {run_.html_path}")
    print(f"report: {run_.report_path}")
    if args.save_baseline:
        print(f"baseline saved: {write_results(run_.results, args.save_baseline)}")
    if baseline is None:
        return 0
    if not regressions:
        print(f"baseline {args.baseline}: no regression")
        return 0
    print(f"baseline {args.baseline}: {len(regressions)} regression(s)")
    for r in regressions:
        print(f"REGRESSION {r}")
    return 1
