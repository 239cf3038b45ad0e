"""Output folders that are never half-written and never silently mixed with an older run.

Contract
- `check_output_dir(out, overwrite)` runs before any model loads: `out` must not be
  (or lie under) a regular file; an existing non-empty `out` is refused unless
  `overwrite`, and even then only if it holds a previous mansu-audit output (a
  `certificate.json`, `matrix.json` or `evaluation.json`) and is not the working directory or an
  ancestor of it; the nearest existing ancestor must accept a new folder (probed by
  creating and removing one, since permission bits say nothing for root). It creates
  nothing that outlives the call.
- `staged_dir(out, overwrite)` (a context manager) yields a fresh temporary folder
  beside `out` (`.<name>.<random>.tmp`) to build the whole output in; when the block
  ends without an exception it is renamed to `out` (an existing `out` is first
  renamed aside and removed after the swap); on an exception it is removed and
  `out` is left as it was. A reader sees the old folder, briefly no folder, or the
  new one; never a mix. `publish_dir(out, files, overwrite)` is the same for a
  mapping of file names to bytes. Errors (disk full, permissions) remove the
  temporary folder and are one-line `InputError`s.
- `check_output_file(path, overwrite)`: the same checks for a single output file
  (e.g. `report --out FILE.html`): an existing file needs `overwrite`, a folder is
  refused; the file itself is then written atomically (`io.atomic_write_bytes`).
"""
from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from mansu_audit.errors import InputError

OUTPUT_MARKERS = ("certificate.json", "matrix.json", "evaluation.json")


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return Path(".")


def check_output_dir(out: str | Path, overwrite: bool = False, option: str = "--out") -> Path:
    """Refuse an output folder that cannot be written or would silently replace other files; see module doc."""
    out = Path(out)
    _check_parents(out, option)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(f"{option} must be a folder (it is a file)", out)
        if any(out.iterdir()):
            if not overwrite:
                raise InputError(f"{option} folder is not empty (pass --overwrite to replace it)", out)
            if not any((out / m).is_file() for m in OUTPUT_MARKERS):
                raise InputError(f"{option} folder holds no earlier mansu-audit output; refusing to replace it "
                                 f"even with --overwrite", out)
            here = Path.cwd().resolve()
            if out.resolve() == here or out.resolve() in here.parents:
                raise InputError(f"{option} is the working folder or contains it; refusing to replace it", out)
    _probe_parent(out, option)
    return out


def check_output_file(path: str | Path, overwrite: bool = False, option: str = "--out") -> Path:
    """Refuse an output file that cannot be written or would silently replace a file; see module doc."""
    path = Path(path)
    _check_parents(path, option)
    if path.is_dir():
        raise InputError(f"{option} must be a file (it is a folder)", path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise InputError(f"{option} file exists (pass --overwrite to replace it)", path)
    _probe_parent(path, option)
    return path


def _check_parents(out: Path, option: str) -> None:
    for parent in reversed(out.absolute().parents):
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{option}: '{parent}' is a file, not a folder", out)


def _probe_parent(out: Path, option: str) -> None:
    """The nearest existing ancestor must accept a new entry: probed by creating and removing a folder."""
    ancestor = _nearest_existing(out.absolute().parent)
    if not ancestor.is_dir():
        raise InputError(f"{option}: '{ancestor}' is not a folder", out)
    probe = ancestor / f".mansu-write-probe.{secrets.token_hex(6)}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise InputError(f"{option}: cannot create folders in '{ancestor}' ({exc.strerror})", out) from None


def check_cache_dir(path: str | Path | None, option: str = "--cache-dir") -> None:
    """A cache folder must be a folder (or creatable as one): refuse a file or a path under a file."""
    if path is None:
        return
    path = Path(path)
    for p in (path, *path.absolute().parents):
        if p.exists() and not p.is_dir():
            raise InputError(f"{option}: '{p}' is a file, not a folder", path)


def publish_dir(out: str | Path, files: Mapping[str, bytes], overwrite: bool = False) -> Path:
    """Write `files` (relative name -> bytes) as the whole content of `out`, atomically; see module doc."""
    with staged_dir(out, overwrite) as stage:
        try:
            for name, data in files.items():
                target = stage / name
                if stage.resolve() not in target.resolve().parents:
                    raise ValueError(f"output file name '{name}' leaves the folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise InputError(f"cannot write the output folder: {exc.strerror or exc}", out) from None
    return Path(out)


@contextmanager
def staged_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; publish it as `out` if the block succeeds (module doc)."""
    out = Path(out)
    check_output_dir(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
        stage.mkdir()  # mode 0777 less the umask, as any folder the user creates
    except OSError as exc:
        raise InputError(f"cannot write the output folder: {exc.strerror or exc}", out) from None
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _swap(stage, out, overwrite)


def _swap(stage: Path, out: Path, overwrite: bool) -> None:
    """Rename `stage` to `out`, moving an earlier `out` aside first and removing it after."""
    old = out.parent / f".{out.name}.{secrets.token_hex(6)}.old"
    try:
        check_output_dir(out, overwrite)  # nothing appeared in `out` while the output was built
        if out.exists():
            os.rename(out, old)
        os.rename(stage, out)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if old.exists() and not out.exists():
            os.rename(old, out)  # put the earlier output back
        if isinstance(exc, OSError):
            raise InputError(f"cannot write the output folder: {exc.strerror or exc}", out) from None
        raise
    shutil.rmtree(old, ignore_errors=True)
