"""Build `reference-nf4grid`: the reference model with its decoder weights snapped onto the NF4 grid.

Many published checkpoints already went through 4-bit quantization, so their
weights sit exactly on NF4 codes. Unlearning such a base with small updates
flips almost no codes, and quantizing the unlearned model can restore what was
forgotten (the CPU experiment of issue 6). This base reproduces that regime.

Every Linear inside the decoder blocks (q/k/v/o, gate/up/down) is replaced by
its bitsandbytes NF4 value (blocksize 64, no double quantization) via the
suite's `nf4` quantizer; embeddings, norms and the LM head are kept, as
transformers keeps them in full precision. The script checks that the result
equals `bitsandbytes.functional.dequantize_4bit(*quantize_4bit(W, blocksize=64,
quant_type="nf4"))` bit for bit and that NF4 is idempotent on it, evaluates
forget/retain accuracy (fp32 and NF4; refuses to save below 0.85), and writes
the folder (model.safetensors, config, tokenizer, build_info.json) atomically.

    python benchmarks_data/reference-nf4grid/build.py
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MIN_ACCURACY = 0.85


def main(argv: list[str] | None = None) -> int:
    import argparse

    import bitsandbytes.functional as bnbf

    ap = argparse.ArgumentParser(description="build reference-nf4grid")
    ap.add_argument("--source", default="reference", help="model to snap (default: the bundled reference)")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--min-accuracy", type=float, default=MIN_ACCURACY)
    args = ap.parse_args(argv)

    from mansu_audit.api import evaluate
    from mansu_audit.data import load_bundle
    from mansu_audit.loading import load_model
    from mansu_audit.quantizers import quantizable_linears, quantize_model

    base = load_model(args.source)
    snapped = quantize_model(base.model, "nf4").model
    base_modules = dict(base.model.named_modules())
    names = []
    for name, module in quantizable_linears(snapped):
        w0 = base_modules[name].weight.data
        packed, state = bnbf.quantize_4bit(w0, blocksize=64, quant_type="nf4")
        if not torch.equal(module.weight.data, bnbf.dequantize_4bit(packed, state).to(w0.dtype)):
            print(f"{name}: suite NF4 differs from bitsandbytes", file=sys.stderr)
            return 1
        names.append(name)
    again = quantize_model(snapped, "nf4").model
    idempotent = all(torch.equal(a, b) for a, b in zip(snapped.state_dict().values(), again.state_dict().values()))
    untouched = [n for n, p in snapped.named_parameters() if torch.equal(p, dict(base.model.named_parameters())[n])]

    bundle = load_bundle("synthhazard")
    from mansu_audit.loading import model_from_objects

    scores = evaluate(model_from_objects(snapped, base.tokenizer, "reference-nf4grid"), bundle, quantizers=("nf4",),
                      B=1000)
    accuracy = {q: {s: sc.accuracy.point for s, sc in splits.items()} for q, splits in scores.scores.items()}
    print(json.dumps(accuracy, indent=2))
    worst = min(accuracy[q][s] for q in accuracy for s in ("forget_eval", "retain_eval"))
    if worst < args.min_accuracy:
        print(f"accuracy {worst:.3f} < {args.min_accuracy}: not saving", file=sys.stderr)
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=args.out))
    try:
        snapped.save_pretrained(str(tmp), safe_serialization=True)
        base.tokenizer.save_pretrained(str(tmp))
        info = {"source": str(args.source), "source_files": base.file_hashes(), "quantizer": "nf4",
                "blocksize": 64, "double_quant": False, "snapped_weights": names,
                "full_precision_parameters": sorted(set(untouched)), "nf4_idempotent": idempotent,
                "accuracy": accuracy, "min_accuracy": args.min_accuracy}
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        for item in tmp.iterdir():
            os.chmod(item, 0o666 & ~umask)
            os.replace(item, args.out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out} ({len(names)} weights snapped; NF4 idempotent: {idempotent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
