"""`mansu-audit certify`: verdicts F, R, Q, S for a candidate against its base, and a certificate."""
from __future__ import annotations

import argparse
from pathlib import Path

from mansu_audit.commands._common import add_loading_args, add_model_args, parse_list

NAME = "certify"
HELP = ("certify that a candidate's unlearning is meaningful, keeps retain accuracy and survives quantization; "
        "writes OUT/certificate.json (exit 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 bad input)")
EXIT_CODES = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="original model θ0: 'reference' or a local HF folder")
    p.add_argument("--candidate", required=True, help="unlearned model θu: 'reference' or a local HF folder")
    p.add_argument("--benchmark", default="synthhazard", help="'synthhazard' or a bundle folder")
    p.add_argument("--quantizers", default="nf4,gptq,int8", help="comma list (default %(default)s)")
    p.add_argument("--out", required=True, help="folder for certificate.json and results.json")
    p.add_argument("--policy", default=None, help="YAML file overriding thresholds, bootstrap size, seed, level")
    p.add_argument("--cad", choices=("auto", "skip"), default="auto",
                   help="S: run EAP-IG + CAD on forget_attr (auto) or leave it not computed (skip)")
    p.add_argument("--cache-dir", default=None, help="result cache (default $MANSU_CACHE_DIR or .mansu_cache)")
    p.add_argument("--no-cache", action="store_true", help="recompute everything, store nothing")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    add_model_args(p)
    add_loading_args(p)


def run(args: argparse.Namespace) -> int:
    from mansu_audit.cache import NoCache, ResultCache
    from mansu_audit.certificate import format_verdict_table
    from mansu_audit.certify import certify
    from mansu_audit.errors import InputError

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("--out must be a folder", out)
    quantizers = parse_list(args.quantizers)
    cache = NoCache() if args.no_cache else ResultCache(args.cache_dir)
    cert = certify(args.base, args.candidate, args.benchmark, quantizers=quantizers, policy=args.policy, out=out,
                   cad=None if args.cad == "skip" else "auto", cache=cache, batch_size=args.batch_size,
                   allow_pickle=args.allow_pickle, device=args.device, dtype=args.dtype,
                   chat_template=args.chat_template, progress=not args.quiet)
    body = cert.body
    print(f"base {args.base}  candidate {args.candidate}  benchmark {body['benchmark']['name']}  "
          f"(n forget {body['benchmark']['splits']['forget_eval']}, retain {body['benchmark']['splits']['retain_eval']}, "
          f"B {body['policy']['values']['bootstrap_replicates']}, seed {body['seeds']['bootstrap']})")
    print(format_verdict_table(body))
    for finding in body["guard"]:
        print(f"guard: {finding}")
    print(f"certificate: {out / 'certificate.json'} (body sha256 {cert.body_sha256[:16]}…)")
    return EXIT_CODES[cert.verdict]
