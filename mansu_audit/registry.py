"""One `Registry` for everything looked up by name: unlearning methods and quantizers.

Contract (modelled on lm-eval's `api/registry.py`):

* `register(name)` is a decorator (or `register(name, obj)` a call) storing an object
  under a name. A name already bound to a *different* object raises `ValueError`;
  re-registering the same object is a no-op.
* `register(name, lazy="pkg.module:Attr")` (or `lazy="pkg.module"`) stores a
  placeholder: nothing is imported until the first `get(name)`. Materialising
  `"pkg.module:Attr"` imports the module and takes the attribute; `"pkg.module"`
  imports the module, whose own `@register(name)` decorator then replaces the
  placeholder (a placeholder may be replaced only by an object defined in the
  module it names).
* `alias(other, name)`: `other` resolves to whatever `name` resolves to (e.g.
  open-unlearning's trainer `GradAscent` -> our `ga`); aliases are not listed.
* Third-party objects come from the entry-point group `group` (name -> object or
  module), read once, lazily, on the first lookup, and stored as placeholders like
  built-ins. An entry point whose name is already taken raises `InputError`.
* `get(name)` of an unknown name raises `InputError` naming the closest known name
  (`difflib.get_close_matches`) and the list of known names.
* `key` normalises names (methods: case-insensitive, `_` = `-`; quantizers: exact,
  because their names are recorded in certificates verbatim).

The two registries (`METHODS`, `QUANTIZERS`) live here, so the core reaches the
bundled methods only by the *string* `"mansu_audit.methods"` (imported on first
lookup; that package registers its methods lazily, one module each) and never
imports a method's code before it is asked for.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import sys
import threading
import types
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

from mansu_audit.errors import InputError, first_line


class _Placeholder:
    """A not-yet-imported registry entry: a "module[:attr]" string or an entry point."""

    __slots__ = ("target", "origin")

    def __init__(self, target: str | metadata.EntryPoint, origin: str):
        self.target, self.origin = target, origin

    @property
    def module(self) -> str:
        if isinstance(self.target, str):
            return self.target.partition(":")[0]
        return self.target.value.partition(":")[0].strip()

    def load(self) -> Any:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            loaded = importlib.import_module(module)
            return getattr(loaded, attr) if attr else loaded
        return self.target.load()

    def __repr__(self) -> str:
        return f"<lazy {self.origin}: {self.target if isinstance(self.target, str) else self.target.value}>"


def exact(name: str) -> str:
    return name.strip()


def loose(name: str) -> str:
    """Case-insensitive, `_` equals `-`: `Surgical_GA` -> `surgical-ga`."""
    return name.strip().lower().replace("_", "-")


class Registry:
    """Named objects of one kind, with lazy built-ins and entry-point plugins (see module doc)."""

    def __init__(self, kind: str, *, group: str, builtins: Iterable[str] = (), key: Callable[[str], str] = exact,
                 check: Callable[[Any, str], None] | None = None,
                 on_bind: Callable[[Any, str], Any] | None = None):
        self.kind = kind
        self.group = group
        self._builtins = tuple(builtins)
        self._key = key
        self._check = check
        self._on_bind = on_bind
        self._entries: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}
        self._alias_spelling: dict[str, str] = {}
        self._plugins: dict[str, str] = {}  # key -> entry-point value, for entries read from entry points
        self._ready = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ registration

    def register(self, name: str, obj: Any = None, *, lazy: str | None = None):
        """Decorator `@registry.register(name)`, direct `register(name, obj)`, or `register(name, lazy=...)`."""
        if lazy is not None:
            self._store(self._key(name), _Placeholder(lazy, f"{self.kind} '{name}'"))
            return None
        if obj is not None:
            return self._store_object(name, obj)
        return lambda target: self._store_object(name, target)

    def alias(self, other: str, name: str) -> None:
        """Let `other` resolve to the entry `name` (which must exist by the time `other` is looked up)."""
        key, target = self._key(other), self._key(name)
        if key == target:
            return  # already the same name once normalised (open-unlearning's `NPO` is our `npo`)
        with self._lock:
            if key in self._entries or self._aliases.get(key, target) != target:
                raise ValueError(f"{self.kind} alias '{other}' collides with an existing name")
            self._aliases[key] = target
            self._alias_spelling[key] = other

    def _store_object(self, name: str, obj: Any) -> Any:
        key = self._key(name)
        if self._check is not None:
            self._check(obj, f"{self.kind} '{name}'")
        with self._lock:
            self._store(key, obj)
        return self._on_bind(obj, key) if self._on_bind is not None else obj

    def _store(self, key: str, entry: Any) -> None:
        with self._lock:
            current = self._entries.get(key)
            if key in self._aliases:
                raise ValueError(f"{self.kind} name '{key}' is already an alias of '{self._aliases[key]}'")
            if current is None or current is entry:
                self._entries[key] = entry
                return
            if isinstance(current, _Placeholder) and not isinstance(entry, _Placeholder) \
                    and getattr(entry, "__module__", None) == current.module:
                self._entries[key] = entry  # the module a placeholder names registers the real object
                return
            if isinstance(current, _Placeholder) and isinstance(entry, _Placeholder) and \
                    current.target == entry.target:
                return
            where = current.module if isinstance(current, _Placeholder) else getattr(current, "__module__", "?")
            raise ValueError(f"{self.kind} name '{key}' is already registered by {where}")

    # ------------------------------------------------------------------ plugins

    def _prepare(self) -> None:
        """Import the built-in registrations and read the entry points, once."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            self._ready = True
            try:
                for module in self._builtins:
                    importlib.import_module(module)
            except BaseException:
                self._ready = False
                raise
            for ep in metadata.entry_points(group=self.group):
                key = self._key(ep.name)
                if self._plugins.get(key) == ep.value:
                    continue  # read before (or the same distribution seen twice on sys.path)
                if key in self._entries or key in self._aliases:
                    self._ready = False
                    raise InputError(f"entry point '{ep.name}' = {ep.value} (group {self.group}) collides with the "
                                     f"{self.kind} '{key}' that is already registered; rename the plugin's entry")
                self._entries[key] = _Placeholder(ep, f"entry point '{ep.name}'")
                self._plugins[key] = ep.value

    def reset_plugins(self) -> None:
        """Forget that entry points were read (tests that install a fake entry point call this)."""
        with self._lock:
            self._ready = False

    # ------------------------------------------------------------------ lookup

    def _resolve_key(self, name: str) -> str | None:
        key = self._key(name)
        key = self._aliases.get(key, key)
        return key if key in self._entries else None

    def unknown(self, name: str) -> InputError:
        """The InputError for an unknown name: the closest known name, then all of them."""
        known = self.names()
        close = difflib.get_close_matches(self._key(name), known + sorted(self._aliases), n=1, cutoff=0.5)
        hint = ""
        if close:
            target = self._aliases.get(close[0])
            shown = self._alias_spelling.get(close[0], close[0])
            hint = f"did you mean '{shown}'{f' (= {target!r})' if target else ''}? "
        return InputError(f"unknown {self.kind} '{name}' ({hint}available: {', '.join(known)})")

    def __contains__(self, name: str) -> bool:
        self._prepare()
        return self._resolve_key(name) is not None

    def get(self, name: str) -> Any:
        """The object registered as `name` (or an alias of it), imported on first use; InputError if unknown."""
        self._prepare()
        key = self._resolve_key(name)
        if key is None:
            raise self.unknown(name)
        with self._lock:
            entry = self._entries[key]
            if isinstance(entry, _Placeholder):
                loaded = entry.load()
                current = self._entries[key]
                if isinstance(current, _Placeholder):  # not replaced by the module's own decorator
                    if isinstance(loaded, types.ModuleType):
                        raise InputError(f"{entry.origin}: importing {entry.module} did not register '{key}'")
                    if self._check is not None:
                        self._check(loaded, entry.origin)
                    self._entries[key] = current = (self._on_bind(loaded, key) if self._on_bind else loaded)
                entry = current
        return entry

    def names(self) -> list[str]:
        """Registered names, sorted (built-ins and plugins; aliases left out)."""
        self._prepare()
        return sorted(self._entries)

    def aliases(self) -> dict[str, str]:
        """alias (as spelled when registered) -> name."""
        self._prepare()
        return {self._alias_spelling[k]: v for k, v in sorted(self._aliases.items())}

    def items(self) -> dict[str, Any]:
        """name -> object for every registered name (imports every lazy entry)."""
        return {name: self.get(name) for name in self.names()}

    def source_file(self, name: str) -> Path | None:
        """The source file defining the object registered as `name` (None if it has none)."""
        return source_file(self.get(name))


