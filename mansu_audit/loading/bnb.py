"""Pre-quantized bitsandbytes checkpoints of the candidate, read as deployed variants (`--quantized-artifact`).

A folder whose config.json carries a bitsandbytes `quantization_config`
(`save_pretrained` of a model loaded with `BitsAndBytesConfig`) is dequantized
on the CPU with bitsandbytes' own functions, weight by weight:

- 4-bit (nf4 or fp4, with or without double quantization): the packed uint8
  `X.weight` and its `X.weight.absmax`, `.quant_map`, `.nested_*` and
  `.quant_state.bitsandbytes__<type>` tensors -> `QuantState.from_dict` ->
  `bitsandbytes.functional.dequantize_4bit`;
- 8-bit (LLM.int8()): int8 `X.weight` and its row scales `X.SCB` ->
  `bitsandbytes.functional.int8_vectorwise_dequant` (W = CB · SCB / 127). The
  deployed Linear8bitLt also quantizes activations per token (outliers above
  `llm_int8_threshold` kept in float16); this reader gives the weights-only model,
  like the `int8` quantizer.

The 4-bit codes are dequantized as one flat row and then reshaped. Blocks are
row-major runs of `blocksize` values (the format's definition), and bitsandbytes
0.50.2's CPU `dequantize_4bit` gets them wrong when a weight's last dimension is
smaller than the blocksize: on a 32x32 weight its codes equal a flat
quantization's, yet its dequantized values differ in 85% of entries (max error
0.033 against 0.0072 for the flat call). Dequantizing the flat view agrees with
the `nf4`/`fp4` quantizers bit for bit at every shape.

Every other stored tensor (embeddings, norms, the output layer: kept unquantized
by bitsandbytes) is copied as stored. Each tensor must land on a parameter of the
candidate of the same shape and every parameter must be given (tied ones aside),
else one InputError line. GPTQ folders are read by `loading.gptq_artifact`; other
`quant_method`s (awq, ...) are refused in one line naming the method. The certificate records the digest of the folder's
config and weight files, the method and bitsandbytes' version.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from mansu_audit.errors import InputError, first_line
from mansu_audit.io import read_json, sha256_file
from mansu_audit.loading.checkpoint import (SAFE_INDEX, SAFE_WEIGHTS, load_artifact_weights, read_shard_tensors,
                                            shard_files)

QSTATE = ".quant_state.bitsandbytes__"


def is_bnb_folder(path: str | Path) -> bool:
    """A folder with a config.json (the folder form of a quantized artifact; a GGUF artifact is a file)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def bnb_quant_config(folder: Path) -> dict:
    """The folder's bitsandbytes `quantization_config`; InputError for none or another method."""
    cfg_path = folder / "config.json"
    config = read_json(cfg_path)
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quant, dict):
        raise InputError("a quantized artifact folder needs a quantization_config in config.json "
                         "(give the unquantized candidate with --candidate instead)", cfg_path)
    method = str(quant.get("quant_method", "unknown"))
    if method != "bitsandbytes":
        raise InputError(f"pre-quantized artifact method '{method}' is not supported (bitsandbytes 4-bit and "
                         f"8-bit, and GPTQ, are)", cfg_path)
    if not (quant.get("load_in_4bit") or quant.get("load_in_8bit")):
        raise InputError("bitsandbytes quantization_config sets neither load_in_4bit nor load_in_8bit", cfg_path)
    return quant


def weight_files(folder: Path) -> list[Path]:
    """An artifact folder's safetensors files (`checkpoint.shard_files`); InputError when it has none."""
    shards = shard_files(folder)
    if not shards:
        raise InputError(f"quantized artifact has no {SAFE_WEIGHTS} (safetensors only)", folder)
    return shards


