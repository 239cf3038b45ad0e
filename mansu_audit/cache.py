"""Content-addressed result cache for long stages (SPEC §11).

An entry's key is the SHA-256 of everything that decides its value: the model's
content (weight/tokenizer/config file hashes, or the state dict itself for a
model built in memory), the data items, the code that computes it and the
settings — never a run or model name, so a changed input can never reuse a
stale entry, and an interrupted run finds every finished entry again.

Entries are JSON files written atomically (temp file + os.replace), so a crash
never leaves a half-written entry behind. Location: `$MANSU_CACHE_DIR`, else
`.mansu_cache/` in the working directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import torch

CACHE_ENV = "MANSU_CACHE_DIR"
DEFAULT_CACHE_DIR = ".mansu_cache"


def canonical_json(obj) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces, no NaN) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_json(obj) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def state_dict_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes) in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """Content hash of a tokenizer's vocabulary and special tokens (for in-memory models)."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    specials = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    return sha256_json({"class": type(tokenizer).__name__, "vocab": sorted(vocab.items()), "special": specials,
                        "bos": getattr(tokenizer, "add_bos_token", None)})


def files_sha256(paths: Iterable[Path]) -> str:
    """One hash over the source files that compute a stage (the 'code version')."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and os.replace: readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes the file private; results are ordinary files
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from `path`; a missing file, bad JSON or a non-object is one `InputError` line."""
    from mansu_audit.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not a JSON {what}: {exc}", path) from None
    if not isinstance(data, dict):
        raise InputError(f"{what} is not a JSON object", path)
    return data


class ResultCache:
    """JSON entries under `root`, addressed by `key(...)`. Unreadable entries count as misses."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(stage: str, inputs: Mapping) -> str:
        """Key of a stage from its content inputs (hashes, settings, code version)."""
        return sha256_json({"stage": stage, "inputs": dict(inputs)})

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        return entry.get("value")

    def put(self, key: str, value: dict) -> None:
        atomic_write_bytes(self._path(key), json.dumps({"key": key, "value": value}).encode())

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None


class NoCache(ResultCache):
    """A cache that stores nothing (`--no-cache`)."""

    def __init__(self):
        super().__init__(Path(os.devnull))

    def get(self, key: str) -> dict | None:
        return None

    def put(self, key: str, value: dict) -> None:
        return None


def mcq_items_sha256(items) -> str:
    """Content hash of MCQ items, including their extra fields (the `corrupt` prompt attribution uses)."""
    return sha256_json([[it.id, it.question, list(it.choices), it.answer, it.subject, it.extra] for it in items])
