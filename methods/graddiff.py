"""GradDiff: gradient ascent on forget plus gradient descent on retain (all parameters).

Loss = −NLL(forget) + retain_weight · NLL(retain_corpus). Defaults for the
reference model: lr 5e-5, 60 steps, batches of 16 + 16, retain_weight 1.
"""
from __future__ import annotations

from dataclasses import dataclass

from mansu_audit.methods import register_method
from mansu_audit.methods.base import Method, MethodSettings
from mansu_audit.methods.loop import (all_parameters, config_from_settings, data_from_settings, result_from_report,
                          sequence_nll, train_loop)


@register_method("graddiff")
class GradDiff(Method):
    """Gradient difference: ascend forget NLL, descend retain NLL."""

    @dataclass
    class Settings(MethodSettings):
        steps: int = 60
        lr: float = 5e-5
        retain_weight: float = 1.0

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (2e-5, 5e-4, "log"), "steps": [30, 60, 100], "retain_weight": [0.5, 1.0, 2.0]}

    def run(self, context, settings):
        model = context.trainable_copy()
        data = data_from_settings(settings, context, with_retain=True)

        def objective(m, forget, retain, step):
            return {"forget": -sequence_nll(m, forget).mean(),
                    "retain": settings.retain_weight * sequence_nll(m, retain).mean()}

        report = train_loop(model, objective, data, config_from_settings(settings, context, self.name),
                            trainable=all_parameters(model))
        return result_from_report(self, model, report, settings, context)
