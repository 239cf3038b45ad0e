"""Content-addressed result cache for long stages (SPEC §11).

An entry's key is the SHA-256 of everything that decides its value: the model's
content (weight/tokenizer/config file hashes, or the state dict itself for a
model built in memory), the data items, the code that computes it and the
settings — never a run or model name, so a changed input can never reuse a
stale entry, and an interrupted run finds every finished entry again.

Entries are JSON files written atomically (temp file + os.replace), so a crash
never leaves a half-written entry behind. Location: `$MANSU_CACHE_DIR`, else
`$XDG_CACHE_HOME/mansu-audit` (default `~/.cache/mansu-audit`): never the caller's
working directory unless asked. The library's own default is no cache at all
(`certify(cache=None)`); the CLI opts in.

An entry cannot lie: it is `{"format", "key", "stage", "inputs", "value_sha256",
"value"}`; `get` recomputes the key from the stored stage and inputs and the
SHA-256 of the value (canonical JSON), and runs the caller's `validate(value)`
(shapes, lengths, ids). Anything that does not match, does not parse (bad JSON,
non-UTF-8 bytes) or fails validation is a miss: one warning line on stderr, the
caller recomputes and `put` replaces the entry. The digests are unkeyed: they
catch corruption and careless edits; someone who can write the cache can also
recompute them, which is what `verify --recompute` (re-running every evaluation,
cache unused) is for.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from mansu_audit.io import atomic_write_bytes, json_copy

CACHE_ENV = "MANSU_CACHE_DIR"
CACHE_SUBDIR = "mansu-audit"


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
    """`$MANSU_CACHE_DIR`, else `$XDG_CACHE_HOME/mansu-audit`, else `~/.cache/mansu-audit`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / CACHE_SUBDIR


ENTRY_FORMAT = 2


