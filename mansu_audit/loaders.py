"""Real-world model inputs: hub ids, LoRA adapters, GGUF files, devices, chat templates.

`mansu_audit.models.load_model` handles local safetensors folders and dispatches
here for everything else (`needs_loader`). The same safety rules hold on every
path: safetensors only unless `allow_pickle`, `trust_remote_code` never set,
NaN/Inf weights rejected, every refusal one `InputError` line.

- **Hub id** (`owner/name`, optionally `owner/name@revision`): the local HF
  cache is tried first; the hub only when it is reachable and `HF_HUB_OFFLINE`
  is unset. Only config, tokenizer and safetensors files are fetched.
- **LoRA adapter folder** (`adapter_config.json` + `adapter_model.safetensors`):
  merged into its base (`W += scale · B A`, scale = alpha/r, or alpha/√r with
  rsLoRA) so quantizers see ordinary dense weights — a quantized adapter
  deployment quantizes the merged weights too. Implemented without `peft`:
  the merge is exact arithmetic and the adapter format is plain tensors.
- **GGUF file**: dequantized by transformers' gguf support, then the state dict
  is copied into a fresh model built from the config, because transformers
  refuses `save_pretrained` on GGUF-loaded models and quantizers/methods must
  be free to copy and save the model.
- **Device plan** (`--device auto`): CUDA when present, bf16 there and
  `device_map="auto"` when several GPUs are visible; CPU float32 otherwise.
- **Batch size** (`AutoBatch`): starts large on GPU and halves on out-of-memory,
  remembering the size that worked; records the peak GPU memory.
- **Chat templates** (`--chat-template auto|on|off`): `chat_prompt_fn` wraps the
  lm-eval MCQ prompt in the model's template as one user turn followed by the
  assistant generation prompt (lm-eval's `--apply_chat_template` convention).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from mansu_audit.errors import InputError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_./-]+)?$")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "merges.txt", "vocab.txt", "*.jinja"]
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
CHAT_MODES = ("auto", "on", "off")


# --------------------------------------------------------------------------- dispatch

def is_gguf(spec: str | Path) -> bool:
    return str(spec).lower().endswith(".gguf")


def is_adapter(spec: str | Path) -> bool:
    return Path(spec).is_dir() and (Path(spec) / ADAPTER_CONFIG).is_file()


def is_hub_id(spec: str | Path) -> bool:
    """`owner/name` that is not a local path: neither it nor its first component exists here
    (so a mistyped `outputs/model` is reported as a missing folder, not looked up on the hub)."""
    text = str(spec)
    if not HUB_ID.match(text):
        return False
    local = Path(text.split("@")[0])
    return not local.exists() and not Path(text.split("/")[0]).exists()


def needs_loader(spec: str | Path, device: object = "cpu", dtype: object = None,
                 adapter_base: str | Path | None = None) -> bool:
    """True when `models.load_model` must hand `spec` to `load_any` (anything but a plain local folder)."""
    from mansu_audit.models import BUNDLED_MODELS

    if str(spec) in BUNDLED_MODELS and device != "auto" and dtype != "auto":
        return False
    return (device == "auto" or dtype == "auto" or adapter_base is not None or is_gguf(spec)
            or is_adapter(spec) or is_hub_id(spec))


# --------------------------------------------------------------------------- devices

@dataclass(frozen=True)
class DevicePlan:
    """Where and in what precision a model runs; `device_map` set only when sharding across GPUs."""

    device: str
    dtype: torch.dtype
    device_map: str | None = None

    def describe(self) -> str:
        shard = f", device_map={self.device_map} over {torch.cuda.device_count()} GPUs" if self.device_map else ""
        return f"{self.device} {str(self.dtype).replace('torch.', '')}{shard}"


def plan_device(device: str | torch.device = "auto", dtype: str | torch.dtype | None = "auto") -> DevicePlan:
    """Resolve `--device`/`--dtype`: auto = GPU when present (bf16, sharded over several GPUs), else CPU fp32."""
    dev = str(device)
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{dev}' requested but no CUDA GPU is visible")
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in (None, "auto"):
        resolved = torch.float32
        if dev.startswith("cuda"):
            resolved = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif str(dtype) in DTYPES:
        resolved = DTYPES[str(dtype)]
    else:
        raise InputError(f"unknown dtype '{dtype}' (use auto, float32, bfloat16 or float16)")
    device_map = "auto" if dev == "cuda" and torch.cuda.device_count() > 1 else None
    return DevicePlan(dev, resolved, device_map)


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the input embeddings (where input ids must go, also when sharded)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


# --------------------------------------------------------------------------- entry point

def load_any(spec: str | Path, *, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = torch.float32,
             allow_pickle: bool = False, adapter_base: str | Path | None = None):
    """Load a hub id, LoRA adapter folder, GGUF file or local folder under a device plan -> LoadedModel."""
    plan = plan_device(device, dtype)
    if is_gguf(spec):
        return load_gguf(spec, plan)
    if is_adapter(spec):
        return load_lora_adapter(spec, plan, allow_pickle=allow_pickle, base=adapter_base)
    if is_hub_id(spec):
        folder = fetch_hub_model(str(spec), allow_pickle=allow_pickle)
        loaded = load_any(folder, device=plan.device, dtype=plan.dtype, allow_pickle=allow_pickle,
                          adapter_base=adapter_base)
        loaded.name = str(spec)
        loaded.notes.insert(0, f"hub model {spec} (snapshot {folder.name})")
        return loaded
    if adapter_base is not None:
        raise InputError("an adapter base was given but this is not a LoRA adapter folder "
                         f"(no {ADAPTER_CONFIG})", spec)
    return load_folder(spec, plan, allow_pickle=allow_pickle)


def load_folder(spec: str | Path, plan: DevicePlan, allow_pickle: bool = False):
    """A local HF folder under `plan`; the plain path of `models.load_model` unless sharding."""
    from mansu_audit import models

    if plan.device_map is None:
        loaded = models.load_model(spec, device=plan.device, dtype=plan.dtype, allow_pickle=allow_pickle)
        loaded.notes.append(f"device {plan.describe()}")
        return loaded
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = models.resolve_model_path(spec)
    models._check_folder(path, allow_pickle)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    if not models._is_causal_lm(config):
        raise InputError(f"config is a '{config.model_type}' model, not a causal language model", path / "config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, use_safetensors=not allow_pickle,
            dtype=plan.dtype, device_map=plan.device_map)
    except Exception as exc:
        raise InputError(f"cannot load model: {_first_line(exc)}", path) from None
    model.eval()
    models.check_finite(model, path)
    return models.LoadedModel(model, tokenizer, str(spec), path, models.checkpoint_files(path),
                              [f"device {plan.describe()}"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- hub

def fetch_hub_model(spec: str, allow_pickle: bool = False) -> Path:
    """Local snapshot folder of a hub model: the cache first, the hub only when reachable."""
    repo_id, _, revision = spec.partition("@")
    from huggingface_hub import snapshot_download

    patterns = HUB_PATTERNS + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns,
                                      local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise InputError(f"'{spec}' is no local folder, and as a hub model it is not in the local cache "
                         "and HF_HUB_OFFLINE is set")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns))
    except Exception as exc:
        raise InputError(f"'{spec}' is no local folder, and as a hub model it is not cached and could not be "
                         f"fetched: {_first_line(exc)}") from None


# --------------------------------------------------------------------------- GGUF

@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file holds: its declared file type and the count of tensors per storage type."""

    file_type: str
    tensor_types: dict[str, int]
    architecture: str

    def describe(self) -> str:
        counts = ", ".join(f"{k}×{v}" for k, v in sorted(self.tensor_types.items(), key=lambda kv: -kv[1]))
        return f"{self.file_type} ({counts})"


