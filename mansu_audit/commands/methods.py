"""`mansu-audit methods`: list the registered unlearning methods and their default settings."""
from __future__ import annotations

import argparse
import json

from mansu_audit.registry import METHODS

NAME = "methods"
HELP = "list unlearning methods (bundled and registered) with their default settings"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    from mansu_audit.methods.base import setting_fields

    aliases: dict[str, list[str]] = {}
    for alias, name in METHODS.aliases().items():
        aliases.setdefault(name, []).append(alias)
    table = {}
    for name, cls in METHODS.items().items():
        fields_ = setting_fields(cls.Settings)
        doc = (cls.__doc__ or "").strip().splitlines()
        table[name] = {"description": doc[0] if doc else "", "aliases": aliases.get(name, []),
                       "settings": {k: {"type": t.__name__, "default": d, **({"choices": list(c)} if c else {})}
                                    for k, (t, d, c) in fields_.items()}}
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for name, info in table.items():
        also = f" (also: {', '.join(info['aliases'])})" if info["aliases"] else ""
        print(f"{name}{also}: {info['description']}")
        print("    " + " ".join(f"{k}={v['default']}" for k, v in info["settings"].items()))
    return 0
