"""RMU (Li et al. 2024, the WMDP recipe): steer forget activations to a random direction.

At the residual stream after block `layer`, forget-token activations are pushed
towards c·u (u a seeded random unit vector with entries from U[0,1), c the
steering coefficient) and retain activations held to the frozen model's:
loss = MSE(h_θ(x_f), c·u) + α · MSE(h_θ(x_r), h_θ0(x_r)); only down_proj of
blocks `first_update_layer`..`layer` train.

WMDP recipe (Zephyr-7B, 32 layers): layer 7, update layers 5–7, c 6.5, α 1200,
lr 5e-5, 150 batches. Adapted to the 4-layer reference model (our choice):
layer 2, update layers 1–2; c is given relative to the mean residual norm at
that layer on retain text (`steering_scale`, default 3.0 — the WMDP value 6.5
is a few times Zephyr's layer-7 activation norms, and an absolute coefficient
would not transfer across model widths); α 100, lr 1e-3, 60 steps (MSE on a
256-wide stream is much larger relative to its gradient than on 4096 units).
The absolute coefficient used is recorded in the diagnostics.
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
def mean_token_norm(model, sampler: SequenceSampler, layer: int, batches: int, device) -> float:
    norms = []
    for _ in range(batches):
        b = sampler.next().to(device)
        h = hidden_after_layer(model, b, layer)
        norms.append(h.float()[b.attention_mask.bool()].norm(dim=-1))
    return float(torch.cat(norms).mean())


@register_method("rmu")
class RMU(Method):
    """Representation misdirection: forget activations to a scaled random vector, retain ones kept."""

    @dataclass
    class Settings(MethodSettings):
        steps: int = 60
        lr: float = 1e-3
        layer: int = 2
        first_update_layer: int = 1
        steering_scale: float = 3.0
        alpha: float = 100.0

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (1e-4, 3e-3, "log"), "steps": [30, 60, 100], "steering_scale": [1.0, 3.0, 10.0]}

    def run(self, context, settings):
        model = context.trainable_copy()
        check_layers(model, settings.first_update_layer, settings.layer)
        reference = context.frozen_copy()
        data = data_from_settings(settings, context, with_retain=True)
        device = next(model.parameters()).device
        norm = mean_token_norm(reference, SequenceSampler(data.retain, settings.batch_size, data.pad_id,
                                                           context.seed + 7), settings.layer, 4, device)
        gen = torch.Generator().manual_seed(context.seed)
        u = torch.rand(model.config.hidden_size, generator=gen)
        control = (u / u.norm() * settings.steering_scale * norm).to(device)
        def updated(name: str) -> bool:
            index = layer_index(name)  # 0 is a layer, not "no layer"
            return (name.endswith("mlp.down_proj.weight") and index is not None
                    and settings.first_update_layer <= index <= settings.layer)

        trainable = select_parameters(model, updated)

        def objective(m, forget, retain, step):
            h_f = hidden_after_layer(m, forget, settings.layer)
            h_r = hidden_after_layer(m, retain, settings.layer)
            with torch.no_grad():
                h_r0 = hidden_after_layer(reference, retain, settings.layer)
            return {"forget": masked_mse(h_f, control.expand_as(h_f), forget.attention_mask),
                    "retain": settings.alpha * masked_mse(h_r, h_r0, retain.attention_mask)}

        report = train_loop(model, objective, data, config_from_settings(settings, context, self.name),
                            trainable=trainable)
        return result_from_report(self, model, report, settings, context,
                                  {"steering_coefficient": settings.steering_scale * norm,
                                   "retain_activation_norm": norm, "trainable": sorted(trainable)})
