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