def source_file(obj: Any) -> Path | None:
    """The .py file that defines `obj` (a class, function or instance of a class)."""
    target = obj if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj) else type(obj)
    try:
        path = inspect.getsourcefile(target)
    except TypeError:
        return None
    return Path(path).resolve() if path else None


def code_files(obj: Any, package: str = "mansu_audit.methods") -> list[Path]:
    """The file defining `obj` plus every module of `package` it imports, transitively (sorted).

    What a method's code hash covers: a method is its own source file and the shared
    method code it uses (base.py, loop.py, mansu_geometry.py...), not its siblings, so
    editing one method retrains that method only. Imports are read with `ast` (nothing
    is executed); the package's `__init__` (the registration table) is left out.
    """
    start = source_file(obj)
    if start is None:
        return []
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name != package and name.startswith(package + "."):
                    try:
                        spec = importlib.util.find_spec(name)
                    except (ImportError, ValueError):
                        spec = None
                    if spec is not None and spec.origin and spec.submodule_search_locations is None:
                        todo.append(Path(spec.origin).resolve())
    return sorted(seen)


# ---------------------------------------------------------------------- methods


def check_method(cls: Any, where: str) -> None:
    """InputError unless `cls` is a class with a dataclass `Settings` and a `run(context, settings)`."""
    if not isinstance(cls, type):
        raise InputError(f"{where} is not a class")
    settings = getattr(cls, "Settings", None)
    if settings is None or not dataclasses.is_dataclass(settings) or not callable(getattr(cls, "run", None)):
        raise InputError(f"{where} is not an unlearning method (needs a dataclass `Settings` and `run(context, settings)`)")


