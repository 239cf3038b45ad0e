"""Pre-quantized GPTQ checkpoints of the candidate, read as deployed variants (`--quantized-artifact`).

A folder whose config.json carries `quantization_config.quant_method == "gptq"`
(what GPTQModel, AutoGPTQ and transformers+optimum save) is read with
`safetensors` only (no pickle, no remote code) and dequantized in torch.

Supported: `bits` 2, 4 or 8 (32/bits codes per int32 word; 3-bit, whose codes
straddle words, and GPTQModel's planar 5-7 bit are refused), `pack_dtype` int32,
`group_size` > 0 or -1 (one group over the whole input), `sym` true or false,
`desc_act` true or false, `checkpoint_format` (or, absent, `format`) "gptq" (v1,
the default) or "gptq_v2"; "marlin", "bitblas", "gptq_p", ... are refused. Per
quantized Linear `X` with `in` inputs, `out` outputs, f = 32/bits and
G = ceil(in/group_size) groups the folder must hold, exactly:

- `X.qweight` int32 [in/f, out]: code of input i in word i//f, bits
  (i%f)·bits.. (low bits first);
- `X.qzeros`  int32 [G, out/f]: zero of output o in word o//f, likewise;
- `X.scales`  float16 (bfloat16/float32 accepted) [G, out];
- `X.g_idx`   int32 [in], each in [0, G);
- `X.bias` optional, a plain float tensor.

Dequantization (the formula every GPTQ kernel implements):

    W[o, i] = scales[g, o] · (q[i, o] − z[g, o]),  g = g_idx[i],

in float32, with z the stored zero for "gptq_v2" and (stored + 1) mod 2^bits
for "gptq" (v1 stores zero − 1). That is GPTQModel's own `convert_gptq_file`
(`gptqmodel.utils.model_dequant`), field by field: perf/gptq_artifact_check.py
compares the two on real GPTQModel 7.6.0 checkpoints of the reference model
(4-bit group 128, sym without desc_act and asym with it: every weight equal,
max |diff| 0). The one v1 ambiguity: a stored 2^bits − 1 (an asymmetric group
whose zero is 0) reads as zero 0 here and in GPTQModel's dequantizer, while a
kernel that adds 1 to the field without masking may read 2^bits.
`sym` is recorded, not used: the stored zeros are what kernels use. With
`desc_act` false, g_idx must be the sequential i // group_size (kernels such
as exllama ignore g_idx then; a checkpoint whose g_idx disagrees would run
differently there), else one InputError line; with `desc_act` true any g_idx
in range is used as stored.

Checks, each failure one InputError line naming the file and the tensor: when
the artifact is named (certify's `check_artifacts`, before any model loads),
from the safetensors headers, that every quantized layer has its four tensors,
of these dtypes and of shapes consistent with each other and with the config,
and no `X.weight` beside them; when it is loaded, that each `X` is an nn.Linear
(or GPT-2 Conv1D) of the candidate of the shape qweight holds and that g_idx is
in range (and sequential, see above). Every other tensor
(embeddings, norms, an unquantized lm_head) is a plain float weight and, with
the dequantized weights, goes through `load_artifact_weights`' checks (a
parameter of the same shape for each, none missing, tied head aside). The
certificate records method, bits, group size, sym, desc_act, checkpoint
format, the quantizer named in the config's `meta`, and the digests of the
config and weight files.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mansu_audit.architecture import is_linear, linear_weight
from mansu_audit.errors import InputError
from mansu_audit.io import read_json
from mansu_audit.loading.bnb import folder_digest
from mansu_audit.loading.checkpoint import StoredTensor, load_artifact_weights, read_shard_tensors, safetensors_header

FORMATS = ("gptq", "gptq_v2")  # "gptq" = v1: zeros stored minus one
BITS = (2, 4, 8)
PARTS = ("qweight", "qzeros", "scales", "g_idx")
SCALE_DTYPES = ("F16", "BF16", "F32")  # safetensors dtype names


def gptq_quant_config(folder: str | Path) -> dict | None:
    """The `quantization_config` of a folder whose config.json declares quant_method gptq, else None."""
    cfg = Path(folder) / "config.json"
    if not (Path(folder).is_dir() and cfg.is_file()):
        return None
    config = read_json(cfg)
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(quant, dict) and str(quant.get("quant_method", "")).lower() == "gptq":
        return quant
    return None


def is_gptq_folder(path: str | Path) -> bool:
    """A folder whose config.json has a GPTQ `quantization_config`."""
    return gptq_quant_config(path) is not None


@dataclass(frozen=True)
class GptqArtifact:
    """A GPTQ checkpoint of the candidate dequantized into a copy of it (`model`), and its certificate `record`."""

    model: torch.nn.Module
    record: dict


@dataclass(frozen=True)
class GptqFormat:
    """The storage settings of a GPTQ checkpoint (see module docstring for what is supported)."""

    bits: int
    group_size: int  # -1: one group spanning the whole input dimension
    sym: bool
    desc_act: bool
    checkpoint_format: str  # "gptq" (v1) or "gptq_v2"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, quant: dict, where: Path | None = None) -> GptqFormat:
        """Parse a `quantization_config`; one InputError line (naming `where`) for what is not supported."""
        fmt = str(quant.get("checkpoint_format") or quant.get("format") or "gptq").strip().lower()
        if fmt not in FORMATS:
            raise InputError(f"GPTQ checkpoint_format '{fmt}' is not supported ({', '.join(FORMATS)} are)", where)
        bits = quant.get("bits")
        if not isinstance(bits, int) or isinstance(bits, bool) or bits not in BITS:
            raise InputError(f"GPTQ bits {bits!r} is not supported ({', '.join(map(str, BITS))} are)", where)
        pack = str(quant.get("pack_dtype", "int32")).replace("torch.", "")
        if pack != "int32":
            raise InputError(f"GPTQ pack_dtype '{pack}' is not supported (int32 is)", where)
        group = quant.get("group_size", 128)
        if isinstance(group, bool) or not isinstance(group, int) or (group <= 0 and group != -1):
            raise InputError(f"GPTQ group_size {group!r} is not a positive integer or -1", where)
        flags = {k: quant.get(k, default) for k, default in (("sym", True), ("desc_act", False))}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise InputError(f"GPTQ {key} {value!r} is not true/false", where)
        return cls(bits=bits, group_size=group, sym=flags["sym"], desc_act=flags["desc_act"], checkpoint_format=fmt)

    def groups(self, in_features: int) -> int:
        return 1 if self.group_size == -1 else -(-in_features // self.group_size)


def gptq_artifact_record(folder: str | Path) -> dict:
    """What a certificate records about a GPTQ artifact folder: settings, quantizer, files' digests."""
    folder = Path(folder)
    quant = gptq_quant_config(folder)
    if quant is None:
        raise InputError("not a GPTQ checkpoint folder (config.json with quant_method gptq)", folder)
    fmt = GptqFormat.from_dict(quant, folder / "config.json")
    digest, hashes = folder_digest(folder)  # InputError for a folder without safetensors weights
    check_gptq_tensors(safetensors_header(folder) or {}, fmt)
    meta = quant.get("meta") if isinstance(quant.get("meta"), dict) else {}
    quantizer = meta.get("quantizer") or quant.get("quantizer")
    return {"kind": "artifact", "format": "gptq", "artifact": folder.name, "sha256": digest, "files": hashes,
            "method": "gptq", **fmt.to_dict(), "quantizer": quantizer if isinstance(quantizer, (str, list)) else None,
            "reader": "mansu_audit.loading.gptq_artifact (safetensors, torch dequantization)"}


