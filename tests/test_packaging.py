"""The wheel is the product: pyproject.toml ships every package and every bundled file."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed():
    listed = set(_setuptools()["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mansu_audit").rglob("__init__.py")}
    assert found - listed == set(), f"missing from [tool.setuptools] packages: {sorted(found - listed)}"


def test_bundled_folders_are_mapped_and_listed():
    cfg = _setuptools()
    mapped = cfg["package-dir"]
    assert mapped["mansu_audit.methods"] == "methods"
    assert mapped["mansu_audit._bundled"] == "benchmarks_data"
    assert mapped["mansu_audit._templates"] == "reports/templates"
    bundled = {p.name for p in (ROOT / "benchmarks_data").iterdir() if p.is_dir() and not p.name.startswith("__")}
    listed = {name.split(".", 2)[2] for name in cfg["packages"] if name.startswith("mansu_audit._bundled.")}
    assert bundled == listed
    for folder in bundled:  # every file a bundled folder holds is matched by its package-data globs
        globs = cfg["package-data"][f"mansu_audit._bundled.{folder}"]
        files = [p for p in (ROOT / "benchmarks_data" / folder).iterdir() if p.is_file()]
        unmatched = [p.name for p in files if not any(p.match(g) for g in globs)]
        assert unmatched == [], f"benchmarks_data/{folder}: not shipped: {unmatched}"
