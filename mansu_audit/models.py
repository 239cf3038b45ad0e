"""Model loading for untrusted checkpoints (SPEC §11).

`load_model("reference")` loads the bundled reference model; any other string is a
local Hugging Face causal-LM folder. Safetensors only unless `allow_pickle=True`,
`trust_remote_code` is never passed, NaN/Inf weights are rejected, and every
refusal is one `InputError` naming the folder and the problem.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mansu_audit.data import BUNDLED_DATA, sha256_file
from mansu_audit.errors import InputError

BUNDLED_MODELS = {
    "reference": BUNDLED_DATA / "reference-model",
    "reference-nf4grid": BUNDLED_DATA / "reference-nf4grid",
    "reference-oracle": BUNDLED_DATA / "reference-oracle",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json",
                   "special_tokens_map.json", "merges.txt", "vocab.txt", "added_tokens.json",
                   "chat_template.jinja")


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


def resolve_model_path(spec: str | Path) -> Path:
    if str(spec) in BUNDLED_MODELS:
        return BUNDLED_MODELS[str(spec)]
    return Path(spec)


def checkpoint_files(path: Path) -> dict[str, Path]:
    """Config, weights and tokenizer files of a model folder, by relative name."""
    names = {"config.json", "generation_config.json", *TOKENIZER_FILES}
    return {p.name: p for p in sorted(path.iterdir())
            if p.is_file() and (p.name in names or p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".index.json"))}


def _check_folder(path: Path, allow_pickle: bool) -> dict:
    if not path.exists():
        raise InputError("model folder not found", path)
    if not path.is_dir():
        raise InputError("model must be a folder with config.json, weights and tokenizer", path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputError("no config.json (not a Hugging Face model folder)", path)
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"bad JSON: {exc.msg}", config_path, exc.lineno) from None
    if config.get("auto_map"):
        raise InputError("config asks for remote code (auto_map); refusing (trust_remote_code is off)", config_path)
    files = [p.name for p in path.iterdir()]
    if not any(f.endswith(".safetensors") for f in files):
        pickled = [f for f in files if f.endswith(WEIGHT_SUFFIXES)]
        if not pickled:
            raise InputError("no weight files (*.safetensors) found", path)
        if not allow_pickle:
            raise InputError(f"only pickle weights ({pickled[0]}); refusing to unpickle untrusted code "
                             "(convert to safetensors, or pass --allow-pickle if you trust it)", path)
    if not any(f in files for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")):
        raise InputError("no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)", path)
    return config


def _is_causal_lm(config) -> bool:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING


def check_finite(model: torch.nn.Module, where: Path | str) -> None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise InputError(f"weight '{name}' contains NaN or Inf", where)


def load_model(spec: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               allow_pickle: bool = False, adapter_base: str | Path | None = None) -> LoadedModel:
    """Load a local causal LM and its tokenizer, refusing anything unsafe or malformed.

    Hub ids, LoRA adapter folders (merged over `adapter_base` or the base they
    name), `.gguf` files and `device="auto"` / `dtype="auto"` go through
    `mansu_audit.loaders.load_any`, under the same safety rules.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mansu_audit import loaders

    if loaders.needs_loader(spec, device, dtype, adapter_base):
        return loaders.load_any(spec, device=device, dtype=dtype, allow_pickle=allow_pickle,
                                adapter_base=adapter_base)
    path = resolve_model_path(spec)
    _check_folder(path, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        raise InputError(f"unreadable config: {str(exc).splitlines()[0]}", path / "config.json") from None
    if not _is_causal_lm(config):
        raise InputError(f"config is a '{config.model_type}' model, not a causal language model", path / "config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # tokenizers raise many types; one line is what the user needs
        raise InputError(f"cannot load tokenizer: {str(exc).splitlines()[0]}", path) from None
    previous = logging.getLogger("transformers.modeling_utils").level
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, use_safetensors=None if allow_pickle else True,
            dtype=dtype)
    except Exception as exc:
        raise InputError(f"cannot load weights: {str(exc).splitlines()[0]}", path) from None
    finally:
        logging.getLogger("transformers.modeling_utils").setLevel(previous)
    model.to(device).eval()
    check_finite(model, path)
    return LoadedModel(model, tokenizer, str(spec), path, checkpoint_files(path))


def model_from_objects(model: torch.nn.Module, tokenizer, name: str = "in-memory") -> LoadedModel:
    """Wrap a model built in Python (tests, freshly unlearned) without files."""
    model.eval()
    return LoadedModel(model, tokenizer, name, None, {})
