"""File helpers shared by every stage: atomic writes, JSON/JSONL readers, hashes.

Contract:

* `atomic_write_bytes(path, data)` / `atomic_write(path, text)`: write a temp file in
  the same folder, fsync, `os.replace`: a reader sees the old file or the new one,
  never half of it; a failed write leaves no temp file. The temp file is created
  with mode 0666, so the process umask applies as for any ordinary file.
* `UMASK`: the process umask, read ONCE at import without changing it (Linux:
  `/proc/self/status`; elsewhere one `os.umask` read-and-restore at import, before
  any worker thread of ours exists). Nothing here toggles the umask later, so no
  other thread ever sees a 0 umask. `ordinary_permissions(folder)` gives a
  `tempfile.mkdtemp` folder (0700) and its files the modes a plain mkdir/open
  would (0777/0666 less `UMASK`).
* `read_utf8(path)` / `read_json(path)`: text / any JSON value, or one `InputError` line
  (not UTF-8: the byte; bad JSON: the line).
* `read_json_object(path, what)`: a JSON object, or one `InputError` line naming
  the file (missing, not UTF-8/JSON, not an object).
* `read_jsonl_objects(path)`: (line number, object) per non-blank line; bad lines
  are one `InputError` naming file and line.
* `write_json(path, data)`: strict JSON (`json_safe`: non-finite floats -> null),
  indented, sorted keys, written atomically.
* `json_copy(value)`: the value as JSON would give it back (tuples -> lists, keys
  -> strings), i.e. what a later read of a stored entry returns.
* `sha256_file(path)`: hex SHA-256 of a file, read in 1 MiB blocks.
* `progress_logger(tag)`: the stages' `[tag] message` progress lines on stderr.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import sys
from pathlib import Path

from mansu_audit.errors import InputError, first_line


def _read_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS, Windows): read once, at import, and restore at once
    os.umask(mask)
    return mask


UMASK = _read_umask()


def ordinary_permissions(folder: Path) -> None:
    """Give a `mkdtemp` folder and the files directly in it the modes of a plain mkdir/open."""
    folder = Path(folder)
    os.chmod(folder, 0o777 & ~UMASK)
    for p in folder.iterdir():
        if p.is_file() and not p.is_symlink():
            os.chmod(p, 0o666 & ~UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and os.replace: readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj):
    """Plain JSON data with non-finite floats as None (certificates and sidecars are strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_copy(value, default=None):
    """`value` as a JSON round trip returns it (a deep copy with JSON's types); `default` as for json.dumps."""
    return json.loads(json.dumps(value, default=default))


def write_json(path: str | Path, data) -> None:
    """Strict JSON (non-finite floats as null), indent 1, sorted keys, newline-terminated; atomic."""
    text = json.dumps(json_safe(data), indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(path, text)


def read_utf8(path: str | Path) -> str:
    """A file's text; non-UTF-8 bytes or an unreadable file are one `InputError` line."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", path) from None
    except OSError as exc:
        raise InputError(f"unreadable: {first_line(exc)}", path) from None


def read_json(path: str | Path):
    """Any JSON value from a UTF-8 file; bad JSON is one `InputError` line naming file and line."""
    text = read_utf8(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"bad JSON: {exc.msg}", path, exc.lineno) from None
    except RecursionError:
        raise InputError("bad JSON: nested too deeply", path) from None


def read_json_object(path: str | Path, what: str) -> dict:
    """A JSON object from `path`; a missing file, bad JSON or a non-object is one `InputError` line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not a JSON {what}: {exc}", path) from None
    except RecursionError:
        raise InputError(f"not a JSON {what}: nested too deeply", path) from None
    if not isinstance(data, dict):
        raise InputError(f"{what} is not a JSON object", path)
    return data


def read_jsonl_objects(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; bad JSON or a non-object is one InputError line."""
    rows = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"not UTF-8 text (byte {exc.start} of the line)", path, lineno) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"bad JSON: {exc.msg} (column {exc.colno})", path, lineno) from None
            except RecursionError:
                raise InputError("bad JSON: nested too deeply", path, lineno) from None
            if not isinstance(obj, dict):
                raise InputError("expected a JSON object", path, lineno)
            rows.append((lineno, obj))
    return rows


def progress_logger(tag: str):
    """`log(progress, message)`: one `[tag] message` line on stderr when `progress` is true."""
    def log(progress: bool, message: str) -> None:
        if progress:
            print(f"[{tag}] {message}", file=sys.stderr, flush=True)
    return log


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


__all__ = ["UMASK", "atomic_write", "atomic_write_bytes", "json_copy", "json_safe", "ordinary_permissions",
           "progress_logger", "read_json", "read_json_object", "read_jsonl_objects", "read_utf8", "sha256_file", "write_json"]
