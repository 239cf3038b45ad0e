"""SURE (Zhang et al., ICLR 2025): saliency-masked unlearning with a large learning rate.

Zhang et al. show small-LR unlearning is undone by 4-bit quantization and
propose updating only *salient* modules with a larger LR: the module-level
saliency map keeps weight matrices whose forget-loss gradient norm is large.
Our version: rank every weight matrix (2-D parameter) by ‖∇ NLL(forget)‖ at θ0
over `saliency_batches` forget batches, train the top `saliency_fraction` of
them with GradDiff (GA + retain NLL, their GA_GDR), lr 5e-4 (10× GA's), 40
steps on the reference model (our choice of fraction/LR for its size).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mansu_audit.methods import register_method
from mansu_audit.methods.base import Method, MethodSettings
from mansu_audit.methods.loop import (SequenceSampler, config_from_settings, data_from_settings, result_from_report,
                          sequence_nll, train_loop)


def module_saliency(model, sampler: SequenceSampler, batches: int, device) -> dict[str, float]:
    """‖∇_W mean-NLL(forget)‖ per 2-D parameter, gradients accumulated over `batches` batches."""
    params = {n: p for n, p in model.named_parameters() if p.dim() == 2}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    for _ in range(batches):
        sequence_nll(model, sampler.next().to(device)).mean().backward()
    out = {n: float(p.grad.norm()) for n, p in params.items()}
    for p in params.values():
        p.grad = None
    return out


@register_method("sure")
class SURE(Method):
    """Saliency-selected weight matrices, GA + retain NLL with a large learning rate."""

    @dataclass
    class Settings(MethodSettings):
        steps: int = 40
        lr: float = 5e-4
        saliency_fraction: float = 0.5
        saliency_batches: int = 4
        retain_weight: float = 1.0

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (1e-4, 2e-3, "log"), "steps": [20, 40, 80], "saliency_fraction": [0.25, 0.5, 0.75]}

    def run(self, context, settings):
        model = context.trainable_copy()
        data = data_from_settings(settings, context, with_retain=True)
        device = next(model.parameters()).device
        saliency = module_saliency(model, SequenceSampler(data.forget, settings.batch_size, data.pad_id,
                                                          context.seed + 11), settings.saliency_batches, device)
        ranked = sorted(saliency, key=lambda n: -saliency[n])
        keep = max(1, round(settings.saliency_fraction * len(ranked)))
        trainable = {n: None for n in ranked[:keep]}

        def objective(m, forget, retain, step):
            return {"forget": -sequence_nll(m, forget).mean(),
                    "retain": settings.retain_weight * sequence_nll(m, retain).mean()}

        report = train_loop(model, objective, data, config_from_settings(settings, context, self.name),
                            trainable=trainable)
        return result_from_report(self, model, report, settings, context,
                                  {"salient_modules": ranked[:keep],
                                   "saliency": {n: round(v, 6) for n, v in saliency.items()}})
