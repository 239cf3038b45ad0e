"""GU+SimNPO: SimNPO whose forget gradient is projected orthogonal to retain gradients.

Each step the retain batch is split into `retain_subspace_dim` chunks; their
NLL gradients span the retain subspace R (orthonormalised by QR in float64
over all trainable parameters). The update direction is
P⊥_R(∇ forget) + Σ_i ∇ retain_i, so the forget term cannot move the model
along directions that change the retain loss to first order (the geometric
disentanglement idea; our choice of a per-step, k-chunk subspace).
Defaults: SimNPO's (β 2.5, γ 0, lr 1e-4, 60 steps), subspace dim 4.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mansu_audit.methods import register_method
from mansu_audit.methods.base import Method
from mansu_audit.methods.loop import (Batch, all_parameters, config_from_settings, data_from_settings, result_from_report,
                          sequence_nll, train_loop)
from mansu_audit.methods.simnpo import SimNPO, simnpo_terms


def project_out(forget: dict[str, torch.Tensor], spanning: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`forget` minus its component in span(spanning), computed on the concatenated vectors in float64."""
    names = list(forget)
    flat = lambda g: torch.cat([g[n].reshape(-1).double() for n in names])  # noqa: E731
    basis = torch.stack([flat(g) for g in spanning], dim=1)
    q, r = torch.linalg.qr(basis)
    keep = r.diagonal().abs() > 1e-12 * max(1.0, float(r.diagonal().abs().max()))
    q = q[:, keep]
    f = flat(forget)
    f = f - q @ (q.T @ f)
    out, offset = {}, 0
    for n in names:
        k = forget[n].numel()
        out[n] = f[offset:offset + k].reshape(forget[n].shape).to(forget[n].dtype)
        offset += k
    return out


def chunks(batch: Batch, k: int) -> list[Batch]:
    size = max(1, -(-batch.input_ids.shape[0] // k))
    return [Batch(batch.input_ids[i:i + size], batch.attention_mask[i:i + size], batch.labels[i:i + size],
                  batch.kinds[i:i + size]) for i in range(0, batch.input_ids.shape[0], size)]


@register_method("gu-simnpo")
class GUSimNPO(Method):
    """SimNPO with the forget gradient projected off the retain-gradient subspace."""

    @dataclass
    class Settings(SimNPO.Settings):
        """SimNPO's settings (same defaults) plus the retain-subspace dimension."""

        retain_subspace_dim: int = 4

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (3e-5, 1e-3, "log"), "steps": [30, 60, 100], "retain_subspace_dim": [2, 4, 8]}

    def run(self, context, settings):
        model = context.trainable_copy()
        data = data_from_settings(settings, context, with_retain=True)

        def objective(m, forget, retain, step):
            terms = {"forget": simnpo_terms(m, forget, None, settings)["forget"]}
            parts = chunks(retain, settings.retain_subspace_dim)
            for i, part in enumerate(parts):
                terms[f"retain_{i}"] = settings.retain_weight * sequence_nll(m, part).mean() / len(parts)
            return terms

        def transform(step, grads):
            retain = [g for term, g in grads.items() if term.startswith("retain_")]
            combined = project_out(grads["forget"], retain)
            for g in retain:
                for n in combined:
                    combined[n] = combined[n] + g[n]
            return combined

        report = train_loop(model, objective, data, config_from_settings(settings, context, self.name),
                            trainable=all_parameters(model), gradient_transform=transform)
        return result_from_report(self, model, report, settings, context)
