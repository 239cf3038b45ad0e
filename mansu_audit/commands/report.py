"""`mansu-audit report DIR`: re-render the HTML report from stored results (no model is loaded)."""
from __future__ import annotations

import argparse
from pathlib import Path

from mansu_audit.errors import InputError

from mansu_audit.matrix import MATRIX_FILE, read_results, write_matrix_html

from mansu_audit.report import render_report

NAME = "report"
HELP = ("re-render DIR/index.html from the certificate(s) in DIR (and DIR/matrix.html if DIR holds a matrix "
        "run); reads only stored results")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a certify/matrix/demo output folder")
    p.add_argument("--out", default=None, help="HTML file to write (default DIR/index.html)")
    p.add_argument("--title", default=None)
    p.add_argument("--include-forget-text", action="store_true",
                   help="write forget-set item text (hazardous) into the file, behind a redaction switch "
                        "(default: left out of the file)")
    p.add_argument("--omit-forget-text", action="store_true", help=argparse.SUPPRESS)  # the default now


def run(args: argparse.Namespace) -> int:
    if args.include_forget_text and args.omit_forget_text:
        raise InputError("--include-forget-text and --omit-forget-text contradict each other")
    folder = Path(args.dir)
    results = read_results(folder / MATRIX_FILE) if (folder / MATRIX_FILE).is_file() else None
    title = args.title or (results or {}).get("title")  # a matrix/demo run keeps its title
    path = render_report(folder, out=args.out, title=title, include_forget_text=args.include_forget_text)
    print(f"report: {path}")
    if results is not None:
        print(f"matrix: {write_matrix_html(folder, results, title=title)}")
    return 0
