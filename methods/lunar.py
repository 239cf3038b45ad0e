"""LUNAR (Shen et al. 2025): redirect forget activations by training one down_proj.

LUNAR moves the residual activations of forget inputs along an "unlearning
vector" (originally towards the model's refusal region) by training only the
down_proj of one layer, while retain activations stay put. The bundled
benchmark has no refusal data, so our choice of direction is the difference of
mean activations r = mean h(retain text) − mean h(forget text) after block
`layer` (real tokens, at θ0): loss = MSE(h_θ(x_f), h_θ0(x_f) + coef·r) +
retain_weight · MSE(h_θ(x_r), h_θ0(x_r)). Defaults on the reference model:
layer 2, coef 1, retain_weight 1, lr 1e-3, 60 steps (our choice).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mansu_audit.architecture import layer_index
from mansu_audit.methods import register_method
from mansu_audit.methods.base import Method, MethodSettings
from mansu_audit.methods.loop import (check_layers, SequenceSampler, config_from_settings, data_from_settings, hidden_after_layer,
                          masked_mse, result_from_report, select_parameters, train_loop)


@torch.no_grad()
def mean_activation(model, sampler: SequenceSampler, layer: int, batches: int, device) -> torch.Tensor:
    total, count = None, 0
    for _ in range(batches):
        b = sampler.next().to(device)
        h = hidden_after_layer(model, b, layer).float()[b.attention_mask.bool()]
        total = h.sum(0) if total is None else total + h.sum(0)
        count += h.shape[0]
    return total / count


@register_method("lunar")
class LUNAR(Method):
    """Activation redirection: train one down_proj so forget activations move along r, retain ones stay."""

    @dataclass
    class Settings(MethodSettings):
        steps: int = 60
        lr: float = 1e-3
        layer: int = 2
        coef: float = 1.0
        retain_weight: float = 1.0
        direction_batches: int = 8

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (1e-4, 3e-3, "log"), "steps": [30, 60, 100], "layer": [1, 2, 3]}

    def run(self, context, settings):
        model = context.trainable_copy()
        check_layers(model, settings.layer)
        reference = context.frozen_copy()
        data = data_from_settings(settings, context, with_retain=True)
        device = next(model.parameters()).device
        mean_r = mean_activation(reference, SequenceSampler(data.retain, settings.batch_size, data.pad_id,
                                                            context.seed + 13), settings.layer,
                                 settings.direction_batches, device)
        mean_f = mean_activation(reference, SequenceSampler(data.forget, settings.batch_size, data.pad_id,
                                                            context.seed + 17), settings.layer,
                                 settings.direction_batches, device)
        shift = settings.coef * (mean_r - mean_f)
        trainable = select_parameters(model, lambda n: n.endswith("mlp.down_proj.weight")
                                      and layer_index(n) == settings.layer)

        def objective(m, forget, retain, step):
            h_f = hidden_after_layer(m, forget, settings.layer)
            h_r = hidden_after_layer(m, retain, settings.layer)
            with torch.no_grad():
                target_f = hidden_after_layer(reference, forget, settings.layer) + shift
                h_r0 = hidden_after_layer(reference, retain, settings.layer)
            return {"forget": masked_mse(h_f, target_f, forget.attention_mask),
                    "retain": settings.retain_weight * masked_mse(h_r, h_r0, retain.attention_mask)}

        report = train_loop(model, objective, data, config_from_settings(settings, context, self.name),
                            trainable=trainable)
        return result_from_report(self, model, report, settings, context,
                                  {"shift_norm": float(shift.norm()), "trainable": sorted(trainable)})