def value_sha256(value) -> str:
    """SHA-256 of a cache value's canonical JSON (non-finite floats allowed, as the entries store them)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResultCache:
    """JSON entries under `root`, addressed by `key(stage, inputs)`; bad entries are misses (see module doc)."""

    def __init__(self, root: str | Path | None = None, *, warn: Callable[[str], None] | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self._warn = warn

    @staticmethod
    def key(stage: str, inputs: Mapping) -> str:
        """Key of a stage from its content inputs (hashes, settings, code version)."""
        return sha256_json({"stage": stage, "inputs": dict(inputs)})

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def warn(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)
        else:
            print(f"mansu-audit: warning: {message}", file=sys.stderr, flush=True)

    def _reject(self, path: Path, why: str) -> None:
        self.warn(f"cache entry {path} ignored ({why}); recomputing")

    def get(self, key: str, validate: Callable[[dict], object] | None = None) -> dict | None:
        """The stored value, or None (a miss) if absent or not trustworthy.

        `validate(value)` may raise anything (KeyError, ValueError...) to reject a
        malformed value; the rejection is a miss with one warning line.
        """
        path = self._path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            self._reject(path, f"unreadable: {type(exc).__name__}")
            return None
        if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
            self._reject(path, "not a current cache entry")
            return None
        value = entry.get("value")
        try:
            key_ok = entry.get("key") == key and self.key(entry["stage"], entry["inputs"]) == key
        except (KeyError, TypeError, ValueError):
            key_ok = False
        if not key_ok:
            self._reject(path, "key does not match its recorded inputs")
            return None
        if not isinstance(value, dict) or entry.get("value_sha256") != value_sha256(value):
            self._reject(path, "value does not match its recorded SHA-256")
            return None
        if validate is not None:
            try:
                validate(value)
            except Exception as exc:  # any failure of a caller's check means: do not use it
                self._reject(path, f"malformed value: {type(exc).__name__}: {str(exc)[:80]}")
                return None
        return value

    def put(self, key: str, value: dict, *, stage: str, inputs: Mapping) -> None:
        """Store `value` under `key`, which must be `key(stage, inputs)`."""
        if self.key(stage, inputs) != key:
            raise ValueError("cache key does not match its stage and inputs")
        value = json_copy(value)  # what a later get() parses, so the digest matches
        entry = {"format": ENTRY_FORMAT, "key": key, "stage": stage, "inputs": json_copy(dict(inputs)),
                 "value_sha256": value_sha256(value), "value": value}
        atomic_write_bytes(self._path(key), json.dumps(entry).encode())

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None


class NoCache(ResultCache):
    """A cache that stores nothing (`--no-cache`)."""

    def __init__(self):
        super().__init__(Path(os.devnull))

    def get(self, key: str, validate=None) -> dict | None:
        return None

    def put(self, key: str, value: dict, **_) -> None:
        return None


def mcq_items_sha256(items) -> str:
    """Content hash of MCQ items, including their extra fields (the `corrupt` prompt attribution uses)."""
    return sha256_json([[it.id, it.question, list(it.choices), it.answer, it.subject, it.extra] for it in items])


class FileLock:
    """An exclusive lock shared by processes on one machine or many (a shared folder, e.g. NFS).

    Contract: `with FileLock(path): ...` runs the block while no other holder of
    `path` runs its block. The lock is a file created with O_CREAT|O_EXCL (atomic on
    local file systems and on NFSv3+), holding `{"host", "pid", "token"}`. While held,
    a daemon thread refreshes its mtime every `heartbeat` seconds. A waiter breaks a
    lock (i) at once when its holder ran on this host and that pid is gone, or
    (ii) when its mtime is older than `stale_after` seconds, measured against the
    mtime of a probe file the waiter writes in the same folder (the file server's
    clock, so clock skew between machines does not matter). Breaking renames the
    lock away and checks the token it judged stale is the one it moved; a fresh
    lock moved by mistake is put back. `timeout` (None: wait forever) raises
    TimeoutError.
    """

    def __init__(self, path: str | Path, *, stale_after: float = 120.0, heartbeat: float = 10.0,
                 poll: float = 0.2, timeout: float | None = None):
        self.path = Path(path)
        self.stale_after, self.heartbeat, self.poll, self.timeout = stale_after, heartbeat, poll, timeout
        self.token = None
        self._stop = None

    def _read(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or garbage: judged by age alone

    def _server_now(self) -> float:
        import socket

        probe = self.path.parent / f".probe-{socket.gethostname()}-{os.getpid()}"
        probe.write_bytes(b"")
        try:
            return probe.stat().st_mtime
        finally:
            probe.unlink(missing_ok=True)

    def _is_stale(self, holder: dict) -> bool:
        import socket

        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        try:
            age = self._server_now() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        return age > self.stale_after

    def _break(self, holder: dict) -> None:
        moved = self.path.with_name(f"{self.path.name}.stale-{secrets.token_hex(6)}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        try:
            now = json.loads(moved.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            now = {}
        if holder.get("token") is not None and now.get("token") != holder.get("token"):
            try:  # we moved a lock taken after our check: give it back
                os.link(moved, self.path)
            except OSError:
                pass
        moved.unlink(missing_ok=True)

    def acquire(self) -> None:
        import socket
        import threading
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        payload = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token}).encode()
        start = time.monotonic()
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self._read()
                if holder is not None and self._is_stale(holder):
                    self._break(holder)
                    continue
                if self.timeout is not None and time.monotonic() - start > self.timeout:
                    raise TimeoutError(f"lock {self.path} still held after {self.timeout:g} s") from None
                time.sleep(self.poll)
                continue
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            break
        self.token = token
        self._stop = threading.Event()
        threading.Thread(target=self._beat, args=(self._stop,), daemon=True).start()

    def _beat(self, stop) -> None:
        while not stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = self._stop = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def cache_lock(cache: ResultCache, name: str, **kwargs):
    """A `FileLock` named `name` under the cache's `locks/` folder (no lock for `NoCache`)."""
    import contextlib

    if isinstance(cache, NoCache):
        return contextlib.nullcontext()
    return FileLock(cache.root / "locks" / f"{name}.lock", **kwargs)
