"""Argument helpers shared by commands (not a command: the leading underscore hides it)."""
from __future__ import annotations

import argparse
import sys

from mansu_audit.certify import CAD_MODES
from mansu_audit.data import LM_EVAL_PREFIX
from mansu_audit.errors import InputError
from mansu_audit.evaluate import TRUNCATE_MODES
from mansu_audit.loading.local import BUNDLED_MODELS
from mansu_audit.prompts import CHAT_MODES, SCORING_MODES
from mansu_audit.threads import ENV_VAR

# One help text per kind of argument, shared by every command (issue 13 §3: one meaning per flag name).
MODEL_HELP = (f"a bundled model ({', '.join(BUNDLED_MODELS)}), a local Hugging Face causal-LM folder, a hub id "
              f"owner/name[@revision], a PEFT LoRA adapter folder (merged over its base) or a .gguf file")
BENCHMARK_HELP = (f"'synthhazard' (bundled), a bundle folder (`mansu-audit convert`) or "
                  f"{LM_EVAL_PREFIX}FORGET,RETAIN (lm-eval tasks, converted on use)")
CAD_HELP = ("S: run EAP-IG + CAD on the benchmark's forget_attr split (auto; S not computed when it has none) or "
            "leave S not computed (skip: no circuit attribution at all); default %(default)s")


