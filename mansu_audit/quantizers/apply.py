"""Applying a quantizer to a model: the quantizer contract and `quantize_model`.

A quantizer is `fn(model, inputs: QuantizeInputs) -> (records, settings)`: it
replaces the weights of `quantizable_linears(model)` by their dequantized
values on the copy it is handed and returns one `QuantRecord` per weight.
Quantizers live in the one registry `mansu_audit.registry.QUANTIZERS`:
built-ins register with `@register_quantizer("name")`; third parties do the
same in their package and expose the module (or the function) under the
entry-point group `mansu_audit.quantizers`, so no file here is edited.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from mansu_audit.errors import InputError
from mansu_audit.quantizers.record import QuantizedModel, QuantRecord
from mansu_audit.quantizers.walk import linear_weight, quantizable_linears, set_linear_weight
from mansu_audit.registry import QUANTIZERS, get_quantizer

ENTRY_POINT_GROUP = QUANTIZERS.group


@dataclass(frozen=True)
class QuantizeInputs:
    """What a quantizer may need beyond the weights (only data-aware ones such as gptq use it)."""

    tokenizer: object | None = None
    calibration_texts: tuple[str, ...] | None = None


QuantizeFn = Callable[[nn.Module, QuantizeInputs], tuple[dict[str, QuantRecord], dict]]
WeightFn = Callable[[str, torch.Tensor], tuple[torch.Tensor, QuantRecord]]


def register_quantizer(name: str) -> Callable[[QuantizeFn], QuantizeFn]:
    """Decorator: register `fn(model, inputs) -> (records, settings)` under `name` (collisions raise)."""
    return QUANTIZERS.register(name)


@dataclass(frozen=True)
class WeightwiseQuantizer:
    """A data-free quantizer that treats each weight on its own.

    `quantize_weight(name, weight) -> (dequantized, QuantRecord)` is the per-weight
    function (MANSU's post-conditions call it on single matrices, so they measure
    exactly the quantizer that gets certified); calling the object quantizes every
    `quantizable_linears` weight of a model in place and returns `(records, settings)`.
    `dequantize(weight) -> dequantized` (optional) is the same quantizer without the
    record, for training loops that fake-quantize every step (SAF); it must equal
    `quantize_weight(...)[0]` bit for bit (`weight_dequantizer` falls back to that).
    """

    quantize_weight: WeightFn
    settings: dict
    dequantize: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, model: nn.Module, inputs: QuantizeInputs) -> tuple[dict[str, QuantRecord], dict]:
        return quantize_weights(model, self.quantize_weight), dict(self.settings)


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
    """A Bundle's retain_corpus texts (None when it has none: only calibrated quantizers need them), or the
    given list of strings."""
    if calibration is None:
        return None
    if hasattr(calibration, "texts"):
        return tuple(calibration.texts("retain_corpus")) if "retain_corpus" in calibration.corpus else None
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
