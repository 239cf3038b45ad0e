"""Model loading for untrusted checkpoints (SPEC §11): one entry, `load_model(spec, plan)`.

`spec` is a `LoadedModel` (returned as given: this is also the "path or loaded
model" helper every API function uses) or one of, tried in this order:

| spec                                   | loader                                   |
|----------------------------------------|------------------------------------------|
| a bundled name (`reference`, ...)      | `local.load_folder` on the bundled folder |
| a `.gguf` file                         | `gguf.load_gguf` (dequantized)           |
| a folder with `adapter_config.json`    | base loaded by `load_model`, `lora.merge_adapter` |
| `owner/name[@rev]` that is no local path | `hub.fetch_hub_model`, then as a folder or adapter |
| any other path                         | `local.load_folder`                      |

The device plan (`device.plan_device`) is resolved once, from `plan` or from
`device`/`dtype` (None/"auto" dtype: float32 on CPU, bf16 on a GPU). The same
safety rules hold on every path: safetensors only unless `allow_pickle`,
`trust_remote_code` never set, config/weights consistency checked before
allocation (`loading.checkpoint`), NaN/Inf rejected, the tokenizer's ids within
the model's vocabulary, and every refusal one `InputError` line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mansu_audit.errors import InputError, first_line
from mansu_audit.io import sha256_file
from mansu_audit.loading.checkpoint import check_tokenizer_fits
from mansu_audit.loading.device import DevicePlan, model_device, plan_device
from mansu_audit.loading.gguf import fresh_copy, is_gguf, load_gguf, load_gguf_tokenizer
from mansu_audit.loading.hub import fetch_hub_model, is_hub_id
from mansu_audit.loading.local import (BUNDLED_MODELS, TOKENIZER_FILES, check_finite, checkpoint_files, load_folder,
                                       load_folder_tokenizer, pinned_name, resolve_model_path, settle_adapter_base)
from mansu_audit.loading.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter, merge_adapter, read_adapter_config

__all__ = ["BUNDLED_MODELS", "DevicePlan", "LoadedModel", "TOKENIZER_FILES", "fresh_copy", "load_model",
           "load_tokenizer", "model_device", "model_file_map", "model_from_objects", "pinned_name", "plan_device",
           "resolve_model_path"]


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the files it came from (for hashing)."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    path: Path | None
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def file_hashes(self) -> dict[str, str]:
        return {rel: sha256_file(p) for rel, p in sorted(self.files.items())}


def model_from_objects(model: torch.nn.Module, tokenizer, name: str = "in-memory") -> LoadedModel:
    """Wrap a model built in Python (tests, freshly unlearned) without files."""
    model.eval()
    return LoadedModel(model, tokenizer, name, None, {})


def load_model(spec: str | Path | LoadedModel, plan: DevicePlan | None = None, *,
               device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
               allow_pickle: bool = False, adapter_base: str | Path | LoadedModel | None = None) -> LoadedModel:
    """A `LoadedModel` as given, or `spec` loaded under `plan` (default: `plan_device(device, dtype)`)."""
    if isinstance(spec, LoadedModel):
        return spec
    plan = plan or plan_device(device, dtype)
    loaded = _dispatch(spec, plan, allow_pickle, adapter_base)
    check_tokenizer_fits(loaded.tokenizer, loaded.model, loaded.path)
    loaded.notes = [n for n in loaded.notes if not n.startswith("device ")] + [f"device {plan.describe()}"]
    return loaded


def _dispatch(spec: str | Path, plan: DevicePlan, allow_pickle: bool,
              adapter_base: str | Path | LoadedModel | None) -> LoadedModel:
    if str(spec) in BUNDLED_MODELS and adapter_base is None:
        path = resolve_model_path(spec)
        model, tokenizer = load_folder(path, plan, allow_pickle)
        return LoadedModel(model, tokenizer, str(spec), path, checkpoint_files(path))
    if is_gguf(spec) and adapter_base is None:
        path = Path(spec)
        model, tokenizer, notes = load_gguf(path, plan)
        return LoadedModel(model, tokenizer, str(spec), path, {path.name: path}, notes)
    if is_adapter(spec):
        return _load_adapter(Path(spec), plan, allow_pickle, adapter_base)
    if is_hub_id(spec):  # a hub snapshot is a model folder or an adapter folder
        folder = fetch_hub_model(str(spec), allow_pickle=allow_pickle)
        loaded = _dispatch(folder, plan, allow_pickle, adapter_base)
        loaded.name = str(spec)
        loaded.notes.insert(0, f"hub model {spec} (snapshot {folder.name})")
        return loaded
    if adapter_base is not None:
        raise InputError(f"an adapter base was given but this is not a LoRA adapter folder (no {ADAPTER_CONFIG})", spec)
    path = Path(spec)
    model, tokenizer = load_folder(path, plan, allow_pickle)
    return LoadedModel(model, tokenizer, str(spec), path, checkpoint_files(path))


def _load_adapter(folder: Path, plan: DevicePlan, allow_pickle: bool,
                  base: str | Path | LoadedModel | None) -> LoadedModel:
    """Merge a PEFT LoRA adapter over its base (given, or named in adapter_config.json)."""
    cfg = read_adapter_config(folder)
    base_spec = base if base is not None else cfg.get("base_model_name_or_path")
    if not base_spec:
        raise InputError("adapter names no base model (base_model_name_or_path); pass the base explicitly",
                         folder / ADAPTER_CONFIG)
    if base is None:
        base_spec = settle_adapter_base(folder, str(base_spec))
    if not isinstance(base_spec, LoadedModel) and is_adapter(base_spec):
        raise InputError("the base of an adapter cannot itself be an adapter", folder / ADAPTER_CONFIG)
    # Merge in float32 on the CPU, then move: merging in bf16 would round the small update away.
    loaded = _dispatch(base_spec, plan_device("cpu", torch.float32), allow_pickle, None) \
        if not isinstance(base_spec, LoadedModel) else base_spec
    model, merge, weight_file, cfg = merge_adapter(loaded.model, folder, allow_pickle)
    check_finite(model, weight_file)
    model.to(device=plan.device, dtype=plan.dtype).eval()
    files = {f"base/{k}": v for k, v in loaded.files.items()}
    files[f"adapter/{ADAPTER_CONFIG}"] = folder / ADAPTER_CONFIG
    files[f"adapter/{weight_file.name}"] = weight_file
    base_name = base_spec.name if isinstance(base_spec, LoadedModel) else base_spec
    notes = [n for n in loaded.notes if not n.startswith("device ")] + [merge.note(folder, cfg, base_name)]
    return LoadedModel(model, loaded.tokenizer, str(folder), folder, files, notes)


def model_file_map(spec: str | Path, *, adapter_base: str | Path | None = None) -> dict[str, Path]:
    """The files `load_model(spec)` records and hashes, found without loading any weights (`verify`)."""
    path = resolve_model_path(spec)
    if is_gguf(path):
        if not path.is_file():
            raise InputError("GGUF file not found", path)
        return {path.name: path}
    if is_adapter(path):
        cfg = read_adapter_config(path)
        base_spec = adapter_base if adapter_base is not None else cfg.get("base_model_name_or_path")
        if not base_spec:
            raise InputError("adapter names no base model (base_model_name_or_path)", path / ADAPTER_CONFIG)
        if adapter_base is None:
            base_spec = settle_adapter_base(path, str(base_spec))
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
    return checkpoint_files(path)


def load_tokenizer(spec: str | Path):
    """Only the tokenizer of a model spec (local folder, bundled name, GGUF file or cached hub id)."""
    path = resolve_model_path(spec)
    try:
        if is_gguf(path):
            return load_gguf_tokenizer(path)
        if is_hub_id(spec):
            path = fetch_hub_model(str(spec))
        if not path.is_dir():
            raise InputError("tokenizer source not found (a model folder, GGUF file or hub id)", path)
        return load_folder_tokenizer(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot load tokenizer: {first_line(exc)}", path) from None
