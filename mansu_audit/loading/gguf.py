"""GGUF files: dequantized by transformers' gguf support into a fresh, saveable model.

The state dict is copied into a model built from the config (`fresh_copy`),
because transformers refuses `save_pretrained` on GGUF-loaded models and
quantizers/methods must be free to copy and save the model. The certificate
note records the file's declared type and its tensor storage types.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mansu_audit.errors import InputError, first_line, require_extra
from mansu_audit.loading.device import DevicePlan
from mansu_audit.loading.local import check_finite, is_causal_lm


def is_gguf(spec: str | Path) -> bool:
    return str(spec).lower().endswith(".gguf")


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
    gguf = require_extra("gguf", "gguf", "loading a .gguf file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise InputError(f"not a readable GGUF file: {first_line(exc)}", path) from None
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


def load_gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not path.is_file():
        raise InputError("GGUF file not found", path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def load_gguf(path: Path, plan: DevicePlan) -> tuple[torch.nn.Module, object, list[str]]:
    """(model, tokenizer, notes) of a GGUF checkpoint, dequantized to float under `plan`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not path.is_file():
        raise InputError("GGUF file not found", path)
    info = gguf_info(path)
    require_extra("accelerate", "gguf", "loading a .gguf file")  # transformers requires it for gguf_file=
    previous = logging.getLogger("transformers").level
    logging.getLogger("transformers").setLevel(logging.ERROR)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = load_gguf_tokenizer(path)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          local_files_only=True, dtype=torch.float32)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot load GGUF ({info.architecture}): {first_line(exc)}", path) from None
    finally:
        logging.getLogger("transformers").setLevel(previous)
        if bars:
            hf_logging.enable_progress_bar()
    if not is_causal_lm(gguf_model.config):
        raise InputError(f"GGUF holds a '{gguf_model.config.model_type}' model, not a causal LM", path)
    model = fresh_copy(gguf_model)
    del gguf_model
    model.to(device=plan.device, dtype=plan.dtype).eval()
    check_finite(model, path)
    return model, tokenizer, [f"dequantized from GGUF {info.describe()}"]


def fresh_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in a model built from a copy of its config (drops GGUF/loader state that blocks
    saving); `model` and its config are left as they were."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
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
