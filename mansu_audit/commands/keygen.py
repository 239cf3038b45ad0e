"""`mansu-audit keygen`: an Ed25519 key pair for signing certificates (`certify --sign-key`)."""
from __future__ import annotations

import argparse

from mansu_audit.attest import generate_keypair, keyid, load_public_key

NAME = "keygen"
HELP = ("write a new Ed25519 signing key pair into OUT (private key mode 0600; never overwrites): "
        "sign with `certify --sign-key`, check with `verify --trusted-key`")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for mansu-signing-key.pem and mansu-signing-key.pub.pem")


def run(args: argparse.Namespace) -> int:
    private, public = generate_keypair(args.out)
    print(f"private key: {private} (mode 0600; keep it secret)")
    print(f"public key:  {public} (keyid {keyid(load_public_key(public))[:16]}…)")
    return 0