def unpack_codes(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words holding 32/bits codes each along `dim` (low bits first) -> int64 codes, `dim` 32/bits longer."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    wide = words.to(torch.int64) & 0xFFFFFFFF
    if dim == 0:
        codes = (wide.unsqueeze(1) >> shifts.view(1, per, 1)) & ((1 << bits) - 1)
        return codes.reshape(wide.shape[0] * per, wide.shape[1])
    codes = (wide.unsqueeze(2) >> shifts.view(1, 1, per)) & ((1 << bits) - 1)
    return codes.reshape(wide.shape[0], wide.shape[1] * per)


def dequantize_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                    fmt: GptqFormat) -> torch.Tensor:
    """One layer's (out, in) float32 weight: W[o, i] = scales[g_idx[i], o] · (q[i, o] − z[g_idx[i], o])."""
    q = unpack_codes(qweight, fmt.bits, 0)
    z = unpack_codes(qzeros, fmt.bits, 1)
    if fmt.checkpoint_format == "gptq":
        z = (z + 1) & ((1 << fmt.bits) - 1)
    g = g_idx.to(torch.int64)
    return ((q - z[g]).to(torch.float32) * scales.to(torch.float32)[g]).t().contiguous()


def _by_layer(entries: dict) -> dict[str, dict]:
    """{layer prefix: {part: entry}} of the `PARTS` tensors among `entries` (keyed '<prefix>.<part>')."""
    layers: dict[str, dict] = {}
    for key, value in entries.items():
        prefix, _, part = key.rpartition(".")
        if part in PARTS:
            layers.setdefault(prefix, {})[part] = value
    return layers


