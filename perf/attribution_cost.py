"""EAP-IG cost relative to its floor: (steps + 2) forward and `steps` backward passes of the same batches.

The floor runs exactly the passes EAP-IG cannot avoid — a no-grad forward on the
corrupted and on the clean inputs, then `steps` forward+backward passes to the
input embeddings — with the same batches, the same last-position logits and no
hooks. The ratio is EAP-IG time / floor time (target <= 1.3). Both are timed in
this process, interleaved, best of `--repeats`.

    OMP_NUM_THREADS=1 python perf/attribution_cost.py [--model reference] [--steps 5]

Without the reference weights it uses a random model of the reference's shape.
"""
from __future__ import annotations

import argparse
import time

import torch

from mansu_audit.circuits import adapter_for, attribute
from mansu_audit.circuits.attribution import alphas_for, embed, encode_items, make_batches, pad_id, run_metric
from mansu_audit.data import BUNDLED_DATA, load_bundle


def floor(model, tokenizer, items, steps: int, batch_size: int) -> float:
    adapter = adapter_for(model)
    device = next(model.parameters()).device
    encoded, _ = encode_items(tokenizer, items)
    batches = make_batches(encoded, batch_size, pad_id(tokenizer), device)
    start = time.perf_counter()
    for batch in batches:
        e_clean, e_corrupt = embed(adapter, batch.clean), embed(adapter, batch.corrupt)
        with torch.no_grad():
            run_metric(adapter, e_corrupt, batch)
            run_metric(adapter, e_clean, batch)
        for a in alphas_for("eap-ig", steps):
            x = (e_corrupt + a * (e_clean - e_corrupt)).requires_grad_(True)
            torch.autograd.grad(run_metric(adapter, x, batch).sum(), x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def load(spec: str, device: str):
    from transformers import AutoTokenizer

    ref = BUNDLED_DATA / "reference-model"
    if spec == "reference" and not (ref / "model.safetensors").is_file():
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(str(ref))
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
        print("reference weights absent: random model of the reference's shape")
        return LlamaForCausalLM(cfg).eval().to(device), tok, "random reference-shaped"
    from mansu_audit.loading import load_model

    loaded = load_model(spec, device=device)
    return loaded.model, loaded.tokenizer, loaded.name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="reference")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--items", type=int, default=64, help="forget_attr items used")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    model, tok, name = load(args.model, args.device)
    items = load_bundle("synthhazard").split("forget_attr")[:args.items]
    attribute(model, tok, items[:args.batch_size], steps=1, batch_size=args.batch_size)  # warm-up
    floor(model, tok, items[:args.batch_size], 1, args.batch_size)
    t_attr, t_floor = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        attribute(model, tok, items, steps=args.steps, batch_size=args.batch_size)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t_attr.append(time.perf_counter() - start)
        t_floor.append(floor(model, tok, items, args.steps, args.batch_size))
    a, f = min(t_attr), min(t_floor)
    print(f"model {name} on {args.device}, {len(items)} items, batch {args.batch_size}, steps {args.steps}, "
          f"threads {torch.get_num_threads()}")
    print(f"EAP-IG {a:.3f}s  floor ({args.steps}+2 fwd, {args.steps} bwd) {f:.3f}s  ratio {a / f:.3f} (target <= 1.3)")


if __name__ == "__main__":
    main()
