"""NPO (Zhang et al. 2024): negative preference optimisation plus retain NLL.

Forget loss per sequence y: −(2/β) · log σ(−β · (log π_θ(y) − log π_ref(y))),
with log π the summed log-probability of the labelled tokens and π_ref the
frozen base model; plus retain_weight · NLL(retain_corpus). β = 0.1 (SPEC §9).
NPO's gradient is GA's reweighted by σ(β·ratio), so it moves more slowly at
first: defaults lr 1e-4, 60 steps on the reference model (our choice).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from mansu_audit.methods import register_method
from mansu_audit.methods.base import Method, MethodSettings
from mansu_audit.methods.loop import (all_parameters, config_from_settings, data_from_settings, result_from_report,
                          sequence_logprobs, sequence_nll, train_loop)


def npo_loss(logp, ref_logp, beta: float):
    """Mean over sequences of −(2/β) log σ(−β (logp − ref_logp))."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


@register_method("npo")
class NPO(Method):
    """Negative preference optimisation against the frozen base, plus retain NLL."""

    @dataclass
    class Settings(MethodSettings):
        steps: int = 60
        lr: float = 1e-4
        beta: float = 0.1
        retain_weight: float = 1.0

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (3e-5, 1e-3, "log"), "steps": [30, 60, 100], "beta": [0.05, 0.1, 0.5]}

    def run(self, context, settings):
        model = context.trainable_copy()
        reference = context.frozen_copy()
        data = data_from_settings(settings, context, with_retain=settings.retain_weight > 0)

        def objective(m, forget, retain, step):
            logp, _ = sequence_logprobs(m, forget)
            ref_logp, _ = sequence_logprobs(reference, forget)
            terms = {"forget": npo_loss(logp, ref_logp.detach(), settings.beta)}
            if retain is not None:
                terms["retain"] = settings.retain_weight * sequence_nll(m, retain).mean()
            return terms

        report = train_loop(model, objective, data, config_from_settings(settings, context, self.name),
                            trainable=all_parameters(model))
        return result_from_report(self, model, report, settings, context)
