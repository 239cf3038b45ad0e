"""Checkpoint checks that run before any weight is allocated (SPEC §11).

Transformers random-initialises a tensor that a checkpoint lacks and loads a
config declaring 100,000 layers until memory runs out. These checks make such a
checkpoint one `InputError` line instead, reading only the safetensors headers
(a few KB per shard) and building the model's skeleton on the `meta` device:

1. `read_config`: config.json is UTF-8 JSON holding an object; it asks for no
   remote code (`auto_map`) and carries no `quantization_config` (the suite
   quantizes the unquantized weights itself; a bitsandbytes or GPTQ checkpoint of the
   candidate is read as a quantized variant by `loading.bnb` / `loading.gptq_artifact`,
   `--quantized-artifact`).
2. `safetensors_header`: name -> (shape, dtype, file) of every stored tensor
   (`model.safetensors`, or the shards named by `model.safetensors.index.json`).
3. `preflight`: the parameter count the config declares (for more than 64
   layers extrapolated from skeletons with one and two layers, n(L) = a + b·L,
   cheap for any L) must
   agree within a factor of 2 with the header's count and fit the free memory
   of the planned device; only then is the full skeleton built, and every
   tensor checked by name: none missing (tied and non-persistent ones may be),
   none unexpected (beyond the architecture's own ignore list), each of the
   declared shape, and no integer/bool dtype where a float weight belongs.
   Key names are matched as transformers matches them (with or without the
   base-model prefix). A checkpoint whose names follow a convention the
   loader converts (few names match) is left to the post-load check
   (`check_loading_info`), which refuses what transformers reports as missing,
   unexpected or mismatched.
4. `check_tokenizer_fits`: no token id at or beyond the model's embedding rows.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from mansu_audit.errors import InputError, first_line
from mansu_audit.io import read_json
from mansu_audit.loading.device import DevicePlan

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
SIZE_TOLERANCE = 2.0  # declared vs stored parameter counts may differ by this factor before refusing
DIRECT_LAYERS = 64  # up to this many layers the whole skeleton is built at once (milliseconds on meta)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as the safetensors header declares it."""

    shape: tuple[int, ...]
    dtype: str  # safetensors' name: F32, BF16, F16, I64, U8, BOOL, F8_E4M3, ...
    file: Path

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("F", "BF"))


# --------------------------------------------------------------------------- config.json

def read_config(path: Path) -> dict:
    """config.json as a dict, refusing non-UTF-8, non-object JSON, remote code and pre-quantized weights."""
    config = read_json(path)
    if not isinstance(config, dict):
        raise InputError(f"expected a JSON object, got a JSON {type(config).__name__}", path)
    if config.get("auto_map"):
        raise InputError("config asks for remote code (auto_map); refusing (trust_remote_code is off)", path)
    quant = config.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
        raise InputError(f"checkpoint is pre-quantized (quantization_config: {method}); give the unquantized "
                         "weights as the model (a bitsandbytes or GPTQ checkpoint of the candidate is evaluated as "
                         "its quantized variant with --quantized-artifact NAME=FOLDER)", path)
    return config


# --------------------------------------------------------------------------- safetensors headers

def shard_files(folder: Path) -> list[Path]:
    """The safetensors weight files of a folder: the shards its index names (each a plain file name that
    exists) or `model.safetensors`; [] when it has neither."""
    index = folder / SAFE_INDEX
    if index.is_file():
        try:
            data = json.loads(index.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"unreadable shard index: {first_line(exc)}", index) from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError("shard index has no 'weight_map' object of file names", index)
        shards = []
        for name in dict.fromkeys(weight_map.values()):
            shard = folder / name
            if Path(name).name != name or name in ("", ".", ".."):
                raise InputError(f"shard '{name}' named in the index is not a file name in the folder", index)
            if not shard.is_file():
                raise InputError(f"shard '{name}' named in the index is missing", index)
            shards.append(shard)
        return shards
    single = folder / SAFE_WEIGHTS
    return [single] if single.is_file() else []