def _name_method(cls: type, key: str) -> type:
    cls.name = key
    return cls


def _check_quantizer(fn: Any, where: str) -> None:
    if not callable(fn):
        raise InputError(f"{where} is not callable (a quantizer is fn(model, inputs) -> (records, settings))")


METHODS = Registry("method", group="mansu_audit.methods", builtins=("mansu_audit.methods",), key=loose,
                   check=check_method, on_bind=_name_method)
QUANTIZERS = Registry("quantizer", group="mansu_audit.quantizers", builtins=("mansu_audit.quantizers",),
                      check=_check_quantizer)


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
        raise InputError(f"cannot import method file: {type(exc).__name__}: {first_line(exc)}", path) from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise InputError(f"file defines no '{cls_name}'", path)
    check_method(cls, f"'{spec}'")
    if not getattr(cls, "name", ""):
        cls.name = cls_name
    return cls


def get_method(name: str) -> type:
    """A method class by registry name or alias, or from `path/to/file.py:ClassName`; InputError if unknown."""
    if ".py:" in name:
        return load_method_from_file(name)
    return METHODS.get(name)


def available_methods() -> dict[str, type]:
    """Registered methods by name, sorted (bundled + entry points; aliases left out)."""
    return METHODS.items()


def get_quantizer(name: str):
    """The quantize function registered as `name`; InputError (closest name suggested) if unknown."""
    return QUANTIZERS.get(name)


def available_quantizers() -> list[str]:
    return QUANTIZERS.names()
