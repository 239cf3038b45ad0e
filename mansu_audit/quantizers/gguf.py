"""llama.cpp / GGUF legacy quants (gguf-q8_0, gguf-q4_0, gguf-q4_1, gguf-q5_0, gguf-q5_1), bit for bit.

Fake-quantization through the `gguf` package's reference codec (the optional
extra `[gguf]`): each weight, upcast to float32, goes through
`gguf.quants.quantize(w, type)` and back through `gguf.quants.dequantize`, and
the result is cast to the weight's dtype. gguf-py's quantizers are written to be
bit-exact with ggml's `quantize_row_*_ref` (what `llama-quantize` runs without an
imatrix), so the fake-quantized weight equals what llama.cpp dequantizes from
the file (checked: byte-identical to ggml's C `ggml_quantize_chunk`, built from
llama.cpp, on every tensor of both bundled reference models). Blocks are 32 consecutive weights of one row along the input
dimension (ggml's `ne[0]`), which is the (out, in) layout of the shared walk.

Per block `d` (and `m`) are float16; with codes q:
  Q8_0  d = absmax/127, q = round-half-away(w/d) in [-127, 127], w ≈ d·q
  Q4_0  d = max/-8 (max = the signed value of largest |w|), q in [0, 15],  w ≈ d·(q − 8)
  Q5_0  d = max/-16, q in [0, 31],                                        w ≈ d·(q − 16)
  Q4_1  d = (max − min)/15, m = min, q in [0, 15],                        w ≈ d·q + m
  Q5_1  d = (max − min)/31, m = min, q in [0, 31],                        w ≈ d·q + m

Which tensors, following llama.cpp's defaults (`llama-quant.cpp`,
`tensor_allows_quantization` / `llama_tensor_get_type`, no imatrix, non-MoE):

- every decoder-block Linear (the shared walk, `quantizers.walk`) gets the type;
- the token embeddings, when *not* tied to the output, get the type too (as
  llama.cpp does for these ftypes); they are recorded under the embedding's
  module name;
- the output head (and tied token embeddings): llama.cpp stores it in Q6_K for
  q4_0/q4_1/q5_0/q5_1 (Q8_0 when its row length is not a multiple of 256, or
  for Falcon) and Q8_0 for q8_0. Q8_0 is applied here; **Q6_K is not** (gguf-py
  cannot quantize K-quants), so a head llama.cpp puts in Q6_K stays in the
  model dtype (Q6_K's error is far below the 4/5-bit types'); the settings'
  `output` field says which;
- norms, biases and all 1-D tensors stay in the model dtype (llama.cpp: F32).

The source values are the weights as loaded (upcast to float32), i.e. what
`llama-quantize` reads from a GGUF holding those same values (convert with
`--outtype f32` for a float32 model; a 16-bit model's f16/bf16 values are exact
in float32). Deviations: MoE router Linears (llama.cpp keeps `ffn_gate_inp` unquantized) are
quantized by the shared walk; imatrix-dependent choices are not modelled.
A row length that is not a multiple of 32 is refused (InputError naming the
tensor), as llama.cpp refuses these types there ("no tensor type fallback").
For a K-quant file made by llama.cpp (Q4_K_M...), `load_artifact` reads it as
a deployed variant instead (certify `--quantized-artifact`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mansu_audit.errors import InputError, first_line, require_extra
from mansu_audit.io import sha256_file
from mansu_audit.loading.checkpoint import head_tied, load_artifact_weights
from mansu_audit.loading.gguf import gguf_info
from mansu_audit.quantizers.apply import WeightwiseQuantizer, quantize_weights, register_quantizer
from mansu_audit.quantizers.record import QuantRecord

BLOCK = 32
TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
# per type: (bits, zero point of the symmetric types or None for the min-offset `_1` types)
_LAYOUT = {"q8_0": (8, 0), "q4_0": (4, 8), "q5_0": (5, 16), "q4_1": (4, None), "q5_1": (5, None)}
Q6_K_ROW = 256  # llama.cpp falls back from Q6_K to Q8_0 for an output head whose rows are not a multiple of this


def _gguf(purpose: str):
    return require_extra("gguf", "gguf", purpose)


def gguf_codec(weight: torch.Tensor, qtype: str, name: str = "weight") -> tuple[np.ndarray, np.ndarray]:
    """(raw GGUF bytes (rows, blocks·type_size) uint8, dequantized float32 (rows, cols)) of a 2-D weight."""
    if qtype not in _LAYOUT:
        raise InputError(f"unknown GGUF type '{qtype}' (supported: {', '.join(TYPES)})")
    gguf = _gguf(f"the gguf-{qtype} quantizer")
    if weight.ndim != 2:
        raise InputError(f"gguf-{qtype}: '{name}' is not a matrix (shape {tuple(weight.shape)})")
    if weight.shape[1] % BLOCK:
        raise InputError(f"gguf-{qtype}: '{name}' has rows of {weight.shape[1]} values, not a multiple of the "
                         f"{BLOCK}-value block (llama.cpp refuses {qtype.upper()} for this tensor too)")
    ggml_type = gguf.GGMLQuantizationType[qtype.upper()]
    w = weight.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    try:
        raw = gguf.quants.quantize(w, ggml_type)
    except NotImplementedError:
        raise InputError(f"gguf-{qtype} needs a gguf package that can quantize {qtype.upper()} "
                         f"(installed: {_gguf_version()}): pip install -U 'mansu-audit[gguf]'") from None
    return raw, gguf.quants.dequantize(raw, ggml_type)


def decode_blocks(raw: np.ndarray, qtype: str, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(codes (rows, cols), d (rows, blocks) float32, m (rows, blocks) float32 or None) of raw GGUF rows."""
    bits, _ = _LAYOUT[qtype]
    rows, nb = raw.shape[0], cols // BLOCK
    blocks = raw.reshape(rows, nb, -1)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    offset, m = 2, None
    if _LAYOUT[qtype][1] is None:
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        offset = 4
    if bits == 8:
        codes = blocks[..., offset:].copy().view(np.int8)
        return codes.reshape(rows, cols), d, m
    high = None
    if bits == 5:
        qh = blocks[..., offset:offset + 4].copy().view(np.uint32)[..., 0]
        high = ((qh[..., None] >> np.arange(BLOCK, dtype=np.uint32)) & 1).astype(np.uint8)
        offset += 4
    qs = blocks[..., offset:offset + BLOCK // 2]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # low nibbles: values 0-15, high: 16-31
    if high is not None:
        codes = codes | (high << 4)
    return codes.reshape(rows, cols), d, m


def gguf_fake_quant(weight: torch.Tensor, qtype: str, name: str = "weight"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(dequantized weight in weight.dtype, codes, d (rows, blocks), m or None) of an (out, in) weight."""
    raw, deq = gguf_codec(weight, qtype, name)
    codes, d, m = decode_blocks(raw, qtype, weight.shape[1])
    out = torch.from_numpy(deq.reshape(weight.shape)).to(device=weight.device, dtype=weight.dtype)
    return (out, torch.from_numpy(codes), torch.from_numpy(d),
            None if m is None else torch.from_numpy(m))


def quantize_weight_gguf(name: str, weight: torch.Tensor, qtype: str) -> tuple[torch.Tensor, QuantRecord]:
    """The per-weight function of `gguf-<qtype>`: (dequantized weight, QuantRecord)."""
    deq, codes, d, m = gguf_fake_quant(weight, qtype, name)
    bits, zero = _LAYOUT[qtype]
    layout = (f"d per row and block of {BLOCK} input columns (float16); "
              + (f"w = d*(code - {zero})" if m is None else "w = d*code + m (m in zeros)"))
    record = QuantRecord(name=name, shape=tuple(weight.shape), codes=codes, scales=d, scale_layout=layout,
                         bin_width=d.abs().repeat_interleave(BLOCK, dim=1).contiguous(), zeros=m,
                         settings={"type": qtype.upper(), "bits": bits, "block_size": BLOCK})
    return deq, record


def _gguf_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("gguf")
    except metadata.PackageNotFoundError:
        return "absent"


@dataclass(frozen=True)
class GGUFQuantizer(WeightwiseQuantizer):
    """`gguf-<qtype>` on a whole model: the shared walk, then embeddings/head as llama.cpp (module doc)."""

    qtype: str = "q4_0"

    def __call__(self, model: nn.Module, inputs) -> tuple[dict[str, QuantRecord], dict]:
        _gguf(f"the gguf-{self.qtype} quantizer")
        records = quantize_weights(model, self.quantize_weight)
        settings = {**self.settings, "reference": f"gguf-py {_gguf_version()} quants.quantize/dequantize"}
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        names = {id(m): n for n, m in model.named_modules()}
        tied = head_tied(emb, head)
        if head is not None and getattr(head, "weight", None) is not None:
            falcon = getattr(getattr(model, "config", None), "model_type", None) == "falcon"
            head_type = self.qtype if self.qtype == "q8_0" else \
                ("q8_0" if falcon or head.weight.shape[1] % Q6_K_ROW else None)  # None: llama.cpp's Q6_K
            if head_type is None:
                settings["output"] = "kept in model dtype (llama.cpp: Q6_K, which gguf-py cannot quantize)"
            else:
                settings["output"] = head_type.upper()
                records[names[id(head)]] = self._quantize_module(names[id(head)], head, head_type)
        if emb is not None and not tied and getattr(emb, "weight", None) is not None:
            settings["token_embedding"] = self.qtype.upper()
            records[names[id(emb)]] = self._quantize_module(names[id(emb)], emb, self.qtype)
        else:
            settings["token_embedding"] = "tied to the output" if tied else "none"
        return records, settings

    @staticmethod
    def _quantize_module(name: str, module: nn.Module, qtype: str) -> QuantRecord:
        with torch.no_grad():
            deq, record = quantize_weight_gguf(name, module.weight.data, qtype)
            module.weight.data.copy_(deq)
        return record


for _qtype in TYPES:
    register_quantizer(f"gguf-{_qtype}")(GGUFQuantizer(
        partial(quantize_weight_gguf, qtype=_qtype),
        {"type": _qtype.upper(), "bits": _LAYOUT[_qtype][0], "block_size": BLOCK,
         "kept": "norms, biases, 1-D tensors (model dtype)"}, qtype=_qtype))


# ---------------------------------------------------------------------- user-supplied GGUF artifacts


@dataclass(frozen=True)
class Artifact:
    """A GGUF file of the candidate, read as a deployed variant: the model and what the certificate records."""

    model: nn.Module
    record: dict


def artifact_record(path: str | Path) -> dict:
    """What a certificate records about a GGUF artifact: file name, SHA-256, declared type, tensor types."""

    path = Path(path)
    if not path.is_file():
        raise InputError("GGUF artifact not found", path)
    if path.suffix.lower() != ".gguf":
        raise InputError("a quantized artifact must be a .gguf file", path)
    info = gguf_info(path)  # one-line errors for a missing extra or an unreadable file
    return {"kind": "artifact", "artifact": path.name, "sha256": sha256_file(path), "file_type": info.file_type,
            "tensor_types": dict(sorted(info.tensor_types.items())), "architecture": info.architecture,
            "reader": f"gguf-py {_gguf_version()} dequantize"}


def load_artifact(path: str | Path, like: nn.Module, record: dict | None = None) -> Artifact:
    """The weights of GGUF file `path` (any type gguf-py dequantizes: K-quants included) in a copy of `like`.

    Tensor names are mapped to `like`'s parameters by transformers' GGUF mapping
    (which also undoes llama.cpp's Q/K row permutation); every tensor must land on
    a parameter of the same shape and every parameter of `like` (tied ones aside)
    must be given, else InputError. The record is `artifact_record(path)` (or `record`, when the caller
    already computed it: saves hashing the file again).
    """
    path = Path(path)
    record = record or artifact_record(path)
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    model = copy.deepcopy(like)
    bar = hf_gguf.tqdm  # its per-tensor progress bar ignores transformers' switch: silenced for this call
    hf_gguf.tqdm = partial(bar, disable=True)
    try:
        parsed = hf_gguf.load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
    except Exception as exc:
        raise InputError(f"cannot read GGUF artifact ({record['architecture']}): {first_line(exc)}", path) from None
    finally:
        hf_gguf.tqdm = bar
    return Artifact(load_artifact_weights(model, parsed.get("tensors", {}), path), record)
