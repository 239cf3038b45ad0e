"""One exception for bad user input: the CLI prints its single line and exits 2."""
from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input (file, model, policy...). `str()` is the one line shown to the user."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.message = message
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(f"{where}{message}")


def require_extra(module: str, extra: str, purpose: str):
    """Import an optional dependency, or raise the one-line InputError naming the extra.

    `require_extra("gguf", "gguf", "loading a .gguf file")` returns the module, or says
    `loading a .gguf file needs the optional dependency 'gguf': pip install 'mansu-audit[gguf]'`.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"{purpose} needs the optional dependency '{module.split('.')[0]}': "
                         f"pip install 'mansu-audit[{extra}]'") from None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
