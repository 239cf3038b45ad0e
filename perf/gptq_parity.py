"""GPTQ parity: our in-house `gptq` against GPTQModel on the bundled reference model (issue 16).

Both quantizers get the same calibration token chunks (`calibration_chunks` of
the synthhazard `retain_corpus`: 256 seeded texts, concatenated, cut into 256-token
chunks, fed one chunk per batch in our order) and the same settings: 4-bit,
symmetric, group 128, damp 0.01·mean(diag H), act-order off (GPTQModel:
`desc_act=False, act_group_aware=False`), true-sequential, no RTN fallback, no
MSE grid search. GPTQModel's result is read back from its saved checkpoint with
its own helpers (`unpack_rows` for the integer codes, `convert_gptq_file` for the
dequantized float32 weights, which applies the GPTQ-v1 zero-point offset).

Prints, per decoder Linear and overall: the fraction of identical integer codes,
the max |dequantized difference|, the same restricted to identical codes (that
part is GPTQModel storing scales in float16), and forget_eval / retain_eval
accuracy of both fake-quantized models with their difference.

Why codes can differ at all: GPTQModel accumulates H = 2/N Σ xxᵀ in float32,
ours in float64; the column sweep is float32 in both, so a weight whose
error-compensated value lands within float32 noise of a rounding boundary can
round the other way, and the error feedback then carries that difference along
the rest of its row (and into later layers, whose inputs come from the
quantized earlier ones).

Needs `gptqmodel==7.6.0` and `optimum==2.3.0` (a separate environment with the
CPU torch; 7.7.0 pulls a CUDA torch). Without it, prints one line and exits 0.

    GPTQMODEL_CPU_WORKERS=2 python perf/gptq_parity.py [--json OUT.json]
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

SETTINGS_NOTE = "4-bit, sym, group 128, damp 0.01, act_order off, true-sequential"


def gptqmodel_available() -> bool:
    return importlib.util.find_spec("gptqmodel") is not None


def calibration(loaded, bundle, settings) -> list[torch.Tensor]:
    """The exact token chunks our `gptq` calibrates on."""
    from mansu_audit.quantizers.gptq import calibration_chunks

    return calibration_chunks(bundle.texts("retain_corpus"), loaded.tokenizer, settings.n_texts, settings.seq_len,
                              settings.seed)


def gptqmodel_quantize(model_dir: Path, chunks: list[torch.Tensor], settings, out_dir: Path) -> Path:
    """Quantize the checkpoint at `model_dir` with GPTQModel on `chunks` and save it to `out_dir`."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel import GPTQModel, QuantizeConfig

    cfg = QuantizeConfig(bits=settings.bits, group_size=settings.group_size, sym=settings.symmetric,
                         desc_act=settings.act_order, act_group_aware=False, damp_percent=settings.damp,
                         static_groups=False, mse=0.0, true_sequential=True, fallback=None, offload_to_disk=False)
    model = GPTQModel.load(str(model_dir), cfg, device="cpu", dtype=torch.float32)
    data = [{"input_ids": c[0].tolist(), "attention_mask": [1] * c.shape[1]} for c in chunks]
    model.quantize(data, batch_size=1, calibration_sort=None)
    model.save(str(out_dir))
    return out_dir


def read_gptqmodel_artifact(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (codes (out, in) int64, dequantized weight (out, in) float32)} of a saved GPTQ checkpoint."""
    from gptqmodel.utils.model_dequant import convert_gptq_file, unpack_rows
    from safetensors import safe_open

    config = json.loads((folder / "quantize_config.json").read_text())
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights = convert_gptq_file(path, torch.float32, config, "cpu")
        with safe_open(str(path), framework="pt") as reader:
            for key in reader.keys():
                if key.endswith(".qweight"):
                    name = key[:-len(".qweight")]
                    codes = unpack_rows(reader.get_tensor(key), config["bits"]).T.to(torch.int64)
                    out[name] = (codes, weights[name + ".weight"].float())
    return out


def compare(ours, theirs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Per-module and overall code agreement and dequantized differences (ours = a QuantizedModel)."""
    from mansu_audit.quantizers import linear_weight, quantizable_linears

    modules = dict(quantizable_linears(ours.model))
    layers, same_total, n_total, max_diff, max_same = {}, 0, 0, 0.0, 0.0
    for name, record in ours.records.items():
        codes, weight = theirs[name]
        same = record.codes.to(torch.int64) == codes
        diff = (linear_weight(modules[name]).float() - weight).abs()
        layers[name] = {"identical_codes": float(same.float().mean()), "max_abs_diff": float(diff.max()),
                        "max_abs_diff_identical_codes": float(diff[same].max()) if same.any() else 0.0,
                        "max_code_step": int((record.codes.to(torch.int64) - codes).abs().max())}
        same_total += int(same.sum())
        n_total += same.numel()
        max_diff = max(max_diff, layers[name]["max_abs_diff"])
        max_same = max(max_same, layers[name]["max_abs_diff_identical_codes"])
    return {"layers": layers, "identical_codes": same_total / n_total, "codes": n_total,
            "max_abs_diff": max_diff, "max_abs_diff_identical_codes": max_same}