def gguf_info(path: Path) -> GGUFInfo:
    try:
        import gguf
    except ImportError:
        raise InputError("GGUF files need the 'gguf' package (pip install gguf)", path) from None
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise InputError(f"not a readable GGUF file: {_first_line(exc)}", path) from None
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1

    def scalar(key: str):
        f = reader.fields.get(key)
        return None if f is None or not f.data else f.parts[f.data[0]]

    raw_type = scalar("general.file_type")
    file_type = "unknown"
    if raw_type is not None:
        try:
            file_type = gguf.LlamaFileType(int(raw_type[0])).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = f"type {int(raw_type[0])}"
    arch = scalar("general.architecture")
    architecture = bytes(arch).decode("utf-8", "replace") if arch is not None else "unknown"
    return GGUFInfo(file_type, counts, architecture)


def load_gguf(spec: str | Path, plan: DevicePlan):
    """Dequantize a GGUF checkpoint into a fresh (saveable) transformers model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mansu_audit import models

    path = Path(spec)
    if not path.is_file():
        raise InputError("GGUF file not found", path)
    info = gguf_info(path)
    try:
        import accelerate  # noqa: F401  (transformers requires it for gguf_file=)
    except ImportError:
        raise InputError("GGUF files need the 'accelerate' package (pip install accelerate)", path) from None
    from transformers.utils import logging as hf_logging

    previous = logging.getLogger("transformers").level
    logging.getLogger("transformers").setLevel(logging.ERROR)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          local_files_only=True, dtype=torch.float32)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot load GGUF ({info.architecture}): {_first_line(exc)}", path) from None
    finally:
        logging.getLogger("transformers").setLevel(previous)
        if bars:
            hf_logging.enable_progress_bar()
    if not models._is_causal_lm(gguf_model.config):
        raise InputError(f"GGUF holds a '{gguf_model.config.model_type}' model, not a causal LM", path)
    model = fresh_copy(gguf_model)
    del gguf_model
    model.to(device=plan.device, dtype=plan.dtype).eval()
    models.check_finite(model, path)
    notes = [f"dequantized from GGUF {info.describe()}", f"device {plan.describe()}"]
    return models.LoadedModel(model, tokenizer, str(spec), path, {path.name: path}, notes)


def model_file_map(spec: str | Path, *, adapter_base: str | Path | None = None) -> dict[str, Path]:
    """The files `load_model(spec)` records and hashes, found without loading any weights (`verify`)."""
    from mansu_audit import models

    path = models.resolve_model_path(spec)
    if is_gguf(path):
        if not path.is_file():
            raise InputError("GGUF file not found", path)
        return {path.name: path}
    if is_adapter(path):
        cfg = read_adapter_config(path)
        base_spec = adapter_base if adapter_base is not None else cfg.get("base_model_name_or_path")
        if not base_spec:
            raise InputError("adapter names no base model (base_model_name_or_path)", path / ADAPTER_CONFIG)
        files = {f"base/{k}": v for k, v in model_file_map(base_spec).items()}
        files[f"adapter/{ADAPTER_CONFIG}"] = path / ADAPTER_CONFIG
        weights = next((path / n for n in ADAPTER_WEIGHTS if (path / n).is_file()), None)
        if weights is not None:
            files[f"adapter/{weights.name}"] = weights
        return files
    if is_hub_id(spec):
        path = fetch_hub_model(str(spec))
    if not path.is_dir():
        raise InputError("model folder not found", path)
    return models.checkpoint_files(path)


def fresh_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in a model built from its config (drops GGUF/loader state that blocks saving)."""
    from transformers import AutoModelForCausalLM

    config = model.config
    config.__dict__.pop("gguf_file", None)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise InputError(f"weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    return fresh.eval()


# --------------------------------------------------------------------------- LoRA adapters

@dataclass
class LoraMerge:
    """What a LoRA merge changed: module names, rank, scale (for the certificate note)."""

    modules: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    rank: int = 0
    alpha: float = 0.0


def read_adapter_config(folder: Path) -> dict:
    cfg_path = folder / ADAPTER_CONFIG
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"bad JSON: {exc.msg}", cfg_path, exc.lineno) from None
    if not isinstance(cfg, dict):
        raise InputError("expected a JSON object", cfg_path)
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InputError(f"adapter type '{peft_type}' is not supported (only LoRA adapters are merged)", cfg_path)
    if cfg.get("use_dora"):
        raise InputError("DoRA adapters are not supported (merge them with peft first)", cfg_path)
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or cfg.get(key) <= 0:
            raise InputError(f"adapter config needs a positive '{key}'", cfg_path)
    return cfg