def read_shard_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Every tensor stored in a folder's safetensors shards (`shard_files`) and the file holding it (CPU);
    InputError for a folder without safetensors weights, an unreadable file or a tensor stored twice."""
    from safetensors import safe_open

    shards = shard_files(folder)
    if not shards:
        raise InputError(f"no {SAFE_WEIGHTS} or {SAFE_INDEX} (safetensors only)", folder)
    tensors: dict[str, torch.Tensor] = {}
    files: dict[str, Path] = {}
    for path in shards:
        try:
            with safe_open(str(path), framework="pt") as reader:
                keys = list(reader.keys())
                twice = next((k for k in keys if k in tensors), None)
                if twice is not None:
                    raise InputError(f"tensor '{twice}' is stored twice ({files[twice].name} and here)", path)
                for key in keys:
                    tensors[key], files[key] = reader.get_tensor(key), path
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"unreadable safetensors: {first_line(exc)}", path) from None
    return tensors, files


def safetensors_header(folder: Path) -> dict[str, StoredTensor] | None:
    """Every stored tensor's shape and dtype, from the headers only; None without safetensors weights."""
    from safetensors import safe_open

    shards = shard_files(folder)
    if not shards:
        return None
    out: dict[str, StoredTensor] = {}
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    s = f.get_slice(key)
                    if key in out:
                        raise InputError(f"tensor '{key}' is stored twice ({out[key].file.name} and here)", shard)
                    out[key] = StoredTensor(tuple(int(d) for d in s.get_shape()), str(s.get_dtype()), shard)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"unreadable safetensors header: {first_line(exc)}", shard) from None
    return out


# --------------------------------------------------------------------------- skeletons

def meta_model(config) -> torch.nn.Module:
    """The architecture built on the meta device: shapes and names, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def declared_parameters(config) -> int:
    """Parameters the config declares, without building all its layers: a + b·L from L = 1 and 2."""
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers > DIRECT_LAYERS:
        try:
            counts = []
            for n in (1, 2):
                small = copy.deepcopy(config)
                small.num_hidden_layers = n
                if isinstance(getattr(small, "layer_types", None), list):
                    small.layer_types = small.layer_types[:n]
                counts.append(_count(meta_model(small)))
            return counts[0] + (counts[1] - counts[0]) * (layers - 1)
        except Exception:  # an architecture whose layers cannot be cut: count the whole skeleton below
            pass
    return _count(meta_model(config))


def available_memory(plan: DevicePlan) -> int:
    """Free bytes where the weights go: the planned GPU(s), else the host's available RAM."""
    if plan.device.startswith("cuda"):
        if plan.device_map:
            return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
        return torch.cuda.mem_get_info(torch.device(plan.device))[0]
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


# --------------------------------------------------------------------------- preflight

def preflight(config, folder: Path, plan: DevicePlan, stored: dict[str, StoredTensor] | None) -> None:
    """Refuse a checkpoint whose size, names, shapes or dtypes disagree with its config (nothing allocated)."""
    config_file = folder / "config.json"
    layers = getattr(config, "num_hidden_layers", None)
    skeleton = meta_model(config) if not isinstance(layers, int) or layers <= DIRECT_LAYERS else None
    declared = _count(skeleton) if skeleton is not None else declared_parameters(config)
    if stored is not None:
        held = sum(t.numel for t in stored.values())
        if declared > SIZE_TOLERANCE * held or held > SIZE_TOLERANCE * declared:
            layers = getattr(config, "num_hidden_layers", "?")
            raise InputError(f"config declares {declared:,} parameters ({layers} layers, hidden "
                             f"{getattr(config, 'hidden_size', '?')}) but the safetensors weights hold {held:,}; "
                             "config and weights do not match", config_file)
    need = declared * torch.empty((), dtype=plan.dtype).element_size()
    free = available_memory(plan)
    if need > free:
        dtype = str(plan.dtype).replace("torch.", "")
        raise InputError(f"model needs {_gib(need)} ({declared:,} parameters in {dtype}) but only {_gib(free)} "
                         f"is free on {plan.device}", folder)
    if stored is not None:
        check_tensors(skeleton if skeleton is not None else meta_model(config), stored, folder)


def _matcher(model: torch.nn.Module, expected: dict) -> callable:
    """Checkpoint key -> model key, as transformers maps them (with or without the base-model prefix)."""
    prefix = getattr(model, "base_model_prefix", "") or ""

    def match(key: str) -> str | None:
        if key in expected:
            return key
        if prefix and f"{prefix}.{key}" in expected:
            return f"{prefix}.{key}"
        if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in expected:
            return key[len(prefix) + 1:]
        return None

    return match


