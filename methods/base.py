"""The unlearning-method protocol: settings, inputs and outputs (SPEC §8–9).

A method is a class with a registry `name`, a `Settings` dataclass (every
hyperparameter with its default, documented in the method's module) and
`run(context, settings) -> UnlearnResult`. It receives the base model θ0 in an
`UnlearnContext`, must leave that model untouched (train `context.trainable_copy()`),
and returns the unlearned model with its step count, wall time and diagnostics.

Settings are plain dataclasses whose fields are `int`, `float`, `bool` or `str`;
a string field may list its allowed values in `field(metadata={"choices": ...})`.
`parse_overrides` turns CLI `--set key=value` pairs into a checked settings object,
so a third-party method gets `--set` validation for free.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from mansu_audit.data import Bundle
from mansu_audit.errors import InputError

FORGET_SOURCES = ("corpus", "attr", "both")


def choice(default: str, choices: tuple[str, ...], help: str = "") -> Any:
    """A string setting restricted to `choices` (checked by `parse_overrides` and `check_settings`)."""
    return field(default=default, metadata={"choices": choices, "help": help})


@dataclass
class MethodSettings:
    """Hyperparameters every loop-based method shares (methods subclass this and change defaults).

    steps: optimiser steps; lr: AdamW learning rate; batch_size: forget (and retain)
    sequences per step; forget_source: what the forget loss trains on — `corpus`
    (forget_corpus sentences, loss on every token), `attr` (forget_attr MCQ prompts,
    loss on the answer letter) or `both` (the union); weight_decay: AdamW decoupled
    decay (0: decay would pull *all* trainable weights, not only the forgotten ones);
    max_grad_norm: clip (0 disables); max_length: token cap per training sequence.
    """

    steps: int = 60
    lr: float = 1e-4
    batch_size: int = 16
    forget_source: str = choice("corpus", FORGET_SOURCES)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 128


@dataclass
class UnlearnContext:
    """What a method gets: θ0 (never modified), its tokenizer, the benchmark, seed and device."""

    model: torch.nn.Module
    tokenizer: Any
    bundle: Bundle
    seed: int = 0
    device: str | torch.device = "cpu"
    progress: bool = True

    def trainable_copy(self) -> torch.nn.Module:
        """A deep copy of θ0 on `device` with every parameter requiring grad (the model to train)."""
        model = copy.deepcopy(self.model).to(self.device)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def log(self, message: str) -> None:
        """One progress line on stderr (when `progress`), for long phases that have no step counter."""
        if self.progress:
            import sys

            print(f"  {message}", file=sys.stderr, flush=True)

    def frozen_copy(self) -> torch.nn.Module:
        """A deep copy of θ0 on `device`, eval mode, no grads: the reference for KL/NPO terms."""
        model = copy.deepcopy(self.model).to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model


@dataclass
class UnlearnResult:
    """The unlearned model θu plus the record written to `unlearn.json`.

    diagnostics: JSON-serialisable method-specific facts (loss curve summary,
    trainable-parameter counts, MANSU's post-conditions...).
    """

    model: torch.nn.Module
    steps: int
    seconds: float
    diagnostics: dict = field(default_factory=dict)
    method: str = ""
    settings: dict = field(default_factory=dict)
    seed: int = 0


@runtime_checkable
class UnlearningMethod(Protocol):
    """What the registry stores: a class with these attributes, instantiated without arguments."""

    name: ClassVar[str]
    Settings: ClassVar[type]

    def run(self, context: UnlearnContext, settings: Any) -> UnlearnResult: ...


class Method:
    """Convenience base for methods: a `name` (set by the registry) and default settings."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = MethodSettings
    # setting -> list of values or (low, high[, "log"]) range, searched by `mansu-audit tune`
    # (mansu_audit.tune); empty: the method cannot be tuned
    search_space: ClassVar[dict] = {}

    def run(self, context: UnlearnContext, settings: Any) -> UnlearnResult:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- settings parsing

_TYPES = {"int": int, "float": float, "bool": bool, "str": str, int: int, float: float, bool: bool, str: str}


def _field_type(f: dataclasses.Field) -> type:
    typ = _TYPES.get(f.type) if not isinstance(f.type, type) else _TYPES.get(f.type)
    if typ is None:
        raise TypeError(f"setting '{f.name}' must be int, float, bool or str, not {f.type!r}")
    return typ


def setting_fields(settings_cls: type) -> dict[str, tuple[type, Any, tuple[str, ...] | None]]:
    """name -> (type, default, choices) for a settings dataclass."""
    out = {}
    for f in dataclasses.fields(settings_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = (_field_type(f), default, f.metadata.get("choices"))
    return out


def _parse_value(key: str, text: str, typ: type, choices: tuple[str, ...] | None) -> Any:
    text = text.strip()
    if typ is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise InputError(f"--set {key}={text}: expected a boolean (true/false)")
    if typ is int:
        try:
            return int(text)
        except ValueError:
            raise InputError(f"--set {key}={text}: expected an integer") from None
    if typ is float:
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"--set {key}={text}: expected a number") from None
        if not math.isfinite(value):
            raise InputError(f"--set {key}={text}: expected a finite number")
        return value
    if choices is not None and text not in choices:
        raise InputError(f"--set {key}={text}: expected one of {', '.join(choices)}")
    return text


def check_settings(settings: Any) -> Any:
    """Reject negative/zero counts and rates and values outside `choices`; returns `settings`."""
    for name, (typ, _, choices) in setting_fields(type(settings)).items():
        value = getattr(settings, name)
        if choices is not None and value not in choices:
            raise InputError(f"setting {name}={value!r}: expected one of {', '.join(choices)}")
        if typ in (int, float) and not isinstance(value, bool) and value < 0:
            raise InputError(f"setting {name}={value}: must not be negative")
    for positive in ("steps", "batch_size", "max_length", "lr"):
        if hasattr(settings, positive) and getattr(settings, positive) <= 0:
            raise InputError(f"setting {positive}={getattr(settings, positive)}: must be positive")
    return settings


def parse_overrides(settings_cls: type, overrides: list[str] | dict[str, Any] | None) -> Any:
    """Settings from `key=value` strings (CLI) or a dict (Python), type-checked against the dataclass."""
    fields_ = setting_fields(settings_cls)
    values: dict[str, Any] = {}
    items: list[tuple[str, Any]]
    if overrides is None:
        items = []
    elif isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            if "=" not in text:
                raise InputError(f"--set {text}: expected key=value")
            key, value = text.split("=", 1)
            items.append((key.strip(), value))
    for key, value in items:
        if key not in fields_:
            raise InputError(f"unknown setting '{key}' for this method (known: {', '.join(fields_)})")
        typ, _, choices = fields_[key]
        if isinstance(value, str):
            values[key] = _parse_value(key, value, typ, choices)
        else:
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
                raise InputError(f"setting {key}={value!r}: expected {typ.__name__}")
            values[key] = value
    return check_settings(settings_cls(**values))


def settings_dict(settings: Any) -> dict:
    return dataclasses.asdict(settings)