def read_adapter_weights(folder: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], Path]:
    safe = folder / ADAPTER_WEIGHTS[0]
    if safe.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(safe)), safe
        except Exception as exc:
            raise InputError(f"unreadable safetensors: {_first_line(exc)}", safe) from None
    pickled = folder / ADAPTER_WEIGHTS[1]
    if pickled.is_file():
        if not allow_pickle:
            raise InputError("only pickle adapter weights (adapter_model.bin); refusing to unpickle untrusted code "
                             "(pass --allow-pickle if you trust it)", pickled)
        return torch.load(str(pickled), map_location="cpu", weights_only=True), pickled
    raise InputError("no adapter weights (adapter_model.safetensors)", folder)


def _module_key(key: str) -> tuple[str, str] | None:
    """`base_model.model.X.lora_A[.default].weight` -> ("X", "lora_A"); None for other keys."""
    m = re.match(r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                 r"(?:\.[A-Za-z0-9_]+)?(?:\.weight)?$", key)
    return (m.group(1), m.group(2)) if m else None


def _scale_for(module: str, cfg: dict) -> tuple[int, float, float]:
    """(rank, alpha, scale) of one module, honouring PEFT's rank_pattern / alpha_pattern."""
    rank, alpha = cfg["r"], cfg["lora_alpha"]
    for key, value in (cfg.get("rank_pattern") or {}).items():
        if re.search(rf"(^|\.){key}$", module):
            rank = value
    for key, value in (cfg.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){key}$", module):
            alpha = value
    scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    return int(rank), float(alpha), float(scale)