def with_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    from mansu_audit.quantizers import quantizable_linears, set_linear_weight

    copied = copy.deepcopy(model)
    for name, module in quantizable_linears(copied):
        set_linear_weight(module, weights[name].to(module.weight.dtype))
    return copied


def accuracies(model, tokenizer, bundle) -> dict[str, float]:
    from mansu_audit.evaluate import evaluate_mcq

    return {split: evaluate_mcq(model, tokenizer, bundle.split(split), split=split, scoring=bundle.default_scoring,
                                subject_line=bundle.subject_line).accuracy
            for split in ("forget_eval", "retain_eval")}


def parity(work_dir: Path | None = None, evaluate: bool = True) -> dict:
    """Quantize the reference model with both implementations and compare (see module docstring)."""
    from mansu_audit.data import load_bundle
    from mansu_audit.loading import BUNDLED_MODELS, load_model
    from mansu_audit.quantizers import quantize_model
    from mansu_audit.quantizers.gptq import GPTQSettings

    settings = GPTQSettings()
    loaded = load_model("reference")
    bundle = load_bundle("synthhazard")
    chunks = calibration(loaded, bundle, settings)
    ours = quantize_model(loaded.model, "gptq", tokenizer=loaded.tokenizer, calibration=bundle)
    with tempfile.TemporaryDirectory() as tmp:
        folder = gptqmodel_quantize(BUNDLED_MODELS["reference"], chunks, settings, Path(work_dir or tmp))
        theirs = read_gptqmodel_artifact(folder)
    result = {"settings": SETTINGS_NOTE, "calibration_chunks": len(chunks),
              "calibration_tokens": int(sum(c.numel() for c in chunks)), **compare(ours, theirs)}
    if evaluate:
        acc_ours = accuracies(ours.model, loaded.tokenizer, bundle)
        theirs_model = with_weights(loaded.model, {n: w for n, (_, w) in theirs.items()})
        acc_theirs = accuracies(theirs_model, loaded.tokenizer, bundle)
        result["accuracy"] = {split: {"ours": acc_ours[split], "gptqmodel": acc_theirs[split],
                                      "difference": acc_ours[split] - acc_theirs[split]} for split in acc_ours}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if not gptqmodel_available():
        print("gptq_parity: gptqmodel is not installed (pip install gptqmodel==7.6.0 optimum==2.3.0); skipped")
        return 0
    from gptqmodel import __version__ as gptqmodel_version

    result = {"gptqmodel": gptqmodel_version, **parity()}
    print(f"GPTQ parity vs GPTQModel {gptqmodel_version} on the reference model ({result['settings']}; "
          f"{result['calibration_chunks']} chunks, {result['calibration_tokens']} tokens)")
    print(f"{'module':40s} {'identical':>10s} {'max|dW|':>10s} {'max|dW| same':>13s} {'max step':>9s}")
    for name, row in result["layers"].items():
        print(f"{name:40s} {row['identical_codes']:10.4%} {row['max_abs_diff']:10.3g} "
              f"{row['max_abs_diff_identical_codes']:13.3g} {row['max_code_step']:9d}")
    print(f"{'overall':40s} {result['identical_codes']:10.4%} {result['max_abs_diff']:10.3g} "
          f"{result['max_abs_diff_identical_codes']:13.3g}")
    for split, row in result["accuracy"].items():
        print(f"{split:12s} ours {row['ours']:.4f}  gptqmodel {row['gptqmodel']:.4f}  "
              f"difference {row['difference']:+.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
