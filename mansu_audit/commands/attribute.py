"""`mansu-audit attribute`: EAP-IG node scores on forget_attr, the selected circuit and its faithfulness."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mansu_audit.api import as_bundle
from mansu_audit.circuits import attribute, faithfulness_details, random_circuit, select_circuit
from mansu_audit.circuits.circuit import Circuit
from mansu_audit.commands._common import (BENCHMARK_HELP, MODEL_HELP, add_loading_arguments, add_model_args,
                                          STATS_SEED_HELP, add_output_args, add_renamed, check_pinned,
                                          non_negative_int)
from mansu_audit.errors import InputError
from mansu_audit.io import atomic_write_bytes
from mansu_audit.loading import load_model

NAME = "attribute"
HELP = ("run EAP / EAP-IG circuit attribution on a benchmark's forget_attr split and write node scores, "
        "the selected MLP circuit, its faithfulness and timing as JSON")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--benchmark", default="synthhazard", help=BENCHMARK_HELP + " (default %(default)s)")
    p.add_argument("--split", default="forget_attr", help="MCQ split with corrupt variants (default %(default)s)")
    p.add_argument("--out-file", metavar="FILE", help="the JSON file to write (required)")
    add_renamed(p, "--out", "--out-file")
    p.add_argument("--circuit-frac", type=float, default=0.01,
                   help="fraction of MLP parameters the circuit's neurons own (default %(default)s)")
    p.add_argument("--head-frac", type=float, default=1.0,
                   help="fraction of attention heads kept in the circuit (default %(default)s: all)")
    p.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation steps (default %(default)s)")
    p.add_argument("--attribution", choices=("eap", "eap-ig"), default="eap-ig",
                   help="attribution method: eap (one gradient) or eap-ig (integrated gradients; default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="clean/corrupt pairs per attribution batch (default %(default)s)")
    p.add_argument("--stats-seed", type=non_negative_int, default=0, help=STATS_SEED_HELP)
    add_renamed(p, "--seed", "--stats-seed")
    add_renamed(p, "--method", "--attribution")
    add_output_args(p)
    add_model_args(p)
    add_loading_arguments(p, cpu_only="attribution needs exact float32 gradients", chat_template=False)


def _check(args: argparse.Namespace) -> None:
    if not 0 < args.circuit_frac <= 1:
        raise InputError(f"--circuit-frac must be in (0, 1], got {args.circuit_frac}")
    if not 0 <= args.head_frac <= 1:
        raise InputError(f"--head-frac must be in [0, 1], got {args.head_frac}")
    if args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out_file is None:
        raise InputError("the argument --out-file is required")
    out = Path(args.out_file)
    if out.is_dir():
        raise InputError("--out-file is a folder; give a file name", out)


def attribution_report(loaded, bundle, split: str, *, circuit_frac: float, head_frac: float, steps: int,
                       method: str, batch_size: int, seed: int, progress: bool) -> dict:
    """Everything `attribute` writes, as a JSON-able dict."""

    items = bundle.split(split)
    if not any(it.corrupt for it in items):
        raise InputError(f"split '{split}' has no 'corrupt' question variants (needed for attribution)",
                         bundle.files.get(split))
    model, tok = loaded.model, loaded.tokenizer
    try:
        attr = attribute(model, tok, items, steps=steps, method=method, batch_size=batch_size, progress=progress,
                         keep_items=False)
    except ValueError as exc:
        raise InputError(str(exc), loaded.path) from None
    if attr.n_items == 0:
        raise InputError(f"no usable items: all {len(items)} clean/corrupt pairs differ in token length",
                         bundle.files.get(split))
    circuit = select_circuit(attr, circuit_frac, head_frac=head_frac)
    control = random_circuit(model, same_size_as=circuit, seed=seed)
    frame = Circuit({}, 0, 0.0, circuit.shape, circuit.heads, circuit.input, "heads-and-input-only")
    start = time.perf_counter()
    faith = {name: faithfulness_details(model, tok, items, c, batch_size=batch_size).to_dict()
             for name, c in (("circuit", circuit), ("random_circuit", control), ("no_neurons", frame))}
    faith_seconds = time.perf_counter() - start
    per_layer_mass = attr.mlp.abs().sum(1)
    top_layers = sorted(range(attr.shape[0]), key=lambda l: -float(per_layer_mass[l]))
    return {
        "model": loaded.name, "benchmark": bundle.name, "split": split,
        "settings": {**attr.settings(), "circuit_frac": circuit_frac, "head_frac": head_frac, "seed": seed},
        "attribution": attr.summary(),
        "circuit": circuit.to_dict(),
        "random_circuit": control.to_dict(),
        "faithfulness": faith,
        "top_layers": [{"layer": l, "abs_mlp_score": float(per_layer_mass[l]),
                        "circuit_neurons": int(len(circuit.neurons.get(l, [])))} for l in top_layers],
        "timing": {"attribution_seconds": round(attr.seconds, 3), "faithfulness_seconds": round(faith_seconds, 3)},
        "node_scores": {
            "mlp": {str(l): [round(float(v), 8) for v in attr.mlp[l]] for l in range(attr.shape[0])},
            "heads": {str(l): [round(float(v), 8) for v in attr.heads[l]] for l in range(attr.shape[0])},
        },
    }


def run(args: argparse.Namespace) -> int:
    _check(args)
    check_pinned(args, device=True)
    bundle = as_bundle(args.benchmark)
    loaded = load_model(args.model, allow_pickle=args.allow_pickle)
    report = attribution_report(loaded, bundle, args.split, circuit_frac=args.circuit_frac, head_frac=args.head_frac,
                                steps=args.steps, method=args.attribution, batch_size=args.batch_size, seed=args.stats_seed,
                                progress=not args.quiet)
    atomic_write_bytes(Path(args.out_file), (json.dumps(report, indent=1) + "\n").encode())
    a, c, f = report["attribution"], report["circuit"], report["faithfulness"]
    print(f"{args.attribution} on {report['split']}: {a['n_items']} items ({a['n_skipped']} skipped), "
          f"{a['seconds']:.1f}s; M clean {a['metric_clean_mean']:.3f}, corrupt {a['metric_corrupt_mean']:.3f}")
    print(f"circuit: {c['n_neurons']} neurons, {c['n_params']} params ({100 * c['frac']:.2f}% of MLP), "
          f"per layer {[len(v) for _, v in sorted(c['neurons'].items(), key=lambda kv: int(kv[0]))]}")
    print(f"faithfulness: circuit {f['circuit']['faithfulness']:.3f}, random same size "
          f"{f['random_circuit']['faithfulness']:.3f}, heads+input only {f['no_neurons']['faithfulness']:.3f}")
    print(f"top layers (|MLP score|): {[t['layer'] for t in report['top_layers']]}")
    print(f"wrote {args.out_file}")
    return 0
