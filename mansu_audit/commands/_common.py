"""Argument helpers shared by commands (not a command: the leading underscore hides it)."""
from __future__ import annotations

import argparse


def parse_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle (.bin) weights; unpickling untrusted files can run code")
