"""`mansu-audit cad`: Circuit Attribution Divergence of a candidate against its base (SPEC §7)."""
from __future__ import annotations

import argparse
import json

from mansu_audit.api import UNQUANTIZED_ALIASES, as_bundle
from mansu_audit.circuits import attribute, compute_cad, select_circuit
from mansu_audit.commands._common import (BENCHMARK_HELP, MODEL_HELP, add_loading_arguments, add_model_args,
                                          STATS_SEED_HELP, add_output_args, add_renamed, check_pinned,
                                          non_negative_int, parse_list, positive_int)
from mansu_audit.compat import check_compatible
from mansu_audit.desiderata import unquantized_record
from mansu_audit.errors import InputError
from mansu_audit.loading import load_model
from mansu_audit.quantizers import available_quantizers, quantize_model
from mansu_audit.stats import DEFAULT_B

NAME = "cad"
HELP = ("circuit attribution divergence (CAD) of a candidate against its base on forget_attr, with a bootstrap CI, "
        "cosine distance, top-k Jaccard and a random-circuit control (optionally per quantizer)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="original model θ0: " + MODEL_HELP)
    p.add_argument("--candidate", required=True, help="unlearned model θu: " + MODEL_HELP)
    p.add_argument("--benchmark", default="synthhazard", help=BENCHMARK_HELP + " (default %(default)s)")
    p.add_argument("--split", default="forget_attr", help="MCQ split with corrupt variants (default %(default)s)")
    p.add_argument("--quantizers", default="", help="comma list: also CAD of each quantized candidate (the "
                   "unquantized one, as loaded, always; 'fp32' is accepted as its name; default: none)")
    p.add_argument("--circuit-frac", type=float, default=0.01,
                   help="circuit size as a fraction of MLP parameters (default %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation steps (default %(default)s)")
    p.add_argument("--attribution", choices=("eap", "eap-ig"), default="eap-ig",
                   help="attribution method: eap (one gradient) or eap-ig (integrated gradients; default %(default)s)")
    add_renamed(p, "--method", "--attribution")
    p.add_argument("--bootstrap", type=positive_int, default=DEFAULT_B, help="bootstrap replicates (default %(default)s)")
    p.add_argument("--stats-seed", type=non_negative_int, default=0, help=STATS_SEED_HELP)
    add_renamed(p, "--seed", "--stats-seed")
    p.add_argument("--batch-size", type=int, default=16,
                   help="clean/corrupt pairs per attribution batch (default %(default)s)")
    add_output_args(p, json=True)
    add_model_args(p)
    add_loading_arguments(p, cpu_only="attribution needs exact float32 gradients", chat_template=False)


def _line(name: str, r) -> str:
    c, rc = r.cad, r.random_cad
    return (f"{name:<12}{c.point:>8.3f}  [{c.low:.3f}, {c.high:.3f}]  {r.cosine_distance:>8.3f}  "
            f"{r.topk_jaccard:>8.3f}  {rc.point:>8.3f} [{rc.low:.3f}, {rc.high:.3f}]")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.circuit_frac <= 1:
        raise InputError(f"--circuit-frac must be in (0, 1], got {args.circuit_frac}")
    if args.steps < 1 or args.bootstrap < 1 or args.batch_size < 1:
        raise InputError("--steps, --bootstrap and --batch-size must be >= 1")
    check_pinned(args, device=True)
    quantizers = [q for q in dict.fromkeys(parse_list(args.quantizers)) if q not in UNQUANTIZED_ALIASES]
    if quantizers:
        unknown = [q for q in quantizers if q not in available_quantizers()]
        if unknown:
            raise InputError(f"unknown quantizer '{unknown[0]}' (available: {', '.join(available_quantizers())})")
    bundle = as_bundle(args.benchmark)
    items = bundle.split(args.split)
    base = load_model(args.base, allow_pickle=args.allow_pickle)
    candidate = load_model(args.candidate, allow_pickle=args.allow_pickle)
    check_compatible(base, candidate)
    progress = not args.quiet
    base_attr = attribute(base.model, base.tokenizer, items, steps=args.steps, method=args.attribution,
                          batch_size=args.batch_size, progress=progress)
    if base_attr.n_items == 0:
        raise InputError(f"no usable items in '{args.split}' (no corrupt variants of equal token length)",
                         bundle.files.get(args.split))
    circuit = select_circuit(base_attr, args.circuit_frac)
    common = dict(circuit=circuit, base_attribution=base_attr, steps=args.steps, method=args.attribution,
                  B=args.bootstrap, seed=args.stats_seed, batch_size=args.batch_size, progress=progress)
    unquantized = unquantized_record({"base": base, "candidate": candidate})  # label, dtype, device per role
    results = {unquantized["label"]: compute_cad(base.model, candidate.model, base.tokenizer, items, **common)}
    for q in quantizers:
        quantized = quantize_model(candidate.model, q, tokenizer=candidate.tokenizer, calibration=bundle).model
        results[q] = compute_cad(base.model, quantized, base.tokenizer, items, **common)
        del quantized
    if args.json:
        print(json.dumps({"base": base.name, "candidate": candidate.name, "benchmark": bundle.name,
                          "split": args.split, "unquantized": unquantized,
                          "settings": {**base_attr.settings(), "circuit_frac": args.circuit_frac,
                                       "B": args.bootstrap, "seed": args.stats_seed},
                          "results": {k: v.to_dict() for k, v in results.items()}}, indent=2))
        return 0
    first = results[unquantized["label"]]
    dtypes = ", ".join(sorted(set(unquantized["dtype"].values())))
    print(f"CAD of {candidate.name} vs {base.name} on {bundle.name}/{args.split} (unquantized = {dtypes} as "
          f"loaded): n {first.n_items} ({len(first.skipped)} skipped), circuit {first.circuit.n_neurons} neurons "
          f"({100 * first.circuit.frac:.2f}% of MLP params), B {args.bootstrap}, seed {args.stats_seed}")
    print(f"{'candidate':<12}{'CAD':>8}  {'95% CI':<16}  {'cos dist':>8}  {'jaccard':>8}  {'random-circuit CAD':>8}")
    for name, r in results.items():
        print(_line(name, r))
    return 0
