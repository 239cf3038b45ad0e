"""Our GPTQ artifact reader against GPTQModel's own dequantization, on a real GPTQModel checkpoint (issue 16).

Reads a GPTQ checkpoint folder twice: with `mansu_audit.loading.gptq_artifact`
(into a copy of `--like`, the unquantized model the artifact was made from) and
with GPTQModel's `gptqmodel.utils.model_dequant.convert_gptq_file` (float32, the
config's `quantization_config`, which applies the v1 zero-point offset), and
prints the max |difference| per weight and overall. Expected: exactly 0 (both
compute (q − z)·scale in float32 from the same float16 scales).

Needs `gptqmodel` (a separate environment: 7.6.0 + optimum 2.3.0 with the CPU
torch); without it, prints one line and exits 0. `--make sym|asym-desc-act` first
quantizes the bundled `reference` model into FOLDER with GPTQModel (4-bit, group
128, perf/gptq_parity.py's calibration and settings; `asym-desc-act`: sym=False,
desc_act=True), about 10 s on 2 CPU cores:

    GPTQMODEL_CPU_WORKERS=2 python perf/gptq_artifact_check.py FOLDER [--make asym-desc-act]
        [--like reference] [--json OUT.json]

Exits 1 if a GPTQ weight differs. Measured (GPTQModel 7.6.0): both kinds, all 39 tensors identical,
max |diff| 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch


def gptqmodel_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint as GPTQModel's dequantizer returns it (quantized layers as `.weight`)."""
    from gptqmodel.utils.model_dequant import convert_gptq_file

    quant = json.loads((folder / "config.json").read_text())["quantization_config"]
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(convert_gptq_file(path, torch.float32, quant, "cpu"))
    return out


def make(folder: Path, kind: str) -> None:
    """Quantize the bundled reference model into `folder` with GPTQModel (perf/gptq_parity.py's settings)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from gptq_parity import calibration, gptqmodel_quantize

    from mansu_audit.data import load_bundle
    from mansu_audit.loading import BUNDLED_MODELS, load_model
    from mansu_audit.quantizers.gptq import GPTQSettings

    settings = GPTQSettings() if kind == "sym" else GPTQSettings(symmetric=False, act_order=True)
    chunks = calibration(load_model("reference"), load_bundle("synthhazard"), settings)
    gptqmodel_quantize(BUNDLED_MODELS["reference"], chunks, settings, folder)


def check(folder: Path, like: str = "reference") -> dict:
    """{per-weight max |ours - GPTQModel's|, overall max, counts} for the artifact `folder`."""
    from mansu_audit.loading import load_model
    from mansu_audit.loading.gptq_artifact import load_gptq_artifact

    loaded = load_model(like)
    ours = dict(load_gptq_artifact(folder, loaded.model).model.named_parameters())
    theirs = gptqmodel_weights(folder)
    quantized = {k[: -len(".qweight")] + ".weight" for k in _stored_keys(folder) if k.endswith(".qweight")}
    missing = sorted(set(theirs) - set(ours))
    if missing:
        raise SystemExit(f"gptq_artifact_check: GPTQModel returned '{missing[0]}', which our reader has no parameter for")
    layers = {name: float((ours[name].detach().float() - theirs[name].float()).abs().max()) for name in sorted(theirs)}
    return {"artifact": str(folder), "layers": layers, "quantized_layers": len(quantized),
            "max_abs_diff_quantized": max((layers[n] for n in quantized), default=0.0),
            "max_abs_diff_other": max((v for n, v in layers.items() if n not in quantized), default=0.0),
            "identical_weights": sum(v == 0.0 for v in layers.values()), "weights": len(layers)}


def _stored_keys(folder: Path) -> list[str]:
    from safetensors import safe_open

    keys: list[str] = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as reader:
            keys += list(reader.keys())
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a GPTQ checkpoint folder (e.g. perf/gptq_parity.py's output)")
    parser.add_argument("--like", default="reference", help="the unquantized model it was made from")
    parser.add_argument("--make", choices=("sym", "asym-desc-act"),
                        help="first quantize the reference model into FOLDER with GPTQModel")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("gptqmodel") is None:
        print("gptq_artifact_check: gptqmodel is not installed (pip install gptqmodel==7.6.0 optimum==2.3.0); skipped")
        return 0
    from gptqmodel import __version__ as gptqmodel_version

    if args.make:
        make(args.folder, args.make)
    result = {"gptqmodel": gptqmodel_version, **check(args.folder, args.like)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"GPTQ artifact reader vs GPTQModel {gptqmodel_version} convert_gptq_file on {args.folder}")
    for name, diff in result["layers"].items():
        print(f"{name:45s} max|diff| {diff:.3g}")
    print(f"{result['identical_weights']} of {result['weights']} weights identical; max|diff| over the "
          f"{result['quantized_layers']} GPTQ layers {result['max_abs_diff_quantized']:.3g}, over the other "
          f"weights {result['max_abs_diff_other']:.3g}")
    return 0 if result["max_abs_diff_quantized"] == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main())
