"""`mansu-audit` entry point: discovers subcommands in `mansu_audit.commands`."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from mansu_audit import commands
from mansu_audit.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mansu-audit",
        description="Certify that LLM unlearning survives quantization.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = sub.add_parser(module.NAME, help=module.HELP.replace("%", "%%"), description=module.HELP.replace("%", "%%"))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args))
    except InputError as exc:
        print(f"mansu-audit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mansu-audit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
