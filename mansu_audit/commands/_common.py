"""Argument helpers shared by commands (not a command: the leading underscore hides it)."""
from __future__ import annotations

import argparse


def non_negative_int(text: str) -> int:
    """argparse type for seeds: numpy refuses negative ones (argparse reports the bad value in one line)."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def positive_int(text: str) -> int:
    """argparse type for counts such as bootstrap replicates."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def parse_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle (.bin) weights; unpickling untrusted files can run code")


def add_loading_args(p: argparse.ArgumentParser) -> None:
    """`--device`, `--dtype`, `--chat-template`, `--batch-size` for commands that load and evaluate models."""
    from mansu_audit.loaders import add_loading_arguments

    add_loading_arguments(p)
    p.add_argument("--batch-size", default="auto", type=parse_batch_size,
                   help="evaluation batch size, or auto (64 on CPU, 256 on GPU, halved on out-of-memory)")


def parse_batch_size(text: str) -> int | None:
    """'auto' -> None; a positive integer otherwise (argparse reports anything else in one line)."""
    if text == "auto":
        return None
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value
