"""Quantizer speed on the reference model's decoder weights (SPEC §6).

Prints, over every quantizable decoder weight of the reference model (or, while
its weights are not built, a random model of the same shape):
- in-house NF4 quantize+dequantize time vs bitsandbytes'
  `dequantize_4bit(*quantize_4bit(W, blocksize=64, quant_type="nf4"))`, run in
  this process on the same tensors, as a ratio (target ≤ 1.0); the outputs
  are also checked to be bit-identical;
- the same for nf4 with double quantization;
- the wall time of sequential GPTQ on the whole model (retain_corpus calibration).
Best of `--reps` runs each.

    OMP_NUM_THREADS=1 python perf/quantize_speed.py [--reps 5] [--no-gptq]
"""
from __future__ import annotations

import argparse
import time

import torch


def reference_or_random():
    from mansu_audit.loading import BUNDLED_MODELS, load_model

    if (BUNDLED_MODELS["reference"] / "model.safetensors").is_file():
        loaded = load_model("reference")
        return loaded.model, loaded.tokenizer, "reference model"
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(BUNDLED_MODELS["reference"]))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval(), tok, "random model with the reference shape (weights not built)"


def best_of(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    import bitsandbytes.functional as F

    from mansu_audit.data import load_bundle
    from mansu_audit.quantizers import linear_weight, quantizable_linears, quantize_model
    from mansu_audit.quantizers.nf4 import fake_quant_4bit

    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-gptq", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tok, what = reference_or_random()
    weights = [linear_weight(m).contiguous() for _, m in quantizable_linears(model)]
    n = sum(w.numel() for w in weights)
    print(f"{what}: {len(weights)} decoder weights, {n:,} parameters, torch threads {torch.get_num_threads()}")
    for label, dq in (("nf4", False), ("nf4-dq", True)):
        def theirs():
            return [F.dequantize_4bit(*F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq))
                    for w in weights]

        def ours():
            return [fake_quant_4bit(w, "nf4", 64, dq)[0] for w in weights]

        same = all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(ours(), theirs()))
        t_ours, t_theirs = best_of(ours, args.reps), best_of(theirs, args.reps)
        print(f"{label:<7} ours {t_ours * 1e3:8.2f} ms  bitsandbytes {t_theirs * 1e3:8.2f} ms  "
              f"ratio {t_ours / t_theirs:.3f} (target <= 1.0)  bit-identical: {same}")
    if not args.no_gptq:
        bundle = load_bundle("synthhazard")
        t0 = time.perf_counter()
        q = quantize_model(model, "gptq", tokenizer=tok, calibration=bundle)
        dt = time.perf_counter() - t0
        print(f"gptq    {dt:.2f} s on the whole model ({q.settings['calibration_tokens']} calibration tokens, "
              f"{q.settings['calibration_chunks']} chunks of <= {q.settings['seq_len']})")


if __name__ == "__main__":
    main()
