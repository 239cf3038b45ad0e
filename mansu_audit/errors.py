"""One exception for bad user input: the CLI prints its single line and exits 2."""
from __future__ import annotations

import logging
from contextlib import contextmanager
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


# Loggers of optional libraries that warn on import about things a CPU run cannot use: torchao (imported by
# transformers in every from_pretrained once installed) logs two CUDA extensions it cannot load, and torch two
# Enum deprecations it triggers. Raised to ERROR while a command (`cli.main`) or an optional import runs.
IMPORT_NOISE_LOGGERS = ("torchao", "torch.utils._pytree")


@contextmanager
def quiet_import_noise():
    """Silence `IMPORT_NOISE_LOGGERS` below ERROR inside the block (levels restored after). This hides every
    warning those loggers emit meanwhile, not only the import-time ones; our own messages are unaffected."""
    loggers = [logging.getLogger(name) for name in IMPORT_NOISE_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