def folder_digest(folder: Path) -> tuple[str, dict[str, str]]:
    """(SHA-256 over the per-file digests, {file name: SHA-256}) of an artifact folder's config.json,
    shard index and safetensors weight files; InputError for a missing shard."""
    files = [folder / "config.json", *(([folder / SAFE_INDEX]) if (folder / SAFE_INDEX).is_file() else []),
             *weight_files(folder)]  # every shard exists (shard_files checks)
    hashes = {p.name: sha256_file(p) for p in files if p.is_file()}
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(), hashes


def bnb_artifact_record(folder: str | Path) -> dict:
    """What a certificate records about a bitsandbytes artifact folder: its files' digest, the method."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("quantized artifact folder not found", folder)
    quant = bnb_quant_config(folder)
    digest, hashes = folder_digest(folder)
    four = bool(quant.get("load_in_4bit"))
    return {"kind": "artifact", "format": "bitsandbytes", "artifact": folder.name, "sha256": digest,
            "files": hashes, "method": str(quant.get("bnb_4bit_quant_type", "nf4")) if four else "int8",
            "bits": 4 if four else 8, "double_quant": bool(quant.get("bnb_4bit_use_double_quant")) if four else False,
            "reader": f"bitsandbytes {_bnb_version()} " + ("dequantize_4bit" if four else "int8_vectorwise_dequant")}


def _bnb_version() -> str:
    try:
        return metadata.version("bitsandbytes")
    except metadata.PackageNotFoundError:
        return "absent"


def dequantize_bnb_state(tensors: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    """Stored tensors of a bitsandbytes checkpoint -> {parameter name: float32 tensor} (CPU)."""
    import bitsandbytes.functional as bnbf  # a core dependency

    out: dict[str, torch.Tensor] = {}
    quantized_4bit = {k[: k.index(QSTATE)] for k in tensors if QSTATE in k}
    scaled_8bit = {k[: -len(".SCB")] + ".weight" for k in tensors if k.endswith(".SCB")}
    for key in sorted(quantized_4bit):
        prefix = key + "."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            qs = bnbf.QuantState.from_dict(state, device=torch.device("cpu"))
            shape = qs.shape
            qs.shape = torch.Size([1, shape.numel()])  # flat: see the module docstring
            out[key] = bnbf.dequantize_4bit(tensors[key], qs).float().reshape(shape)
        except Exception as exc:
            raise InputError(f"cannot dequantize 4-bit tensor '{key}': {first_line(exc)}", where) from None
    for key in sorted(scaled_8bit):
        scb = tensors[key[: -len(".weight")] + ".SCB"]
        codes = tensors.get(key)
        if codes is None or codes.dtype != torch.int8 or codes.ndim != 2 or codes.shape[0] != scb.numel():
            raise InputError(f"8-bit tensor '{key}' is not int8 [out, in] with one SCB scale per row", where)
        out[key] = bnbf.int8_vectorwise_dequant(codes, scb.float()).float()
    consumed = {k for k in tensors if any(k == q or k.startswith(q + ".") for q in quantized_4bit)}
    consumed |= {k for k in tensors if k.endswith((".SCB", ".weight_format"))} | scaled_8bit
    for key, value in tensors.items():
        if key in consumed:
            continue
        if not value.is_floating_point():
            raise InputError(f"artifact tensor '{key}' is {value.dtype} but belongs to no quantized weight", where)
        out[key] = value.float()
    return out


@dataclass(frozen=True)
class BnbArtifact:
    """A bitsandbytes checkpoint of the candidate, dequantized into a copy of it, and its certificate record."""

    model: torch.nn.Module
    record: dict


def load_bnb_artifact(folder: str | Path, like: torch.nn.Module, record: dict | None = None) -> BnbArtifact:
    """The dequantized weights of the bitsandbytes checkpoint `folder` in a copy of `like` (the candidate);
    `record`: its `bnb_artifact_record` when the caller already has it (saves hashing the files again)."""
    folder = Path(folder)
    record = record or bnb_artifact_record(folder)
    state = dequantize_bnb_state(read_shard_tensors(folder)[0], folder)
    model = load_artifact_weights(copy.deepcopy(like), state, folder)
    return BnbArtifact(model, record)