def check_tensors(model: torch.nn.Module, stored: dict[str, StoredTensor], folder: Path) -> None:
    """Names, shapes and dtypes of the stored tensors against the skeleton `model` (see module docstring)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    optional = set(tied) | (set(expected) - params)  # tied copies and buffers may be absent
    ignore_unexpected = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    ignore_missing = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or [])]
    match = _matcher(model, expected)
    mapped = {key: match(key) for key in stored}
    found = {m for m in mapped.values() if m is not None}
    required = [k for k in expected if k not in optional and not any(p.search(k) for p in ignore_missing)]
    if required and sum(k in found for k in required) < len(required) / 2:
        return  # names in a convention the loader converts: transformers' loading report decides (post-load)
    missing = [k for k in required if k not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"tensor '{missing[0]}' is missing from the checkpoint{more}; refusing to "
                         "random-initialise it", folder)
    for key, target in mapped.items():
        if target is None:
            if any(p.search(key) for p in ignore_unexpected):
                continue
            raise InputError(f"tensor '{key}' is not part of the '{model.config.model_type}' architecture the config "
                             "declares (unexpected tensor)", stored[key].file)
        info = stored[key]
        if info.shape != expected[target]:
            raise InputError(f"tensor '{key}' has shape {list(info.shape)} but the config implies "
                             f"{list(expected[target])}", info.file)
        if target in params and not info.is_float:
            raise InputError(f"tensor '{key}' is stored as {info.dtype} where a float weight belongs", info.file)


def check_loading_info(info: dict, model: torch.nn.Module, folder: Path) -> None:
    """Refuse what transformers reports it could not load (the net under `check_tensors`)."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = sorted(k for k in info.get("missing_keys") or () if k not in tied)
    if missing:
        raise InputError(f"tensor '{missing[0]}' is missing from the checkpoint; refusing to random-initialise it",
                         folder)
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        raise InputError(f"tensor '{unexpected[0]}' is not part of the architecture the config declares "
                         "(unexpected tensor)", folder)
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        first = mismatched[0][0] if isinstance(mismatched[0], tuple) else mismatched[0]
        raise InputError(f"tensor '{first}' has a shape the config does not imply", folder)


def check_tokenizer_fits(tokenizer, model: torch.nn.Module, where: Path | str | None) -> None:
    """No id the tokenizer produces for text, nor its bos/eos/pad/unk id, may index past the model's
    input embedding (evaluation would crash, or read another token's row).

    Added tokens beyond the embedding that are not bos/eos/pad/unk are tolerated: they are produced
    only by their literal text (transformers' GGUF tokenizer adds such an `<|endoftext|>`)."""
    try:
        rows = int(model.get_input_embeddings().weight.shape[0])
        vocab = tokenizer.get_vocab()
    except Exception:  # no embedding or no vocabulary view: nothing to check
        return
    base = getattr(tokenizer, "vocab_size", None)
    ids = {i for i in vocab.values() if not isinstance(base, int) or i < base}
    ids |= {getattr(tokenizer, f"{role}_token_id", None) for role in ("bos", "eos", "pad", "unk")} - {None}
    top = max(ids, default=-1)
    if top >= rows:
        token = tokenizer.convert_ids_to_tokens(int(top))
        raise InputError(f"tokenizer has token ids up to {top} ('{token}') but the model's embedding has only {rows} "
                         "rows (tokenizer and model do not belong together)", where)


def head_tied(emb: torch.nn.Module | None, head: torch.nn.Module | None) -> bool:
    """Whether the output head shares its weight tensor with the input embeddings (tied embeddings)."""
    return emb is not None and head is not None and getattr(head, "weight", None) is getattr(emb, "weight", None)


def load_artifact_weights(model: torch.nn.Module, tensors: dict, where: Path) -> torch.nn.Module:
    """`model` (a copy of the candidate) given an artifact's weights in place (`tensors`: parameter name ->
    array, read from a GGUF file or dequantized from a bitsandbytes checkpoint): every tensor must land on a
    parameter of the same shape and every parameter must be given (a head tied to the input embeddings, and
    rotary buffers, aside), else one InputError line naming `where`. Returns `model` in eval mode."""
    state = model.state_dict()
    for key, value in tensors.items():
        if key not in state:
            raise InputError(f"artifact tensor '{key}' has no parameter in the candidate", where)
        if tuple(value.shape) != tuple(state[key].shape):
            raise InputError(f"artifact tensor '{key}' has shape {tuple(value.shape)}, the candidate "
                             f"{tuple(state[key].shape)}", where)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = {f"{n}.weight" for n, m in model.named_modules() if m is head} if head_tied(emb, head) else set()
    missing = [k for k in state if k not in tensors and k not in tied and not k.endswith("rotary_emb.inv_freq")]
    if missing:
        raise InputError(f"artifact lacks {len(missing)} of the candidate's weights (e.g. '{missing[0]}')", where)
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(torch.as_tensor(value).to(device=state[key].device, dtype=state[key].dtype))
    return model.eval()