def check_gptq_tensors(stored: dict[str, StoredTensor], fmt: GptqFormat) -> list[str]:
    """The quantized layers' names, after checking from the safetensors headers that each has all four
    tensors, of the right dtype and of shapes consistent with each other and with `fmt` (module docstring),
    and no float `.weight` beside them. One InputError line naming the file and the tensor otherwise."""
    layers = _by_layer(stored)
    per = 32 // fmt.bits
    for prefix, parts in sorted(layers.items()):
        where = stored[f"{prefix}.{min(parts)}"].file
        lacking = [p for p in PARTS if p not in parts]
        if lacking:
            raise InputError(f"GPTQ layer '{prefix}' lacks its tensor '{prefix}.{lacking[0]}'", where)
        if f"{prefix}.weight" in stored:
            raise InputError(f"tensor '{prefix}.weight' is stored beside the GPTQ codes of '{prefix}'", where)
        qweight = stored[f"{prefix}.qweight"]
        if len(qweight.shape) != 2 or qweight.shape[1] % per:
            raise InputError(f"GPTQ tensor '{prefix}.qweight' has shape {list(qweight.shape)}: not [in/{per}, out] "
                             f"with out a multiple of {per}", qweight.file)
        in_f, out_f = qweight.shape[0] * per, qweight.shape[1]
        groups = fmt.groups(in_f)
        expected = {"qzeros": (groups, out_f // per), "scales": (groups, out_f), "g_idx": (in_f,)}
        for part in PARTS:
            key, info = f"{prefix}.{part}", stored[f"{prefix}.{part}"]
            ok = info.dtype in SCALE_DTYPES if part == "scales" else info.dtype == "I32"
            if not ok:
                raise InputError(f"GPTQ tensor '{key}' is {info.dtype}, expected "
                                 f"{'F16' if part == 'scales' else 'I32'} (int32 packing)", info.file)
            if part in expected and info.shape != expected[part]:
                raise InputError(f"GPTQ tensor '{key}' has shape {list(info.shape)}, but {prefix}.qweight "
                                 f"{list(qweight.shape)} ({fmt.bits}-bit, group {fmt.group_size}) implies "
                                 f"{list(expected[part])}", info.file)
    if not layers:
        raise InputError("GPTQ checkpoint holds no quantized layer (no .qweight tensor)",
                         next(iter(stored.values())).file if stored else None)
    return sorted(layers)


def _check_layer(prefix: str, module: torch.nn.Module | None, parts: dict[str, torch.Tensor],
                 files: dict[str, Path], fmt: GptqFormat) -> None:
    """One quantized layer against the candidate's module: a Linear of the stored shape, g_idx in range (and
    sequential without desc_act). One InputError line naming the file and the tensor otherwise."""
    if module is None or not is_linear(module):
        raise InputError(f"GPTQ tensor '{prefix}.qweight' belongs to no Linear of the candidate",
                         files[f"{prefix}.qweight"])
    out_f, in_f = tuple(linear_weight(module).shape)
    stored = (parts["qweight"].shape[1], parts["qweight"].shape[0] * (32 // fmt.bits))
    if stored != (out_f, in_f):
        raise InputError(f"GPTQ tensor '{prefix}.qweight' holds a {stored[0]}x{stored[1]} weight, the candidate's "
                         f"Linear is {out_f}x{in_f}", files[f"{prefix}.qweight"])
    g_idx, groups, where = parts["g_idx"].to(torch.int64), fmt.groups(in_f), files[f"{prefix}.g_idx"]
    if int(g_idx.min()) < 0 or int(g_idx.max()) >= groups:
        raise InputError(f"GPTQ tensor '{prefix}.g_idx' has group indices outside [0, {groups})", where)
    size = in_f if fmt.group_size == -1 else fmt.group_size
    if not fmt.desc_act and not torch.equal(g_idx, torch.arange(in_f) // size):
        raise InputError(f"GPTQ tensor '{prefix}.g_idx' is not the sequential i // {size} that desc_act=false "
                         "declares", where)


def dequantize_gptq_state(tensors: dict[str, torch.Tensor], files: dict[str, Path], like: torch.nn.Module,
                          fmt: GptqFormat) -> dict[str, torch.Tensor]:
    """Stored tensors of a GPTQ checkpoint (already through `check_gptq_tensors`) -> {parameter name: float32
    tensor}, each quantized layer checked against `like`'s Linear of that name."""
    layers = _by_layer(tensors)
    modules = dict(like.named_modules())
    out: dict[str, torch.Tensor] = {}
    for prefix in sorted(layers):
        module = modules.get(prefix)
        _check_layer(prefix, module, layers[prefix], files, fmt)
        weight = dequantize_gptq(*(layers[prefix][p] for p in PARTS), fmt)
        out[f"{prefix}.weight"] = weight if isinstance(module, torch.nn.Linear) else weight.t().contiguous()
    for key, value in tensors.items():
        if key.rpartition(".")[2] in PARTS:
            continue
        if not value.is_floating_point():
            raise InputError(f"artifact tensor '{key}' is {str(value.dtype).replace('torch.', '')} but belongs to "
                             "no GPTQ layer", files[key])
        out[key] = value.float()
    return out


def load_gptq_artifact(folder: str | Path, like: torch.nn.Module, record: dict | None = None) -> GptqArtifact:
    """The dequantized weights of the GPTQ checkpoint `folder` in a copy of `like` (the candidate);
    `record`: its `gptq_artifact_record` when the caller already has it (saves hashing the files again)."""
    folder = Path(folder)
    record = record or gptq_artifact_record(folder)
    fmt = GptqFormat(**{k: record[k] for k in ("bits", "group_size", "sym", "desc_act", "checkpoint_format")})
    tensors, files = read_shard_tensors(folder)
    state = dequantize_gptq_state(tensors, files, like, fmt)
    return GptqArtifact(load_artifact_weights(copy.deepcopy(like), state, folder), record)
