"""`mansu-audit verify`: recompute every hash of a certificate and name whatever changed."""
from __future__ import annotations

import argparse

NAME = "verify"
HELP = ("check a certificate against the models, tokenizer, data and policy it names; exit 0 if nothing "
        "changed, 1 naming each change (or an edited certificate body), 2 on bad input")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("certificate", help="path to certificate.json")
    p.add_argument("--base", default=None, help="base model to check (default: the path recorded)")
    p.add_argument("--candidate", default=None, help="candidate model to check (default: the path recorded)")
    p.add_argument("--benchmark", default=None, help="benchmark to check (default: the path recorded)")
    p.add_argument("--policy", default=None, help="policy YAML to check (default: the file recorded, if any)")


def run(args: argparse.Namespace) -> int:
    from mansu_audit.certificate import verify_certificate

    changes = verify_certificate(args.certificate, base=args.base, candidate=args.candidate,
                                 benchmark=args.benchmark, policy=args.policy)
    if changes:
        for change in changes:
            print(f"CHANGED: {change}")
        return 1
    print(f"OK: {args.certificate}: body, models, tokenizer, data and policy match their recorded SHA-256")
    return 0
