"""`mansu-audit verify`: recompute every hash of a certificate, re-derive every statistic, CI and verdict
from its own per-item vectors and policy (`mansu_audit.rederive`), and name whatever does not match;
`--recompute` re-runs every evaluation without any cache and compares (`mansu_audit.verification`)."""
from __future__ import annotations

import argparse

from mansu_audit.commands._common import add_model_args
from mansu_audit.commands.certify import parse_artifacts
from mansu_audit.errors import InputError
from mansu_audit.verification import verify

NAME = "verify"
HELP = ("check a certificate against the models, tokenizer, data and policy it names and re-derive every "
        "statistic, CI and verdict from its per-item vectors (--recompute: also re-run every evaluation, no "
        "cache, and compare the per-item predictions); exit 0 if all match, 1 naming each change or "
        "mismatch (or an edited certificate body), 2 on bad input or an input that cannot be re-run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("certificate", help="path to certificate.json")
    p.add_argument("--base", default=None, help="base model to check (default: the path recorded)")
    p.add_argument("--candidate", default=None, help="candidate model to check (default: the path recorded)")
    p.add_argument("--benchmark", default=None, help="benchmark to check (default: the path recorded)")
    p.add_argument("--policy", default=None, help="policy YAML to check (default: the file recorded, if any)")
    p.add_argument("--trusted-key", default=None, metavar="PUB",
                   help="Ed25519 public key (PEM): require certificate.intoto.jsonl beside the certificate to be "
                        "signed by it, with the certificate's body as its predicate")
    g = p.add_argument_group("re-computation (a full re-certification under the recorded settings)")
    g.add_argument("--recompute", action="store_true",
                   help="re-run every evaluation from the models and data (no cache) under the certificate's "
                        "recorded quantizers, policy, seed, device, dtype, prompting and attack settings, and "
                        "compare per-item predictions, statistics and verdicts")
    g.add_argument("--recompute-cad", action="store_true",
                   help="with --recompute: also run EAP-IG + CAD again and compare S's statistics (default: the "
                        "recorded CAD is used as given and not compared)")
    g.add_argument("--oracle", default=None, metavar="MODEL",
                   help="with --recompute: the oracle model K was certified with (its path is not recorded)")
    g.add_argument("--quantized-artifact", action="append", default=[], metavar="NAME=PATH",
                   help="with --recompute: the artifact of that variant (GGUF file, bitsandbytes or GPTQ folder; "
                        "only its name and digest are recorded)")
    g.add_argument("--device", default=None,
                   help="with --recompute: run on this device instead of the recorded one")
    q = g.add_mutually_exclusive_group()
    q.add_argument("--quiet", action="store_true", help="no progress messages during --recompute")
    q.add_argument("--verbose", action="store_true",
                   help="also show the libraries' own log messages on stderr (transformers at INFO)")
    add_model_args(p)


def run(args: argparse.Namespace) -> int:
    if not args.recompute:
        given = [o for o, v in (("--recompute-cad", args.recompute_cad), ("--oracle", args.oracle),
                               ("--quantized-artifact", args.quantized_artifact), ("--device", args.device)) if v]
        if given:
            raise InputError(f"{given[0]} needs --recompute")
    result = verify(args.certificate, base=args.base, candidate=args.candidate, benchmark=args.benchmark,
                    policy=args.policy, trusted_key=args.trusted_key, recompute=args.recompute,
                    recompute_cad=args.recompute_cad, oracle=args.oracle,
                    artifacts=parse_artifacts(args.quantized_artifact), allow_pickle=args.allow_pickle,
                    device=args.device, progress=args.recompute and not args.quiet)
    print(result.signature)
    for change in result.changes:
        print(f"CHANGED: {change}")
    for mismatch in result.mismatches:
        print(f"RECOMPUTE MISMATCH: {mismatch}")
    for note in result.notes:
        print(f"note: {note}")
    if not result.ok:
        return 1
    print(f"OK: {args.certificate}: body, models, tokenizer, data and policy match their recorded SHA-256; "
          f"every statistic, CI and verdict re-derives from the per-item vectors"
          + ("; a full re-computation (no cache) gives the same per-item predictions, statistics and verdicts"
             if result.recomputed else ""))
    return 0
