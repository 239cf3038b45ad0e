"""Where the bundled files live, in a source checkout and in an installed wheel.

The repository keeps `benchmarks_data/` (the synthhazard benchmark and the bundled
models) and `reports/templates/` at its top, as the project's layout asks; the wheel
installs them inside the package as `mansu_audit/_bundled/` and
`mansu_audit/_templates/` (setuptools `package-dir` mappings in pyproject.toml).
Each function returns the installed folder when it exists, else the checkout's.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _first_existing(*candidates: Path) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[-1]


def bundled_data_dir() -> Path:
    """`benchmarks_data/` (checkout) or `mansu_audit/_bundled/` (wheel)."""
    return _first_existing(PACKAGE_DIR / "_bundled", PACKAGE_DIR.parent / "benchmarks_data")


def templates_dir() -> Path:
    """`reports/templates/` (checkout) or `mansu_audit/_templates/` (wheel)."""
    return _first_existing(PACKAGE_DIR / "_templates", PACKAGE_DIR.parent / "reports" / "templates")


def methods_dir() -> Path:
    """The folder holding the bundled methods' source files (`mansu_audit.methods`)."""
    import mansu_audit.methods

    return Path(mansu_audit.methods.__file__).resolve().parent
