"""Argument helpers shared by commands (not a command: the leading underscore hides it)."""
from __future__ import annotations

import argparse

from mansu_audit.evaluate import TRUNCATE_MODES
from mansu_audit.prompts import CHAT_MODES, SCORING_MODES
from mansu_audit.threads import ENV_VAR


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


def add_cache_args(p: argparse.ArgumentParser, *, forget_text: bool = False) -> None:
    """`--cache-dir`, `--no-cache`, `--quiet` (and `--include-forget-text` for commands writing the HTML report)."""
    p.add_argument("--cache-dir", default=None, help="result cache (default $MANSU_CACHE_DIR or ~/.cache/mansu-audit)")
    p.add_argument("--no-cache", action="store_true", help="recompute everything, store nothing")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    if forget_text:
        p.add_argument("--include-forget-text", action="store_true",
                       help="write forget-set item text (hazardous) into the HTML report, behind a redaction switch "
                            "(default: left out of the file)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """`--allow-pickle` and `--threads` for every command that loads a model (the CLI applies `--threads`)."""
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle (.bin) weights; unpickling untrusted files can run code")
    p.add_argument("--threads", default=None, metavar="N",
                   help=f"torch CPU threads (default ${ENV_VAR}, else the available cores minus one: see "
                        f"mansu_audit.threads)")


def add_loading_arguments(p: argparse.ArgumentParser) -> None:
    """`--device`, `--dtype`, `--chat-template` for commands that load models (pass them to `load_model`)."""
    p.add_argument("--device", default="auto",
                   help="auto (GPU if present, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, float32 on CPU), float32, bfloat16, float16")
    p.add_argument("--chat-template", default="auto", choices=CHAT_MODES,
                   help="wrap prompts in the tokenizer's chat template (auto: when it has one)")


def add_loading_args(p: argparse.ArgumentParser) -> None:
    """`--device`, `--dtype`, `--chat-template`, `--batch-size`, `--truncate`, `--scoring` for commands that
    load and evaluate models."""
    add_loading_arguments(p)
    p.add_argument("--batch-size", default="auto", type=parse_batch_size,
                   help="evaluation batch size, or auto (64 on CPU, 256 on GPU, halved on out-of-memory)")
    p.add_argument("--truncate", default=None, choices=TRUNCATE_MODES,
                   help="prompts longer than the model's context: refused unless 'left' (drop their oldest "
                        "tokens, as lm-eval does; the count is recorded)")
    p.add_argument("--scoring", default=None, choices=SCORING_MODES,
                   help="how an MCQ item is scored: letter (the lm-eval MMLU prompt, continuations ' A', ' B', ...), "
                        "choice-text (each choice's text after the item's cloze or 'Question: ...\\nAnswer:', "
                        "lm-eval's acc) or choice-text-norm (acc_norm: per character); default: the benchmark's "
                        "prompt.scoring, else letter")


def parse_batch_size(text: str) -> int | None:
    """'auto' -> None; a positive integer otherwise (argparse reports anything else in one line)."""
    if text == "auto":
        return None
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value
