"""`mansu-audit certify`: verdicts F, R, Q, S for a candidate against its base, and a certificate."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mansu_audit.attest import load_private_key
from mansu_audit.cache import NoCache, ResultCache
from mansu_audit.certificate import format_verdict_table, guard_messages
from mansu_audit.certify import DEPLOYMENTS, MERGED, certify
from mansu_audit.commands._common import (BENCHMARK_HELP, MODEL_HELP, add_cache_args, add_cad_arg, add_stage_args, add_loading_args,
                                          add_model_args, add_output_args, parse_list)
from mansu_audit.errors import InputError
from mansu_audit.outdir import check_cache_dir, check_output_dir

NAME = "certify"
HELP = ("certify that a candidate's unlearning is meaningful, keeps retain accuracy and survives quantization; "
        "writes OUT/certificate.json (exit 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 bad input)")
EXIT_CODES = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="original model θ0: " + MODEL_HELP)
    p.add_argument("--candidate", required=True, help="unlearned model θu: " + MODEL_HELP)
    p.add_argument("--benchmark", default="synthhazard", help=BENCHMARK_HELP + " (default %(default)s)")
    p.add_argument("--quantizers", default="nf4,gptq,int8", help="comma list (default %(default)s)")
    p.add_argument("--out", required=True, help="folder for certificate.json and results.json")
    p.add_argument("--policy", default=None, help="YAML file overriding thresholds, bootstrap size, seed, level")
    add_stage_args(p)
    p.add_argument("--oracle", default=None, metavar="MODEL",
                   help="a model that never learned the forget facts: gets the same relearning attack as a "
                        "reference point (reported, not gated)")
    p.add_argument("--quantized-artifact", action="append", default=[], metavar="NAME=PATH",
                   help="evaluate a quantized artifact of the candidate made elsewhere as its quantized variant "
                        "NAME (Q[NAME]; base unquantized beside it; its digest is recorded): a GGUF file (e.g. "
                        "llama.cpp Q4_K_M), a bitsandbytes 4-bit/8-bit or a GPTQ checkpoint folder; repeatable")
    p.add_argument("--deployment", choices=DEPLOYMENTS, default=MERGED,
                   help="how a LoRA-adapter candidate is served quantized: merged (quantize the merged weights) or "
                        "adapter-on-quantized-base (quantized base + the adapter in full precision, as QLoRA/PEFT "
                        "serve it); recorded in the certificate (default %(default)s)")
    add_cad_arg(p)
    add_cache_args(p)
    add_output_args(p, json=True)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier certify output in --out (refused otherwise when --out is not empty)")
    p.add_argument("--report", action="store_true",
                   help="also write the HTML report (--out/index.html, as `mansu-audit report` does)")
    p.add_argument("--sign-key", default=None, metavar="KEY",
                   help="Ed25519 private key (PEM, `mansu-audit keygen`): sign the in-toto attestation "
                        "OUT/certificate.intoto.jsonl (unsigned otherwise)")
    add_model_args(p)
    add_loading_args(p)


def run(args: argparse.Namespace) -> int:
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    out = check_output_dir(args.out, args.overwrite)  # before any model loads
    if not args.no_cache:
        check_cache_dir(args.cache_dir)
    sign_key = None if args.sign_key is None else load_private_key(args.sign_key)
    quantizers = parse_list(args.quantizers)
    artifacts = parse_artifacts(args.quantized_artifact)
    if not quantizers and args.quantizers.strip():
        raise InputError(f"--quantizers '{args.quantizers}': no quantizer named")
    cache = NoCache() if args.no_cache else ResultCache(args.cache_dir)
    cert = certify(args.base, args.candidate, args.benchmark, quantizers=quantizers, policy=args.policy, out=out,
                   cad=args.cad, cache=cache, batch_size=args.batch_size,
                   allow_pickle=args.allow_pickle, device=args.device, dtype=args.dtype,
                   chat_template=args.chat_template, truncate=args.truncate, scoring=args.scoring,
                   progress=not args.quiet,
                   overwrite=args.overwrite, threads=args.threads,
                   sign_key=sign_key, command=reproducible_command(getattr(args, "_argv", None)),
                   relearn=args.relearn, oracle=args.oracle, consistency=args.consistency,
                   cross_scoring=args.cross_scoring, artifacts=artifacts,
                   report=args.report,
                   deployment=args.deployment)

    body = cert.body
    if args.json:
        print(json.dumps({"verdict": cert.verdict, "exit_code": EXIT_CODES[cert.verdict],
                          "certificate": str(out / "certificate.json"),
                          "attestation": str(out / "certificate.intoto.jsonl"), "signed": sign_key is not None,
                          "body_sha256": cert.body_sha256, "body": body}, indent=2))
        return EXIT_CODES[cert.verdict]
    print(f"base {args.base}  candidate {args.candidate}  benchmark {body['benchmark']['name']}  "
          f"(n forget {body['benchmark']['splits']['forget_eval']}, retain {body['benchmark']['splits']['retain_eval']}, "
          f"B {body['policy']['values']['bootstrap_replicates']}, seed {body['seeds']['bootstrap']})")
    print(format_verdict_table(body))
    for finding in guard_messages(body):
        print(f"guard: {finding}")
    for flag in (body.get("consistency") or {}).get("flags", []):
        print(f"consistency: {flag}")
    print(f"certificate: {out / 'certificate.json'} (body sha256 {cert.body_sha256[:16]}…)")
    print(f"attestation: {out / 'certificate.intoto.jsonl'} ({'signed' if sign_key else 'unsigned'})")
    return EXIT_CODES[cert.verdict]


def parse_artifacts(values: list[str]) -> dict[str, str]:
    """`["q4_k_m=model.Q4_K_M.gguf", ...]` -> {name: path}; InputError on a malformed or repeated name."""

    out: dict[str, str] = {}
    for value in values:
        name, eq, path = value.partition("=")
        if not eq or not name.strip() or not path.strip():
            raise InputError(f"--quantized-artifact '{value}': expected NAME=PATH (a .gguf file or a "
                             f"bitsandbytes/GPTQ checkpoint folder)")
        if name.strip() in out:
            raise InputError(f"--quantized-artifact: the name '{name.strip()}' is given twice")
        out[name.strip()] = path.strip()
    return out


# Options that only choose where output, cache and key live, or how chatty the run is: left out of the
# recorded command, so the same inputs give the same certificate body wherever it is written.
STORAGE_OPTIONS = {"--out": True, "--overwrite": False, "--cache-dir": True, "--no-cache": False,
                   "--quiet": False, "--verbose": False, "--json": False, "--sign-key": True,
                   "--report": False}


def reproducible_command(argv: list[str] | None) -> str | None:
    """`mansu-audit certify ...` as typed (shell-quoted), without the STORAGE_OPTIONS."""
    import shlex

    if argv is None:
        return None
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name, eq, _ = token.partition("=")
        # argparse accepts unique prefixes (--over for --overwrite); it already refused ambiguous ones
        match = [o for o in STORAGE_OPTIONS if o == name] or \
            ([o for o in STORAGE_OPTIONS if o.startswith(name)] if name.startswith("--") and len(name) > 2 else [])
        if len(match) == 1:
            skip = STORAGE_OPTIONS[match[0]] and not eq
            continue
        kept.append(token)
    return shlex.join(["mansu-audit", *kept])
