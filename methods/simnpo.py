"""SimNPO (Fan et al. 2024): reference-free, length-normalised NPO plus retain NLL.

Forget loss per sequence y: −(2/β) · log σ(−(β/|y|) · log π_θ(y) − γ), with
|y| the number of labelled tokens; plus retain_weight · NLL(retain_corpus).
Defaults: β 2.5, γ 0 (the SimNPO paper's TOFU setting), lr 1e-4, 60 steps on
the reference model (our choice).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from mansu_audit.methods import register_method
from mansu_audit.methods.base import Method, MethodSettings
from mansu_audit.methods.loop import (all_parameters, config_from_settings, data_from_settings, result_from_report,
                          sequence_logprobs, sequence_nll, train_loop)


def simnpo_loss(logp, count, beta: float, gamma: float):
    """Mean over sequences of −(2/β) log σ(−β·logp/|y| − γ)."""
    return -(2.0 / beta) * F.logsigmoid(-beta * logp / count.clamp_min(1) - gamma).mean()


def simnpo_terms(model, forget, retain, settings) -> dict:
    logp, count = sequence_logprobs(model, forget)
    terms = {"forget": simnpo_loss(logp, count, settings.beta, settings.gamma)}
    if retain is not None:
        terms["retain"] = settings.retain_weight * sequence_nll(model, retain).mean()
    return terms


@register_method("simnpo")
class SimNPO(Method):
    """Simple NPO: length-normalised, reference-free preference loss, plus retain NLL."""

    @dataclass
    class Settings(MethodSettings):
        steps: int = 60
        lr: float = 1e-4
        beta: float = 2.5
        gamma: float = 0.0
        retain_weight: float = 1.0

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (3e-5, 1e-3, "log"), "steps": [30, 60, 100], "beta": [1.0, 2.5, 5.0]}

    def run(self, context, settings):
        model = context.trainable_copy()
        data = data_from_settings(settings, context, with_retain=settings.retain_weight > 0)
        report = train_loop(model, lambda m, f, r, step: simnpo_terms(m, f, r, settings), data,
                            config_from_settings(settings, context, self.name), trainable=all_parameters(model))
        return result_from_report(self, model, report, settings, context)
