"""`mansu-audit verify`: recompute every hash of a certificate, re-derive every statistic, CI and verdict
from its own per-item vectors and policy (`mansu_audit.rederive`), and name whatever does not match."""
from __future__ import annotations

import argparse

from mansu_audit.attest import check_attestation, load_public_key

from mansu_audit.certificate import read_document, verify_certificate

NAME = "verify"
HELP = ("check a certificate against the models, tokenizer, data and policy it names and re-derive every "
        "statistic, CI and verdict from its per-item vectors; exit 0 if all match, 1 naming each change or "
        "mismatch (or an edited certificate body), 2 on bad input")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("certificate", help="path to certificate.json")
    p.add_argument("--base", default=None, help="base model to check (default: the path recorded)")
    p.add_argument("--candidate", default=None, help="candidate model to check (default: the path recorded)")
    p.add_argument("--benchmark", default=None, help="benchmark to check (default: the path recorded)")
    p.add_argument("--policy", default=None, help="policy YAML to check (default: the file recorded, if any)")
    p.add_argument("--trusted-key", default=None, metavar="PUB",
                   help="Ed25519 public key (PEM): require certificate.intoto.jsonl beside the certificate to be "
                        "signed by it, with the certificate's body as its predicate")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    trusted = None if args.trusted_key is None else load_public_key(args.trusted_key)  # bad key: exit 2 at once
    signature, problems = check_attestation(Path(args.certificate).parent, read_document(args.certificate)["body"],
                                            trusted)
    print(signature)
    changes = problems + verify_certificate(args.certificate, base=args.base, candidate=args.candidate,
                                            benchmark=args.benchmark, policy=args.policy)
    if changes:
        for change in changes:
            print(f"CHANGED: {change}")
        return 1
    print(f"OK: {args.certificate}: body, models, tokenizer, data and policy match their recorded SHA-256; "
          f"every statistic, CI and verdict re-derives from the per-item vectors")
    return 0
