"""Unlearning methods behind one protocol (see `methods.base`), with a registry.

Bundled methods register themselves with `@register_method("name")` when their
module is imported; `available_methods()` imports them all. A third party adds a
method without editing this package, either

* as an entry point in the group `mansu_audit.methods` (name -> class), or
* by pointing the CLI/API at a file: `--method path/to/file.py:ClassName`.

Names are case-insensitive and `_` equals `-` (`surgical_ga` is `surgical-ga`).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import metadata
from pathlib import Path

from mansu_audit.errors import InputError
from mansu_audit.methods.base import MethodSettings, UnlearnContext, UnlearningMethod, UnlearnResult

ENTRY_POINT_GROUP = "mansu_audit.methods"
BUILTIN_MODULES = ("ga", "surgical_ga", "graddiff", "npo", "simnpo", "rmu", "sure", "gu_simnpo", "lunar", "mansu")

_REGISTRY: dict[str, type] = {}
_loaded = False

__all__ = ["register_method", "get_method", "available_methods", "load_method_from_file",
           "MethodSettings", "UnlearnContext", "UnlearnResult", "UnlearningMethod"]


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _check_class(cls: type, where: str) -> None:
    if not isinstance(cls, type):
        raise InputError(f"{where} is not a class")
    settings = getattr(cls, "Settings", None)
    import dataclasses

    if settings is None or not dataclasses.is_dataclass(settings) or not callable(getattr(cls, "run", None)):
        raise InputError(f"{where} is not an unlearning method (needs a dataclass `Settings` and `run(context, settings)`)")


def register_method(name: str):
    """Class decorator: register an unlearning method under `name` (sets `cls.name`)."""

    def decorate(cls: type) -> type:
        _check_class(cls, f"method '{name}'")
        key = _key(name)
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"method name '{name}' is already registered by {_REGISTRY[key].__module__}")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return decorate


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(f"mansu_audit.methods.{mod}")
        except ModuleNotFoundError as exc:  # a bundled module not written yet (e.g. during development)
            if exc.name != f"mansu_audit.methods.{mod}":
                raise
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if _key(ep.name) in _REGISTRY:
            continue
        cls = ep.load()
        _check_class(cls, f"entry point '{ep.name}'")
        cls.name = _key(ep.name)
        _REGISTRY[_key(ep.name)] = cls


def available_methods() -> dict[str, type]:
    """Registered methods by name, sorted (bundled + entry points)."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def load_method_from_file(spec: str) -> type:
    """The class named in `path/to/file.py:ClassName` (imported from that file, not registered)."""
    path_text, sep, cls_name = spec.rpartition(":")
    path = Path(path_text)
    if not sep or not cls_name or path.suffix != ".py":
        raise InputError(f"method '{spec}': expected path/to/file.py:ClassName")
    if not path.is_file():
        raise InputError("method file not found", path)
    module_name = f"mansu_audit_user_method_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise InputError(f"cannot import method file: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                         path) from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise InputError(f"file defines no '{cls_name}'", path)
    _check_class(cls, f"'{spec}'")
    if not getattr(cls, "name", ""):
        cls.name = cls_name
    return cls


def get_method(name: str) -> type:
    """A method class by registry name, or from `path/to/file.py:ClassName`; InputError if unknown."""
    if ".py:" in name:
        return load_method_from_file(name)
    methods = available_methods()
    key = _key(name)
    if key not in methods:
        raise InputError(f"unknown method '{name}' (available: {', '.join(methods)})")
    return methods[key]
