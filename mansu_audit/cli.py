"""`mansu-audit` entry point: discovers subcommands in `mansu_audit.commands`."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from contextlib import contextmanager, nullcontext

from mansu_audit import commands
from mansu_audit._version import __version__
from mansu_audit.errors import InputError, quiet_import_noise
from mansu_audit.threads import torch_threads


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (bad input is one line, exit 2; `--help` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mansu-audit",
        description="Certify that LLM unlearning survives quantization.")
    parser.add_argument("--version", action="version", version=f"mansu-audit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = sub.add_parser(module.NAME, help=module.HELP.replace("%", "%%"), description=module.HELP)  # only help is %-formatted
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


@contextmanager
def plain_stderr():
    """When stderr is not a terminal (piped, a CI log), Hugging Face's progress bars are off for the command
    and restored after: they are cursor-control sequences there. Our own bars use tqdm's `disable=None`
    (shown on a terminal only); progress messages stay plain lines."""
    if sys.stderr.isatty():
        yield
        return
    from transformers.utils import logging as hf_logging

    was_disabled = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()


@contextmanager
def library_logs_at_info():
    """`--verbose`: transformers' logging at INFO for the command (its level restored after)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_info()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._argv = argv  # the exact command line (certify records it for "Reproduce")
    try:
        # commands that load a model take --threads (commands/_common.add_model_args): the thread policy
        # (mansu_audit.threads) holds for the whole command, and torch's count is restored after it
        verbose = getattr(args, "verbose", False)
        with torch_threads(args.threads) if hasattr(args, "threads") else nullcontext(), plain_stderr(), \
                (library_logs_at_info() if verbose else quiet_import_noise()):
            return int(args._run(args))
    except InputError as exc:
        print(f"mansu-audit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mansu-audit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
