"""`mansu-audit report DIR`: re-render the HTML report from stored results (no model is loaded).

Output: by default DIR/index.html (and DIR/matrix.html for a matrix or demo run) are
replaced in place, each file atomically; both are derived from DIR's own stored
results, so a reader never sees HTML of another run beside them (certify, matrix
and demo replace DIR whole, HTML included). `--out FILE` writes the report
elsewhere: FILE is checked before anything is read (`outdir.check_output_file`: an
existing file needs `--overwrite`, a folder or a path under a file is refused, one
line, exit 2) and written atomically."""
from __future__ import annotations

import argparse
from pathlib import Path

from mansu_audit.commands._common import add_renamed
from mansu_audit.errors import InputError
from mansu_audit.matrix import MATRIX_FILE, read_results, write_matrix_html
from mansu_audit.outdir import check_output_file

from mansu_audit.report import render_report

NAME = "report"
HELP = ("re-render DIR/index.html from the certificate(s) in DIR (and DIR/matrix.html if DIR holds a matrix "
        "run); reads only stored results")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a certify/matrix/demo output folder")
    p.add_argument("--out-file", default=None, metavar="FILE",
                   help="HTML file to write (default DIR/index.html, replaced in place)")
    add_renamed(p, "--out", "--out-file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out-file (refused otherwise)")
    p.add_argument("--title", default=None, help="page title (default: the run's own title)")
    p.add_argument("--include-forget-text", action="store_true",
                   help="write forget-set item text (hazardous) into the file, behind a redaction switch "
                        "(default: left out of the file)")
    p.add_argument("--omit-forget-text", action="store_true", help=argparse.SUPPRESS)  # the default now


def run(args: argparse.Namespace) -> int:
    if args.include_forget_text and args.omit_forget_text:
        raise InputError("--include-forget-text and --omit-forget-text contradict each other")
    if args.out_file is not None:
        check_output_file(args.out_file, args.overwrite)  # before anything is read or rendered
    folder = Path(args.dir)
    results = read_results(folder / MATRIX_FILE) if (folder / MATRIX_FILE).is_file() else None
    title = args.title or (results or {}).get("title")  # a matrix/demo run keeps its title
    path = render_report(folder, out=args.out_file, title=title, include_forget_text=args.include_forget_text)
    print(f"report: {path}")
    if results is not None:
        print(f"matrix: {write_matrix_html(folder, results, title=title)}")
    return 0
