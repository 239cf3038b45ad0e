"""`unlearn(method, model, benchmark, ...)`: run an unlearning method and write its checkpoint.

The checkpoint folder holds `model.safetensors` + `config.json` (save_pretrained,
safetensors), the tokenizer, and `unlearn.json`: the method, its settings, the
seed, steps, wall time, the method's diagnostics and the SHA-256 of the base
model's and benchmark's files (so a result names exactly what it came from).
It is written to a temporary sibling folder and renamed into place, so an
error or interrupt never leaves a half-written checkpoint. `load_model(out)`
(and so `certify`) reads it back. A method that returns a peft model (the LoRA
methods with `save=adapter`) gets a PEFT adapter folder instead of the model
files (`adapter_config.json` + `adapter_model.safetensors`, its base recorded
by `adapter_base_spec`), which `load_model` merges over that base.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mansu_audit._version import __version__
from mansu_audit.api import as_bundle
from mansu_audit.data import Bundle
from mansu_audit.errors import InputError
from mansu_audit.io import json_copy, ordinary_permissions, sha256_file
from mansu_audit.loading import BUNDLED_MODELS, LoadedModel, load_model, pinned_name, plan_device
from mansu_audit.loading.hub import is_hub_id
from mansu_audit.loading.local import UNLEARN_RECORD
from mansu_audit.registry import code_files, get_method

RECORD_NAME = UNLEARN_RECORD
RECORD_VERSION = 1


def resolve_method(method: str | type | Any):
    """A method instance from a registry name, `file.py:Class`, a class or an instance."""

    if isinstance(method, str):
        return get_method(method)()
    if isinstance(method, type):
        return method()
    return method


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("output exists and is not an empty folder; refusing to overwrite", out)
    if not out.parent.exists():
        raise InputError("parent folder of the output does not exist", out.parent)


def method_code_record(method) -> dict:
    """SHA-256 of each file a method's code consists of (`registry.code_files`: its own source file, e.g. a
    plugin's `file.py`, and the shared method modules it imports), by file name."""
    return {str(path.name): sha256_file(path) for path in code_files(type(method))}


def _record(result, method, loaded: LoadedModel, bundle: Bundle, device: torch.device, settings) -> dict:
    import transformers

    given = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else {}
    return {
        "record_version": RECORD_VERSION,
        "method": result.method or getattr(method, "name", type(method).__name__),
        "method_class": f"{type(method).__module__}.{type(method).__qualname__}",
        "method_code": method_code_record(method),
        "settings": result.settings or json_copy(given, default=str),
        "seed": result.seed,
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "diagnostics": result.diagnostics,
        "base_model": {"name": loaded.name, "files": loaded.file_hashes()},
        "benchmark": {"name": bundle.name, "files": bundle.file_hashes()},
        "device": str(device),
        "versions": {"mansu_audit": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
    }


def is_adapter_model(model: torch.nn.Module) -> bool:
    """A peft model (LoRA methods with `save=adapter`): saved as an adapter folder, not a full checkpoint."""
    return isinstance(getattr(model, "peft_config", None), dict) and hasattr(model, "merge_and_unload")


def adapter_base_spec(loaded: LoadedModel) -> str:
    """What an adapter folder's `base_model_name_or_path` records so `load_model` finds the base again:
    a bundled name or hub id as given, else the base folder's absolute path."""
    if loaded.name in BUNDLED_MODELS:
        return pinned_name(loaded.name)  # `reference` -> `reference-v3`: the name must not move with the default
    if is_hub_id(loaded.name):
        return loaded.name
    if loaded.path is None:
        raise InputError(f"base model '{loaded.name}' was built in memory, so an adapter folder could not name it; "
                         "load the base from a folder or use --set save=merged")
    return str(Path(loaded.path).resolve())


def write_checkpoint(out: str | Path, model: torch.nn.Module, tokenizer, record: dict) -> Path:
    """Atomically write model (safetensors), tokenizer and `unlearn.json` to `out` (new or empty folder)."""
    out = Path(out)
    _check_out(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
        ordinary_permissions(tmp)  # mkdtemp makes 0700 folders
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def unlearn(method: str | type | Any, model: str | Path | LoadedModel, benchmark: str | Path | Bundle = "synthhazard",
            *, seed: int = 0, overrides: list[str] | dict[str, Any] | None = None, out: str | Path | None = None,
            device: str | torch.device | None = "cpu", progress: bool = False):
    """Run `method` on `model` (θ0, left unmodified) with `benchmark`'s data; optionally write the checkpoint.

    `overrides` are `key=value` strings or a dict, type-checked against the method's
    `Settings`. Returns the method's `UnlearnResult` (its `.model` is θu).
    """
    from mansu_audit.methods.base import UnlearnContext, parse_overrides

    instance = resolve_method(method)
    settings = parse_overrides(instance.Settings, overrides)
    if out is not None:
        _check_out(Path(out))
    loaded = load_model(model)
    if out is not None and getattr(settings, "save", None) == "adapter":
        adapter_base_spec(loaded)  # refuse an unnameable base before training, not after
    bundle = as_bundle(benchmark)
    dev = plan_device(device).torch_device  # None/'auto': CUDA, then MPS, then CPU
    context = UnlearnContext(loaded.model, loaded.tokenizer, bundle, seed=seed, device=dev, progress=progress)
    start = time.perf_counter()
    result = instance.run(context, settings)
    if not result.seconds:
        result.seconds = time.perf_counter() - start
    result.method = result.method or getattr(instance, "name", type(instance).__name__)
    result.seed = seed
    if out is not None:
        result.model.to("cpu")
        if is_adapter_model(result.model):
            result.model.peft_config["default"].base_model_name_or_path = adapter_base_spec(loaded)
        write_checkpoint(out, result.model, loaded.tokenizer, _record(result, instance, loaded, bundle, dev, settings))
    return result