class _RenamedOption(argparse.Action):
    """A former option name, kept hidden for one release: one warning line on stderr, then the value goes to the
    new option's destination (so a flag name keeps one meaning across commands; issue 13 §3)."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {parser.prog}: {option_string} is now {self.new} (the old name will be removed)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed(p: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """Accept `old` as a hidden, warned alias of the already-added option `new` (same dest and type)."""
    action = next(a for a in p._actions if new in a.option_strings)
    p.add_argument(old, dest=action.dest, action=_RenamedOption, new=new, type=action.type, choices=action.choices,
                   default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


STATS_SEED_HELP = "seed of the statistics: bootstrap resamples and the random-circuit control (default %(default)s)"


SET_HELP = ("override a method setting, [METHOD:]KEY=VALUE (repeatable; types are checked); METHOD: may be left "
            "out when the command runs one method")


def parse_settings(values: list[str], methods: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """`--set [METHOD:]KEY=VALUE` values (one syntax on every command) as {method: ["KEY=VALUE", ...]}.

    METHOD (the text given in --method/--methods; a file method `path.py:Class` works, the last `:` before
    `=` separates it) may be left out only when `methods` has one entry; a METHOD the command does not run is
    an error, so a typo never silently changes nothing."""
    out: dict[str, list[str]] = {}
    for text in values:
        left, sep, value = text.partition("=")
        method, colon, key = left.rpartition(":")
        if not sep or not key.strip():
            raise InputError(f"--set '{text}': expected [METHOD:]KEY=VALUE")
        if not colon:
            if len(methods) != 1:
                raise InputError(f"--set '{text}': this command runs several methods; write METHOD:KEY=VALUE")
            method = methods[0]
        method = method.strip()
        if method not in methods:
            raise InputError(f"--set '{text}': '{method}' is not a method this command runs "
                             f"({', '.join(methods)})")
        out.setdefault(method, []).append(f"{key.strip()}={value}")
    return out


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
    if forget_text:
        p.add_argument("--include-forget-text", action="store_true",
                       help="write forget-set item text (hazardous) into the HTML report, behind a redaction switch "
                            "(default: left out of the file)")


def add_output_args(p: argparse.ArgumentParser, *, quiet: bool = True, json: bool = False) -> None:
    """`--quiet` / `--verbose` (every command that prints progress: progress goes to stderr) and `--json` (every
    command that prints a result table: the machine-readable result is then the only thing on stdout)."""
    if quiet:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--quiet", action="store_true", help="no progress messages or bars on stderr")
        group.add_argument("--verbose", action="store_true",
                           help="also show the libraries' own log messages on stderr (transformers at INFO, "
                                "optional libraries' import warnings), which are otherwise kept to errors")
    if json:
        p.add_argument("--json", action="store_true",
                       help="print the result as JSON on stdout, instead of the table (progress stays on stderr)")


def add_cad_arg(p: argparse.ArgumentParser) -> None:
    """`--cad auto|skip` (certify, matrix, demo): passed as `cad=` to `mansu_audit.certify`."""
    p.add_argument("--cad", choices=CAD_MODES, default="auto", help=CAD_HELP)


def add_model_args(p: argparse.ArgumentParser, *, allow_pickle: bool = True) -> None:
    """`--allow-pickle` and `--threads` for every command that loads a model (the CLI applies `--threads`)."""
    if allow_pickle:
        p.add_argument("--allow-pickle", action="store_true",
                       help="allow pickle (.bin) weights; unpickling untrusted files can run code")
    p.add_argument("--threads", default=None, metavar="N",
                   help=f"torch CPU threads (default ${ENV_VAR}, else the available cores minus one: see "
                        f"mansu_audit.threads)")


def add_loading_arguments(p: argparse.ArgumentParser, *, cpu_only: str | None = None,
                          float32_only: str | None = None, chat_template: bool = True) -> None:
    """`--device`, `--dtype` (same default, auto, on every command that loads a model; pass them to `load_model`)
    and `--chat-template`. A command whose computation is pinned says why in `cpu_only` (device and dtype: CPU
    float32) or `float32_only` (dtype only); it still takes the flags, and `check_pinned` refuses other values."""
    if cpu_only:
        p.add_argument("--device", default="auto",
                       help=f"runs on the CPU ({cpu_only}): auto and cpu are accepted (default %(default)s)")
    else:
        p.add_argument("--device", default="auto",
                       help="auto (GPU if present, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps "
                            "(default %(default)s)")
    pinned = cpu_only or float32_only
    if pinned:
        p.add_argument("--dtype", default="auto",
                       help=f"runs in float32 ({pinned}): auto and float32 are accepted (default %(default)s)")
    else:
        p.add_argument("--dtype", default="auto",
                       help="auto (bf16 on GPU, float32 on CPU), float32, bfloat16, float16 (default %(default)s)")
    if chat_template:
        add_chat_template_arg(p)


def check_pinned(args: argparse.Namespace, *, device: bool, dtype: bool = True) -> None:
    """InputError unless `--device` is auto/cpu (when `device`) and `--dtype` auto/float32 (when `dtype`)."""
    if device and args.device not in ("auto", "cpu"):
        raise InputError(f"--device {args.device}: {args.command} runs on the CPU (use auto or cpu)")
    if dtype and args.dtype not in ("auto", "float32"):
        raise InputError(f"--dtype {args.dtype}: {args.command} runs in float32 (use auto or float32)")


def add_chat_template_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat-template", default="auto", choices=CHAT_MODES,
                   help="wrap prompts in the tokenizer's chat template (auto: when it has one and items are "
                        "letter-scored; lm-eval's default is off)")


def add_loading_args(p: argparse.ArgumentParser) -> None:
    """`--device`, `--dtype`, `--chat-template`, `--batch-size`, `--truncate`, `--scoring` for commands that
    load and evaluate models."""
    add_loading_arguments(p)
    p.add_argument("--batch-size", default="auto", type=parse_batch_size,
                   help="evaluation batch size, or auto (64 on CPU, 256 on GPU, halved on out-of-memory; "
                        "default %(default)s)")
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


def add_stage_args(p: argparse.ArgumentParser) -> None:
    """`--relearn`, `--consistency`, `--cross-scoring` (certify, matrix, demo): passed as the same-named
    arguments to certify."""
    p.add_argument("--relearn", choices=("auto", "on", "skip"), default="auto",
                   help="K: relearning attack + probes (auto: when the benchmark has forget_attack or --oracle is "
                        "given; on: always; skip: K not computed; default %(default)s)")
    p.add_argument("--consistency", choices=("auto", "skip"), default="auto",
                   help="report base and candidate accuracy under every cyclic rotation of the choices and flag "
                        "order-dependent models (skip: leave it out; default %(default)s)")
    p.add_argument("--cross-scoring", choices=("auto", "on", "skip"), default="auto",
                   help="also score forget_eval in a second formulation (letter <-> choice-text on the items' cloze "
                        "statements) and let F take the worse of both when the base knows the facts there (auto: "
                        "when the benchmark has one; default %(default)s)")


def add_grid_args(p: argparse.ArgumentParser) -> None:
    """The options `matrix` and `demo` share: CAD, K, consistency, F's second formulation, cache, output,
    threads, where unlearning trains."""
    add_cad_arg(p)
    add_stage_args(p)
    add_cache_args(p, forget_text=True)
    add_output_args(p, json=True)
    add_model_args(p, allow_pickle=False)
    add_loading_arguments(p, float32_only="unlearning trains in float32 and each cell is certified on the CPU in "
                                           "float32; --device is where unlearning trains", chat_template=False)