@torch.no_grad()
def merge_lora(model: torch.nn.Module, weights: dict[str, torch.Tensor], cfg: dict, where: Path) -> LoraMerge:
    """Add every LoRA product into the base weights in place (float64 accumulation, exact up to rounding)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    others: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        parsed = _module_key(key)
        if parsed is None:
            others[key] = tensor
        else:
            pairs.setdefault(parsed[0], {})[parsed[1]] = tensor
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    merge = LoraMerge(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]))
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
    for name, ab in sorted(pairs.items()):
        if name not in modules or not hasattr(modules[name], "weight"):
            raise InputError(f"adapter targets '{name}', which the base model lacks (wrong base model?)", where)
        weight = modules[name].weight
        _, _, scale = _scale_for(name, cfg)
        if "lora_A" in ab and "lora_B" in ab:
            delta = ab["lora_B"].double() @ ab["lora_A"].double()  # [out, in]
            if fan_in_fan_out:
                delta = delta.T
        elif "lora_embedding_A" in ab and "lora_embedding_B" in ab:
            delta = (ab["lora_embedding_B"].double() @ ab["lora_embedding_A"].double()).T  # [vocab, hidden]
        else:
            raise InputError(f"adapter has an incomplete A/B pair for '{name}'", where)
        if tuple(delta.shape) != tuple(weight.shape):
            raise InputError(f"adapter shape {tuple(delta.shape)} for '{name}' does not match the base weight "
                             f"{tuple(weight.shape)} (wrong base model?)", where)
        weight.copy_((weight.double() + scale * delta.to(weight.device)).to(weight.dtype))
        merge.modules.append(name)
    for key, tensor in sorted(others.items()):  # modules_to_save: whole tensors replacing the base's
        name = re.sub(r"^base_model\.model\.", "", key).replace(".modules_to_save.default", "")
        name = name if name in params else f"{name}.weight" if f"{name}.weight" in params else name
        if name not in params:
            raise InputError(f"adapter tensor '{key}' matches no base parameter (wrong base model?)", where)
        if tuple(params[name].shape) != tuple(tensor.shape):
            raise InputError(f"adapter tensor '{key}' has shape {tuple(tensor.shape)}, base has "
                             f"{tuple(params[name].shape)}", where)
        params[name].copy_(tensor.to(params[name].dtype))
        merge.replaced.append(name)
    if not merge.modules and not merge.replaced:
        raise InputError("adapter holds no LoRA weights", where)
    return merge


def load_lora_adapter(spec: str | Path, plan: DevicePlan, *, allow_pickle: bool = False,
                      base: str | Path | None = None):
    """Merge a PEFT LoRA adapter folder over its base (given, or named in adapter_config.json)."""
    folder = Path(spec)
    cfg = read_adapter_config(folder)
    base_spec = base if base is not None else cfg.get("base_model_name_or_path")
    if not base_spec:
        raise InputError("adapter names no base model (base_model_name_or_path); pass the base explicitly",
                         folder / ADAPTER_CONFIG)
    if is_adapter(base_spec):
        raise InputError("the base of an adapter cannot itself be an adapter", folder / ADAPTER_CONFIG)
    weights, weight_file = read_adapter_weights(folder, allow_pickle)
    # Merge in float32 on the CPU, then move: merging in bf16 would round the small update away.
    loaded = load_any(base_spec, device="cpu", dtype=torch.float32, allow_pickle=allow_pickle)
    merge = merge_lora(loaded.model, weights, cfg, weight_file)
    from mansu_audit import models

    models.check_finite(loaded.model, weight_file)
    loaded.model.to(device=plan.device, dtype=plan.dtype).eval()
    files = {f"base/{k}": v for k, v in loaded.files.items()}
    files[f"adapter/{ADAPTER_CONFIG}"] = folder / ADAPTER_CONFIG
    files[f"adapter/{weight_file.name}"] = weight_file
    scale = "alpha/sqrt(r)" if cfg.get("use_rslora") else "alpha/r"
    note = (f"LoRA adapter {folder} (r={merge.rank}, alpha={merge.alpha:g}, scale {scale}, "
            f"{len(merge.modules)} modules) merged over base {base_spec}")
    if merge.replaced:
        note += f"; {len(merge.replaced)} tensors replaced (modules_to_save)"
    notes = [n for n in loaded.notes if not n.startswith("device ")] + [note, f"device {plan.describe()}"]
    return models.LoadedModel(loaded.model, loaded.tokenizer, str(spec), folder, files, notes)


# --------------------------------------------------------------------------- chat templates

def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat_template(tokenizer, mode: str = "auto") -> bool:
    """auto: on iff the tokenizer ships a template (instruct models); on: required; off: never."""
    if mode not in CHAT_MODES:
        raise InputError(f"--chat-template must be one of {', '.join(CHAT_MODES)}, not '{mode}'")
    if mode == "on" and not has_chat_template(tokenizer):
        raise InputError("--chat-template on, but the tokenizer has no chat template")
    return mode == "on" or (mode == "auto" and has_chat_template(tokenizer))


def chat_prompt_fn(tokenizer, mode: str = "auto") -> Callable[[str], str] | None:
    """A `prompt_fn` for `evaluate_mcq`: the MCQ prompt as one user turn, then the assistant prompt.

    The scored continuation stays " A", " B", ... after the generation prompt, as
    lm-eval's `--apply_chat_template`. A leading BOS in the rendered text is
    dropped when the tokenizer adds BOS itself, so BOS never appears twice.
    """
    if not use_chat_template(tokenizer, mode):
        return None
    bos = getattr(tokenizer, "bos_token", None)
    adds_bos = bool(bos) and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]

    def wrap(prompt: str) -> str:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        if adds_bos and text.startswith(bos):
            text = text[len(bos):]
        return text

    return wrap


def chat_template_record(tokenizer, mode: str = "auto") -> dict:
    """What the certificate records about prompting: mode, whether applied, template hash."""
    applied = use_chat_template(tokenizer, mode)
    template = getattr(tokenizer, "chat_template", None) or ""
    return {"mode": mode, "applied": applied,
            "template_sha256": hashlib.sha256(template.encode()).hexdigest() if applied else None}


# --------------------------------------------------------------------------- batch size

def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


@dataclass
class AutoBatch:
    """Evaluation batch size that backs off on out-of-memory and remembers what worked.

    `start=None` picks 256 on a GPU and 64 on CPU (CPU never runs out of GPU
    memory; 64 is the evaluator's default). `peak_memory_bytes` is the largest
    `torch.cuda.max_memory_allocated` seen (0 on CPU), for the documented peak.
    """

    start: int | None = None
    batch_size: int = 0
    peak_memory_bytes: int = 0
    backoffs: int = 0
    evaluator: Callable | None = None  # default `mansu_audit.evaluate.evaluate_mcq`

    def evaluate(self, model: torch.nn.Module, tokenizer, items: Sequence, **kwargs):
        from mansu_audit.evaluate import evaluate_mcq

        evaluate_fn = self.evaluator or evaluate_mcq
        device = model_device(model)
        if self.batch_size == 0:
            self.batch_size = self.start or (256 if device.type == "cuda" else 64)
        while True:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                result = evaluate_fn(model, tokenizer, items, batch_size=self.batch_size, **kwargs)
            except Exception as exc:
                if not _is_oom(exc) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                self.backoffs += 1
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if device.type == "cuda":
                self.peak_memory_bytes = max(self.peak_memory_bytes, torch.cuda.max_memory_allocated(device))
            return result


# --------------------------------------------------------------------------- CLI helpers

def add_loading_arguments(p) -> None:
    """`--device`, `--dtype`, `--chat-template` for commands that load models (pass them to `load_model`)."""
    p.add_argument("--device", default="auto", help="auto (GPU if present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, float32 on CPU), float32, bfloat16, float16")
    p.add_argument("--chat-template", default="auto", choices=CHAT_MODES,
                   help="wrap prompts in the tokenizer's chat template (auto: when it has one)")


def load_tokenizer(spec: str | Path):
    """Only the tokenizer of a model spec (local folder, bundled name, GGUF file or cached hub id)."""
    from transformers import AutoTokenizer

    from mansu_audit.models import resolve_model_path

    path = resolve_model_path(spec)
    try:
        if is_gguf(path):
            if not path.is_file():
                raise InputError("GGUF file not found", path)
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        if is_hub_id(spec):
            path = fetch_hub_model(str(spec))
        if not path.is_dir():
            raise InputError("tokenizer source not found (a model folder, GGUF file or hub id)", path)
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot load tokenizer: {_first_line(exc)}", path) from None
