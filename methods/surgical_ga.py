"""Surgical GA: gradient ascent restricted to the down_proj of the middle layers.

The paper's Surgical GA trains down_proj of layers 10–20 of 32 (the middle
third) at lr 5e-5 for 150 steps. On the 4-layer reference model the middle is
layers 1–2 (`first_layer`, `last_layer`, inclusive). Fewer trainable weights
need a larger step to forget: defaults lr 2e-4, 60 steps (our choice).
"""
from __future__ import annotations

from dataclasses import dataclass

from mansu_audit.architecture import layer_index
from mansu_audit.methods import register_method
from mansu_audit.methods.base import Method, MethodSettings
from mansu_audit.methods.loop import (check_layers, config_from_settings, data_from_settings, result_from_report,
                          select_parameters, sequence_nll, train_loop)


def down_proj_of_layers(model, first: int, last: int) -> dict[str, None]:
    """down_proj weights (GPT-2: mlp.c_proj) of decoder layers first..last inclusive."""
    def chosen(name: str) -> bool:
        i = layer_index(name)
        return i is not None and first <= i <= last and name.endswith(("mlp.down_proj.weight", "mlp.c_proj.weight"))

    return select_parameters(model, chosen)


@register_method("surgical-ga")
class SurgicalGA(Method):
    """Gradient ascent on the forget corpus, training only down_proj of the middle layers."""

    @dataclass
    class Settings(MethodSettings):
        steps: int = 60
        lr: float = 2e-4
        first_layer: int = 1
        last_layer: int = 2

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (5e-5, 1e-3, "log"), "steps": [30, 60, 100]}

    def run(self, context, settings):
        model = context.trainable_copy()
        check_layers(model, settings.first_layer, settings.last_layer)
        data = data_from_settings(settings, context, with_retain=False)
        trainable = down_proj_of_layers(model, settings.first_layer, settings.last_layer)

        def objective(m, forget, retain, step):
            return {"forget": -sequence_nll(m, forget).mean()}

        report = train_loop(model, objective, data, config_from_settings(settings, context, self.name),
                            trainable=trainable)
        return result_from_report(self, model, report, settings, context, {"trainable": sorted(trainable)})
