"""SAF: sharpness-aware forgetting through 4-bit rounding (after DurableUn, arXiv 2605.02196).

A quantization-aware baseline: train so that the forgetting holds for the
*quantized* weights and for every weight within a radius of them.

Forward pass: every quantizable Linear (`quantizers.quantizable_linears`, what
the certified quantizers touch) computes with W_eff = w + (q(w) − w).detach(),
q the registered quantizer's own per-weight function (`quantizers.weight_dequantizer`:
`weight_quantizer(name)` without its record; default `nf4`, the one NF4
implementation that is certified), so the loss is
the quantized model's loss and its gradient passes straight through the
rounding: ∂L/∂w = ∂L/∂W evaluated at W = q(w) (straight-through estimator).
Implemented as a `torch.nn.utils.parametrize` parametrization installed by the
context manager `ste_fake_quant` around the shared loop (`methods.loop.train_loop`)
and removed after it, leaving the dense trained weights w (the candidate is
the dense model; the certificate quantizes it).

SAM step (Foret et al. 2021), when rho > 0: the objective first computes the
gradient g of the loss at w, sets ε = rho · g / ‖g‖ (global norm over the
quantizable weights; other parameters are not perturbed), and returns the loss
at q(w + ε) — the loop then steps with that gradient (∂L/∂W at q(w + ε)) from
the unperturbed w. ε lives in the parametrization, so the parameters never
move off w and the loop needs no extra hook. Each step costs two forward and
backward passes. rho 0 is plain STE training.

Objective: GradDiff's (−NLL(forget) + retain_weight · NLL(retain_corpus)),
every parameter trained. Settings: quantizer (any weight-wise registered
quantizer; default nf4), rho (SAM radius in weight space, default 0.05, our
choice: about one NF4 bin width summed over a layer's block of weights is far
larger, so the ascent probes a neighbourhood, not a new grid point),
retain_weight (1.0), and the shared ones (lr 1e-4, 60 steps). Measured on
`reference-v1` (seed 0, CPU, synthhazard v2): forget_eval 0.998 -> 0.981 (nf4
0.974), retain_eval 0.987 -> 0.970 (nf4 0.974), 61 s on a shared 2-core CPU;
lr 5e-5 barely forgets (0.993).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from mansu_audit.methods import register_method
from mansu_audit.methods.base import Method, MethodSettings
from mansu_audit.methods.loop import (all_parameters, config_from_settings, data_from_settings, result_from_report,
                                      sequence_nll, train_loop)
from mansu_audit.quantizers import quantizable_linears, weight_dequantizer

Dequantize = Callable[[torch.Tensor], torch.Tensor]


class SteFakeQuant(nn.Module):
    """Parametrization W -> (W + ε) + (q(W + ε) − (W + ε)).detach() for one weight (ε: SAM offset, or none).

    `transpose` is set for GPT-2 Conv1D weights, stored (in, out): q always sees (out, in).
    """

    def __init__(self, dequantize: Dequantize, transpose: bool):
        super().__init__()
        self.dequantize, self.transpose = dequantize, transpose
        self.eps: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        x = weight if self.eps is None else weight + self.eps
        with torch.no_grad():
            dense = x.detach().t() if self.transpose else x.detach()
            q = self.dequantize(dense)
            q = (q.t() if self.transpose else q).to(x.dtype)
        return x + (q - x).detach()


@contextmanager
def ste_fake_quant(model: nn.Module, dequantize: Dequantize) -> Iterator[dict[str, SteFakeQuant]]:
    """Inside: every quantizable Linear of `model` computes with STE fake-quantized weights (module docstring).

    Yields {module name: its parametrization}; while inside, the trained parameter
    of module X is `X.parametrizations.weight.original`. On exit the
    parametrizations are removed and each module's weight is that dense parameter.
    """
    installed: dict[str, SteFakeQuant] = {}
    modules = dict(quantizable_linears(model))
    try:
        for name, module in modules.items():
            installed[name] = SteFakeQuant(dequantize, transpose=not isinstance(module, nn.Linear))
            parametrize.register_parametrization(module, "weight", installed[name], unsafe=True)
        yield installed
    finally:
        for name in installed:
            parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=False)


def sam_objective(terms_at: Callable, parts: dict[str, SteFakeQuant], originals: dict[str, nn.Parameter],
                  rho: float) -> Callable:
    """The loop objective: `terms_at(m, forget, retain)` at q(w), or at q(w + ε) after a SAM ascent when rho > 0."""

    def objective(m, forget, retain, step):
        for part in parts.values():
            part.eps = None
        terms = terms_at(m, forget, retain)
        if rho <= 0:
            return terms
        names = list(parts)
        grads = torch.autograd.grad(sum(terms.values()), [originals[n] for n in names], allow_unused=True)
        grads = [torch.zeros_like(originals[n]) if g is None else g for n, g in zip(names, grads)]
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)).clamp_min(1e-12)
        for n, g in zip(names, grads):
            parts[n].eps = (rho * g / norm).to(g.dtype).detach()
        return terms_at(m, forget, retain)

    return objective


@register_method("saf")
class SAF(Method):
    """Sharpness-aware forgetting: GradDiff through STE fake-quantized (nf4) weights with a SAM ascent step."""

    @dataclass
    class Settings(MethodSettings):
        steps: int = 60
        lr: float = 1e-4
        retain_weight: float = 1.0
        rho: float = 0.05
        quantizer: str = "nf4"

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (3e-5, 1e-3, "log"), "steps": [30, 60, 100], "rho": [0.01, 0.05, 0.1]}

    def run(self, context, settings):
        dequantize = weight_dequantizer(settings.quantizer)  # InputError for unknown / not weight-wise
        model = context.trainable_copy()
        data = data_from_settings(settings, context, with_retain=settings.retain_weight > 0)

        def terms_at(m, forget, retain):
            terms = {"forget": -sequence_nll(m, forget).mean()}
            if retain is not None:
                terms["retain"] = settings.retain_weight * sequence_nll(m, retain).mean()
            return terms

        with ste_fake_quant(model, dequantize) as parts:
            modules = dict(quantizable_linears(model))
            originals = {n: modules[n].parametrizations.weight.original for n in parts}
            objective = sam_objective(terms_at, parts, originals, settings.rho)
            report = train_loop(model, objective, data, config_from_settings(settings, context, self.name),
                                trainable=all_parameters(model))
        diagnostics = {"saf": {"quantizer": settings.quantizer, "rho": settings.rho,
                               "fake_quantized_weights": len(parts)}}
        return result_from_report(self, model, report, settings, context, diagnostics)
