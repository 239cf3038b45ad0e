"""The one loader of a local Hugging Face causal-LM folder (bundled models and hub snapshots too).

Safety rules (SPEC §11): safetensors only unless `allow_pickle`,
`trust_remote_code` never set, config and weights checked against each other
before anything is allocated (`loading.checkpoint`), whatever transformers could
not load refused rather than random-initialised, NaN/Inf weights rejected, and
every refusal one `InputError` naming the folder or file and the problem.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mansu_audit.data import BUNDLED_DATA
from mansu_audit.errors import InputError, first_line
from mansu_audit.io import sha256_file
from mansu_audit.loading.checkpoint import check_loading_info, preflight, read_config, safetensors_header
from mansu_audit.loading.device import DevicePlan

BUNDLED_MODELS = {
    # Version 3 (issue 18 §0), the default: answers from the facts in any choice order (0.987 / 0.934 on
    # forget_eval / retain_eval averaged over the four rotations); trained by benchmarks_data/reference-model/train.py.
    "reference": BUNDLED_DATA / "reference-v3",
    "reference-nf4grid": BUNDLED_DATA / "reference-nf4grid",  # `reference` snapped onto NF4 (its build.py)
    "reference-oracle": BUNDLED_DATA / "reference-v3-oracle",  # the same recipe without the forget facts
    # Version 1 (the default through suite 0.3.0): memorised each evaluation prompt's answer letter (about 0.41
    # averaged over choice rotations). Kept so the reports made on it can be reproduced; its NF4-grid twin is rebuilt with
    # `reference-nf4grid/build.py --source reference-v1 --out DIR`.
    "reference-v1": BUNDLED_DATA / "reference-model",
    "reference-v1-oracle": BUNDLED_DATA / "reference-oracle",
    # Pinned names of version 3: they keep naming these weights when the default moves on. Adapter folders and
    # rebuild commands record them (`pinned_name`), never a moving name.
    "reference-v3": BUNDLED_DATA / "reference-v3",
    "reference-v3-oracle": BUNDLED_DATA / "reference-v3-oracle",
    "reference-v3-nf4grid": BUNDLED_DATA / "reference-nf4grid",
}
# Names whose weights changed with a suite version (version 1 up to 0.3.0, version 3 from 0.4.0). Folder names on
# disk are historical: `reference-model` and `reference-oracle` hold version 1.
MOVING_NAMES = ("reference", "reference-oracle", "reference-nf4grid")
UNLEARN_RECORD = "unlearn.json"  # what `mansu-audit unlearn` writes beside a checkpoint or adapter (mansu_audit.unlearn)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json",
                   "special_tokens_map.json", "merges.txt", "vocab.txt", "added_tokens.json",
                   "chat_template.jinja")


def pinned_name(name: str) -> str:
    """A bundled name that keeps naming the same weights across suite versions: `name` itself, or for a moving
    name (`MOVING_NAMES`) the pinned alias of the same folder (`reference` -> `reference-v3`)."""
    if name not in MOVING_NAMES:
        return name
    return next(n for n, f in BUNDLED_MODELS.items() if f == BUNDLED_MODELS[name] and n not in MOVING_NAMES)


def _has_files(folder: Path, hashes: dict) -> bool:
    """Whether `folder` holds exactly the files of `hashes` (by name) with those SHA-256 digests."""
    if not folder.is_dir():
        return False
    files = checkpoint_files(folder)
    return set(files) == set(hashes) and all(sha256_file(files[k]) == v for k, v in hashes.items())


def bundled_name_with_hashes(hashes: dict) -> str | None:
    """The pinned bundled name whose folder's files have exactly these SHA-256 digests (by file name), or None."""
    return next((name for name, folder in BUNDLED_MODELS.items()
                 if name not in MOVING_NAMES and _has_files(folder, hashes)), None)


def settle_adapter_base(adapter: Path, name: str) -> str:
    """The base an adapter folder's `base_model_name_or_path` means. A moving bundled name written before the
    default moved (suite <= 0.3.0 wrote `reference`) is settled by the base digests `mansu-audit unlearn`
    recorded in the folder's unlearn.json: the bundled model with those files (e.g. `reference-v1`), or one
    InputError if none has them. Any other name, or a folder without that record, is returned unchanged."""
    record_path = Path(adapter) / UNLEARN_RECORD
    if name not in MOVING_NAMES or not record_path.is_file():
        return name
    try:
        hashes = json.loads(record_path.read_text(encoding="utf-8"))["base_model"]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return name
    if not isinstance(hashes, dict) or not hashes or _has_files(BUNDLED_MODELS[name], hashes):
        return name
    found = bundled_name_with_hashes(hashes)
    if found is None:
        raise InputError(f"adapter names the bundled base '{name}', but the base files recorded in "
                         f"{UNLEARN_RECORD} match no bundled model; pass the base explicitly", adapter)
    return found


def resolve_model_path(spec: str | Path) -> Path:
    """A bundled model's folder for its name; any other spec as a path."""
    if str(spec) in BUNDLED_MODELS:
        return BUNDLED_MODELS[str(spec)]
    return Path(spec)


def checkpoint_files(path: Path) -> dict[str, Path]:
    """Config, weights and tokenizer files of a model folder, by relative name (what certificates hash)."""
    names = {"config.json", "generation_config.json", *TOKENIZER_FILES}
    return {p.name: p for p in sorted(path.iterdir())
            if p.is_file() and (p.name in names or p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".index.json"))}


def check_folder(path: Path, allow_pickle: bool) -> dict:
    """The folder's config.json as a dict, after checking the folder holds a loadable, safe checkpoint."""
    if not path.exists():
        raise InputError("model folder not found", path)
    if not path.is_dir():
        raise InputError("model must be a folder with config.json, weights and tokenizer", path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputError("no config.json (not a Hugging Face model folder)", path)
    config = read_config(config_path)
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


def is_causal_lm(config) -> bool:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING


def check_finite(model: torch.nn.Module, where: Path | str) -> None:
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise InputError(f"weight '{name}' contains NaN or Inf", where)


def load_folder_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # tokenizers raise many types; one line is what the user needs
        raise InputError(f"cannot load tokenizer: {first_line(exc)}", path) from None


def load_folder(path: Path, plan: DevicePlan, allow_pickle: bool = False) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer) of a local folder under `plan`, after every check of the module docstring."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_folder(path, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise InputError(f"unreadable config: {first_line(exc)}", path / "config.json") from None
    if not is_causal_lm(config):
        raise InputError(f"config is a '{config.model_type}' model, not a causal language model", path / "config.json")
    stored = safetensors_header(path)
    if stored is None and not allow_pickle:
        raise InputError("no model.safetensors (or model.safetensors.index.json) in the folder", path)
    preflight(config, path, plan, stored)
    tokenizer = load_folder_tokenizer(path)
    logger = logging.getLogger("transformers.modeling_utils")
    previous = logger.level
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, use_safetensors=stored is not None,
            dtype=plan.dtype, device_map=plan.device_map, output_loading_info=True)
    except Exception as exc:
        raise InputError(f"cannot load weights: {first_line(exc)}", path) from None
    finally:
        logger.setLevel(previous)
    check_loading_info(info, model, path)
    if plan.device_map is None:
        model.to(plan.device)
    model.eval()
    check_finite(model, path)
    return model, tokenizer
