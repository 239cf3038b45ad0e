"""Quantizer registry: name -> function that quantizes a model copy in place.

A quantizer is `fn(model, inputs: QuantizeInputs) -> (records, settings)`: it
replaces the weights of `quantizable_linears(model)` by their dequantized
values on the copy it is handed and returns one `QuantRecord` per weight.
Built-ins register with `@register_quantizer("name")`; third parties do the
same in their package and expose the module (or the function) under the
entry-point group `mansu_audit.quantizers`, so no file here is edited.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

import torch
from torch import nn

from mansu_audit.errors import InputError
from mansu_audit.quantizers.record import QuantizedModel, QuantRecord
from mansu_audit.quantizers.walk import linear_weight, quantizable_linears, set_linear_weight

ENTRY_POINT_GROUP = "mansu_audit.quantizers"


@dataclass(frozen=True)
class QuantizeInputs:
    """What a quantizer may need beyond the weights (only data-aware ones such as gptq use it)."""

    tokenizer: object | None = None
    calibration_texts: tuple[str, ...] | None = None


QuantizeFn = Callable[[nn.Module, QuantizeInputs], tuple[dict[str, QuantRecord], dict]]
WeightFn = Callable[[str, torch.Tensor], tuple[torch.Tensor, QuantRecord]]

_REGISTRY: dict[str, QuantizeFn] = {}
_entry_points_loaded = False


def register_quantizer(name: str) -> Callable[[QuantizeFn], QuantizeFn]:
    """Decorator: register `fn(model, inputs) -> (records, settings)` under `name`."""

    def decorate(fn: QuantizeFn) -> QuantizeFn:
        _REGISTRY[name] = fn
        return fn

    return decorate


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaded = ep.load()  # importing the module runs its @register_quantizer decorators
        if callable(loaded) and ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = loaded


def available_quantizers() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def get_quantizer(name: str) -> QuantizeFn:
    _load_entry_points()
    if name not in _REGISTRY:
        raise InputError(f"unknown quantizer '{name}' (available: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def quantize_weights(model: nn.Module, quantize_weight: WeightFn) -> dict[str, QuantRecord]:
    """Apply a per-weight quantizer to every quantizable Linear of `model`, in place."""
    records = {}
    with torch.no_grad():
        for name, module in quantizable_linears(model):
            deq, record = quantize_weight(name, linear_weight(module))
            set_linear_weight(module, deq)
            records[name] = record
    return records


def calibration_texts(calibration) -> tuple[str, ...] | None:
    """A Bundle's retain_corpus texts, or the given list of strings."""
    if calibration is None:
        return None
    if hasattr(calibration, "texts"):
        return tuple(calibration.texts("retain_corpus"))
    if isinstance(calibration, str) or not all(isinstance(t, str) for t in calibration):
        raise InputError("calibration must be a benchmark bundle or a list of texts")
    return tuple(calibration)


def quantize_model(model: nn.Module, name: str, *, tokenizer=None, calibration=None) -> QuantizedModel:
    """The model as deployed under quantizer `name` (a deep copy; the input is not modified)."""
    fn = get_quantizer(name)
    inputs = QuantizeInputs(tokenizer=tokenizer, calibration_texts=calibration_texts(calibration))
    copied = copy.deepcopy(model)
    records, settings = fn(copied, inputs)
    return QuantizedModel(model=copied, records=records, quantizer=name, settings=settings)
