"""`mansu-audit diagnose`: weight-space permanence of an update under each quantizer (no data needed)."""
from __future__ import annotations

import argparse
import json

from mansu_audit.api import as_bundle
from mansu_audit.commands._common import (BENCHMARK_HELP, MODEL_HELP, add_loading_arguments, add_model_args,
                                          add_output_args, add_renamed, check_pinned, parse_list)
from mansu_audit.diagnostics import diagnose, diagnosed_names
from mansu_audit.loading import load_model

NAME = "diagnose"
HELP = "per-quantizer weight diagnostics of candidate vs base: RMS(delta)/bin width, code changes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="original model: " + MODEL_HELP)
    p.add_argument("--candidate", required=True, help="unlearned model: " + MODEL_HELP)
    p.add_argument("--quantizers", default="nf4,gptq-datafree,int8",
                   help="comma list of registered quantizers, plus gptq-datafree: GPTQ's grid without calibration "
                        "(symmetric RTN int4 g128), a proxy, not the calibrated gptq certify runs "
                        "(default %(default)s)")
    p.add_argument("--benchmark", default=None,
                   help="benchmark whose retain_corpus calibrates gptq/gptq-act-order (without it they are reported as "
                        "gptq-datafree): " + BENCHMARK_HELP)
    add_renamed(p, "--calibration", "--benchmark")
    p.add_argument("--per-layer", action="store_true", help="also print one row per layer")
    add_output_args(p, quiet=False, json=True)
    add_model_args(p)
    add_loading_arguments(p, cpu_only="diagnostics are data-free weight arithmetic", chat_template=False)


def format_table(diagnosis, per_layer: bool = False) -> str:
    rows = [f"{'quantizer':<16}{'layer':<34}{'updated':>9}{'rms(d)/bin':>12}{'>=half gap':>12}{'code chg':>10}{'value chg':>10}"]
    for q, d in diagnosis.quantizers.items():
        for s in ([d.overall] + (d.layers if per_layer else [])):
            rows.append(f"{q:<16}{s.name[-33:]:<34}{s.frac_updated:>9.4f}{s.rms_delta_over_bin:>12.3g}"
                        f"{s.frac_over_half_gap:>12.4f}{s.frac_code_changed:>10.4f}{s.frac_value_changed:>10.4f}")
    notes = {d.mode for d in diagnosis.quantizers.values() if d.mode != "exact"}
    return "\n".join(rows + [f"note: {n}" for n in sorted(notes)])


def run(args: argparse.Namespace) -> int:
    check_pinned(args, device=True)
    names = parse_list(args.quantizers)
    diagnosed_names(names, calibrated=args.benchmark is not None)  # unknown names fail before any model loads
    base = load_model(args.base, allow_pickle=args.allow_pickle)
    cand = load_model(args.candidate, allow_pickle=args.allow_pickle)
    bundle = as_bundle(args.benchmark) if args.benchmark else None
    result = diagnose(base.model, cand.model, names, calibration=bundle,
                      tokenizer=base.tokenizer if bundle is not None else None,
                      base_name=base.name, candidate_name=cand.name)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"base {result.base} vs candidate {result.candidate}")
        print(format_table(result, args.per_layer))
    return 0
