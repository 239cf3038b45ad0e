"""`mansu-audit demo`: MANSU and baselines on the bundled benchmark, certified, with an HTML report."""
from __future__ import annotations

import argparse
import json

from mansu_audit.cache import NoCache, ResultCache
from mansu_audit.commands._common import add_grid_args, check_pinned, parse_list
from mansu_audit.demo import DEMO_METHODS, DEMO_OUT, DEMO_QUANTIZERS, run_demo
from mansu_audit.matrix import format_matrix_table
from mansu_audit.outdir import check_cache_dir, check_output_dir

NAME = "demo"
HELP = ("end-to-end demo: unlearn the reference model with MANSU, GA, NPO and RMU at their tuned settings, "
        "certify each through nf4, gptq and int8, write reports/demo/index.html and one certificate per method")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None,
                   help=f"output folder (default {DEMO_OUT}, where an earlier demo is replaced; built aside and "
                        f"renamed at the end)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo (or other mansu-audit output) in an explicit --out (refused "
                        "otherwise when --out is not empty)")
    p.add_argument("--methods", default=",".join(DEMO_METHODS), help="comma list (default %(default)s)")
    p.add_argument("--quantizers", default=",".join(DEMO_QUANTIZERS), help="comma list (default %(default)s)")
    p.add_argument("--defaults", action="store_true",
                   help="run every method at its documented defaults instead of the settings `mansu-audit tune` "
                        "chose on the reference's training splits (shipped with the model)")
    add_grid_args(p)


def run(args: argparse.Namespace) -> int:
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    check_pinned(args, device=False)
    if args.out is None:  # the default folder belongs to the demo: rerunning it replaces the earlier demo
        args.out, args.overwrite = str(DEMO_OUT), True
    check_output_dir(args.out, args.overwrite)  # before anything loads
    if not args.no_cache:
        check_cache_dir(args.cache_dir)
    cache = NoCache() if args.no_cache else ResultCache(args.cache_dir)
    result = run_demo(args.out, methods=parse_list(args.methods), quantizers=parse_list(args.quantizers),
                      cache=cache, device=args.device, progress=not args.quiet,
                      include_forget_text=args.include_forget_text, overwrite=args.overwrite, cad=args.cad,
                      relearn=args.relearn, consistency=args.consistency,
                      cross_scoring=args.cross_scoring, settings="defaults" if args.defaults else "tuned")
    if args.json:
        print(json.dumps({"results": result.run.results, "seconds": round(result.seconds, 3),
                          "certificates": [str(result.run.out / c["folder"] / "certificate.json")
                                           for c in result.run.results["cells"]],
                          "matrix": str(result.run.html_path), "report": str(result.report_path)}, indent=2))
        return 0
    print(format_matrix_table(result.run.results))
    print(f"wall time {result.seconds:.0f} s")
    for cell in result.run.results["cells"]:
        print(f"certificate: {result.run.out / cell['folder'] / 'certificate.json'}")
    print(f"matrix: {result.run.html_path}")
    print(f"report: {result.report_path}")
    return 0
