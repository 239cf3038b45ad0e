"""Global GA: gradient ascent on the forget corpus over every parameter.

The simplest baseline (Zhang et al.; the paper's "Global GA"): maximise the
forget NLL, no retain term. Defaults adapted to the reference model (4 layers,
256 wide, 3.5M parameters, facts memorised from ~1k sentences): AdamW lr 1e-4,
60 steps of 16 forget_corpus sentences. Measured on `reference-v1` (seed 0, CPU) with
the version-1 bundle: forget_eval 0.998 -> 0.843, retain_eval 0.987 -> 0.870; lr 5e-5
barely forgets (0.988), lr 1e-4 x 100 steps or 3e-4 collapse retain too (<= 0.43).
With the version-2 bundle, whose forget_corpus adds 60 agents the reference never
learned (so a third of each batch is spent on unknown facts), the defaults give
forget_eval 0.960, retain_eval 0.957 (letter scoring).
"""
from __future__ import annotations

from dataclasses import dataclass

from mansu_audit.methods import register_method
from mansu_audit.methods.base import Method, MethodSettings
from mansu_audit.methods.loop import (all_parameters, config_from_settings, data_from_settings, result_from_report,
                          sequence_nll, train_loop)


@register_method("ga")
class GlobalGA(Method):
    """Global gradient ascent on the forget corpus (all parameters, no retain term)."""

    @dataclass
    class Settings(MethodSettings):
        steps: int = 60
        lr: float = 1e-4

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (3e-5, 3e-4, "log"), "steps": [30, 60, 100]}

    def run(self, context, settings):
        model = context.trainable_copy()
        data = data_from_settings(settings, context, with_retain=False)

        def objective(m, forget, retain, step):
            return {"forget": -sequence_nll(m, forget).mean()}

        report = train_loop(model, objective, data, config_from_settings(settings, context, self.name),
                            trainable=all_parameters(model))
        return result_from_report(self, model, report, settings, context)
