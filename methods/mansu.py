"""MANSU: circuit-restricted, null-space-projected, magnitude-floored unlearning (SPEC §8).

1. Circuit C: EAP-IG on `forget_attr` (neuron level), the top neurons covering
   `circuit_frac` of the MLP parameters; C's parameters are the neurons' rows of
   gate/up_proj and columns of down_proj (`circuit=random`: a random circuit of the
   same size, the paper's ablation).
2. Retain geometry: the diagonal empirical Fisher F on `retain_corpus` for C, and the
   retain activations' second moments (inputs of the layer's MLP for gate/up rows,
   the neurons' down_proj inputs for down columns; see `mansu_geometry`). After each
   AdamW step the *step* is projected onto the null space of the retain activations
   (eigh in float64, eigenvalues ≤ `null_rtol`·λ_max) intersected with the Fisher
   mask (coordinates whose F_ii exceeds the `fisher_quantile` of F over C never move).
   Block-absmax elements of θ0 never move either (the floor's guarantee needs them).
3. Objective: −NLL on forget (gradient ascent) + `retain_weight`·KL(p_θ0 ‖ p_θ) on
   retain_corpus; AdamW on θ_C only (the shared loop, `methods.loop`).
4. Magnitude floor on θ − θ0 within C: Δ_i ← sign(Δ_i)·max(|Δ_i|, δ_i),
   `floor=boundary` (default; exact distance to the next NF4 decision boundary in Δ_i's
   direction ×(1+`floor_margin`)) or `bin` (the local NF4 bin width, θ0's block absmax)
   or `none` (ablation). Post-condition: ≥ 95% of updated coordinates change NF4 code
   (checked with the real quantizer on θu, so a moved absmax would show); the same
   fractions measured for int8 and GPTQ. The Fisher bound ½ Σ F_ii Δ_i² is reported
   before and after the floor (flooring can raise it).
5. `projection=global` (ablation): every MLP weight of every layer is trainable and the
   step is projected onto the null space of the full layer's activations (AlphaEdit-style,
   "unrestricted"); the Fisher mask is applied after that projection (project-then-mask,
   since exact per-row intersections of whole matrices would not fit in memory).
   `projection=none`: mask only.

Defaults (`MansuSettings`) were tuned on the bundled 4-layer, 256-wide version-1 reference model
(`reference-v1`; seed 0, measured 2026-11-28; forget/retain accuracy of θ0 0.998/0.987). On version 3
(the default `reference`) `mansu-audit tune` chose lr 5.24e-3, 120 steps, circuit_frac 0.005
(benchmarks_data/reference-v3/tuned/mansu.json; what it does there: reports/experiments/two-bases):

* `forget_source=attr` (GA on the forget_attr MCQ answer letters), `lr=1e-3`, 60 steps,
  `circuit_frac=0.01`: D_F 0.088, D_R 0.070, NF4 PTQ gap −0.017, post-condition 98.9%.
* GA on `forget_corpus` sentences through the projected circuit did not move the forget
  NLL at all (corpus or both, lr 1e-4…3e-3, circuit 1–3%: D_F ≤ 0.002): the circuit is
  found on MCQ prompts and the null-space projection removes the directions that
  sentence-form forget text shares with retain text.
* `circuit_frac=0.03` forgets far more (D_F 0.56) but is not selective (D_R 0.57): the
  retain geometry comes from retain *sentences*, so it cannot protect MCQ answering on
  the retain domain, which the letter-GA also degrades. No setting tried was selective.
* `lr=1e-4` is too weak to forget (D_F 0) even with the floor; `null_rtol=1e-3` (a
  smaller null space) forgets nothing either; `retain_weight=30`: D_F 0.083, D_R 0.061.
* Ablations at the defaults: `floor=none` D_F 0.100, D_R 0.083, NF4 gap −0.010, only
  64.5% of updated coordinates change NF4 code; `circuit=random` D_F 0.000;
  `projection=global` collapses the model (forget 0.27, retain 0.23).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from mansu_audit.circuits import adapter_for, attribute, random_circuit, select_circuit
from mansu_audit.errors import InputError
from mansu_audit.methods import register_method
from mansu_audit.methods.base import FORGET_SOURCES, Method, MethodSettings, UnlearnContext, UnlearnResult, choice, settings_dict
from mansu_audit.methods.loop import (LoopConfig, UnlearnData, collate, kl_to_reference, sequence_nll, train_loop)
from mansu_audit.methods import mansu_geometry as geo
from mansu_audit.quantizers import quantize_model

CIRCUITS = ("eap-ig", "random")
PROJECTIONS = ("circuit", "global", "none")


@dataclass
class MansuSettings(MethodSettings):
    """MANSU hyperparameters (SPEC §8).

    retain_weight: λ_r of the KL(p_θ0 ‖ p_θ) retain term. circuit: `eap-ig` or `random`
    (ablation, same size). circuit_frac: fraction of MLP parameters in C.
    attribution_steps: IG steps of EAP-IG. projection: `circuit`, `global` (ablation) or
    `none`. null_rtol: eigenvalues ≤ null_rtol·λ_max of the retain moment count as null
    space. fisher_quantile: coordinates with F_ii above this quantile (within C) are
    frozen (1.0: no mask). fisher_sequences / activation_sequences: retain sequences used
    for F and for the activation moments (0 = all). floor: `boundary`, `bin` or `none`.
    floor_margin: boundary mode's (1 + margin). blocksize: NF4 block size of the floor.
    postcondition_gptq: also quantize θ0 and θu with GPTQ to measure its code changes.
    """

    steps: int = 60
    lr: float = 1e-3
    batch_size: int = 16
    forget_source: str = choice("attr", FORGET_SOURCES)
    retain_weight: float = 1.0
    circuit: str = choice("eap-ig", CIRCUITS)
    circuit_frac: float = 0.01
    attribution_steps: int = 5
    projection: str = choice("circuit", PROJECTIONS)
    null_rtol: float = 1e-2
    fisher_quantile: float = 0.5
    fisher_sequences: int = 256
    activation_sequences: int = 0
    floor: str = choice("boundary", geo.FLOOR_MODES)
    floor_margin: float = 0.05
    blocksize: int = 64
    postcondition_gptq: bool = True


def _evenly_spaced(n: int, k: int) -> list[int]:
    """k deterministic indices spread over range(n) (all when k is 0 or ≥ n)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return [int(i * n / k) for i in range(k)]


def _gated_layers(model: torch.nn.Module):
    adapter = adapter_for(model)
    if any(l.gate_proj is None or not isinstance(l.down_proj, torch.nn.Linear) for l in adapter.layers):
        raise InputError(f"MANSU needs a gated MLP with nn.Linear projections (Llama-style); "
                         f"'{adapter.architecture}' has none")
    return adapter


def find_circuit(context: UnlearnContext, settings: MansuSettings):
    """EAP-IG circuit on forget_attr (θ0), or a same-size random circuit (ablation)."""

    attribution = attribute(context.model, context.tokenizer, context.bundle.split("forget_attr"),
                            steps=settings.attribution_steps, method="eap-ig")
    circuit = select_circuit(attribution, circuit_frac=settings.circuit_frac)
    if settings.circuit == "random":
        circuit = random_circuit(context.model, same_size_as=circuit, seed=context.seed)
    return circuit


def _as_dict(batch) -> dict:
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels}


@dataclass
class _SlicePlan:
    slice: geo.WeightSlice
    param_name: str
    fisher: torch.Tensor
    free: torch.Tensor
    projector: object  # RowProjector | GlobalProjector
    subspace: geo.RetainSubspace


def plan_geometry(model: torch.nn.Module, adapter, neurons: dict[int, torch.Tensor], data: UnlearnData,
                  settings: MansuSettings) -> tuple[list[_SlicePlan], dict]:
    """Fisher, activation moments, masks and projectors for every slice of C."""
    names = {id(p): n for n, p in model.named_parameters()}
    slices = geo.circuit_slices(adapter.layers, neurons, global_=settings.projection == "global")
    retain = data.retain or []
    act_idx = _evenly_spaced(len(retain), settings.activation_sequences)
    batches = (_as_dict(collate([retain[i] for i in act_idx[s:s + 32]], data.pad_id))
               for s in range(0, len(act_idx), 32))
    moments = geo.retain_moments(model, adapter.layers, batches)
    fis_idx = _evenly_spaced(len(retain), settings.fisher_sequences)
    examples = (_as_dict(collate([retain[i]], data.pad_id)) for i in fis_idx)
    fisher = geo.diagonal_fisher(model, slices, examples)
    free, threshold = geo.fisher_free_mask(fisher, settings.fisher_quantile)
    plans = []
    absmax_frozen = 0
    for s, f, fr in zip(slices, fisher, free):
        is_absmax = geo.nf4_geometry(s.weight.detach(), settings.blocksize).is_block_absmax.reshape(s.weight.shape)
        absmax_frozen += int((s.take(is_absmax) & fr).sum())
        fr = fr & ~s.take(is_absmax)
        rtol = settings.null_rtol
        if settings.projection == "none":
            features = fr.shape[1]
            sub = geo.retain_subspace(torch.zeros(features, features, dtype=torch.float64), rtol)
        else:
            sub = geo.slice_subspace(s, moments[s.layer], rtol)
        if settings.projection == "global":
            proj = geo.GlobalProjector(fr, sub.basis)
        else:
            proj = geo.row_projector(sub, fr)
        plans.append(_SlicePlan(s, names[id(s.weight)], f, fr, proj, sub))
    info = {"fisher_threshold": threshold if math.isfinite(threshold) else None, "fisher_sequences": len(fis_idx),
            "activation_tokens": moments[0].tokens, "absmax_frozen": absmax_frozen,
            "slices": [{"name": p.param_name, "kind": p.slice.kind, "rows_x_features": list(p.free.shape),
                        "free": int(p.free.sum()), "retain_rank": p.subspace.rank,
                        "feature_dim": p.subspace.dim, "null_energy": round(p.subspace.null_energy, 6)}
                       for p in plans]}
    return plans, info


def _gptq_changes(context: UnlearnContext, model: torch.nn.Module, plans: list[_SlicePlan],
                  updated: list[torch.Tensor]) -> geo.GridReport:
    """Fraction of updated coordinates whose GPTQ-dequantized value differs between θ0 and θu."""

    q0 = quantize_model(context.model, "gptq", tokenizer=context.tokenizer, calibration=context.bundle).model
    q1 = quantize_model(model, "gptq", tokenizer=context.tokenizer, calibration=context.bundle).model
    p0, p1 = dict(q0.named_parameters()), dict(q1.named_parameters())
    return geo.code_change_report("gptq", [p0[p.param_name].detach() for p in plans],
                                  [p1[p.param_name].detach() for p in plans], updated)


def _rms_over_bin_width(plans: list[_SlicePlan], theta0: dict, weights: dict, trainable: dict,
                        blocksize: int) -> float:
    """RMS of Δ_i / (NF4 level gap at θ0_i) over the updated coordinates (the paper's 1/47–1/828 measure)."""
    total, count = 0.0, 0
    for p in plans:
        w0 = theta0[p.param_name]
        delta = weights[p.param_name].detach() - w0
        moved = trainable[p.param_name] & (delta != 0)
        if moved.any():
            width = geo.nf4_geometry(w0, blocksize).bin_width.reshape(w0.shape)
            total += float(((delta[moved].double() / width[moved].double()) ** 2).sum())
            count += int(moved.sum())
    return math.sqrt(total / count) if count else 0.0


@register_method("mansu")
class Mansu(Method):
    """MANSU: EAP-IG circuit + retain null-space step projection + NF4 magnitude floor (SPEC §8)."""

    name = "mansu"
    Settings = MansuSettings

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (3e-4, 1e-2, "log"), "steps": [30, 60, 120], "circuit_frac": [0.005, 0.01, 0.03],
                    "floor_margin": [0.02, 0.05, 0.1]}

    def run(self, context: UnlearnContext, settings: MansuSettings) -> UnlearnResult:
        start = time.perf_counter()
        timings: dict[str, float] = {}
        context.log("mansu: attributing the forget circuit (EAP-IG on forget_attr)")
        circuit = find_circuit(context, settings)
        timings["circuit_s"] = time.perf_counter() - start
        n_neurons = sum(len(i) for i in circuit.neurons.values())
        context.log(f"mansu: circuit of {n_neurons} neurons ({timings['circuit_s']:.0f} s); "
                    f"retain null spaces and NF4 bin geometry")

        model = context.trainable_copy()
        reference = context.frozen_copy()
        adapter = _gated_layers(model)
        data = UnlearnData.from_bundle(context.bundle, context.tokenizer, forget_source=settings.forget_source,
                                       max_length=settings.max_length)
        t = time.perf_counter()
        plans, geometry = plan_geometry(model, adapter, circuit.neurons, data, settings)
        timings["geometry_s"] = time.perf_counter() - t
        context.log(f"mansu: geometry of {len(plans)} weights ({timings['geometry_s']:.0f} s); training")
        theta0 = {p.param_name: p.slice.weight.detach().clone() for p in plans}
        deltas = {p.param_name: torch.zeros_like(p.free, dtype=torch.float64) for p in plans}

        def objective(m, forget, retain, step):
            terms = {"forget": -sequence_nll(m, forget).mean()}
            if retain is not None and settings.retain_weight > 0:
                terms["retain_kl"] = settings.retain_weight * kl_to_reference(m, reference, retain)
            return terms

        def project(step, before, params):
            # accumulate the projected steps in float64 and store θ0 + Δ (one rounding, no drift)
            for p in plans:
                s = p.slice
                raw = s.take(params[p.param_name].detach() - before[p.param_name])
                deltas[p.param_name] += p.projector.project(raw.double()).double()
                full = theta0[p.param_name].clone()
                s.put(full, (s.take(theta0[p.param_name]).double() + deltas[p.param_name]).to(full.dtype))
                params[p.param_name].copy_(full)

        trainable = {p.param_name: p.slice.full_mask(p.free) for p in plans}
        config = LoopConfig(steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size,
                            weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm,
                            seed=context.seed, progress=context.progress, desc="mansu")
        t = time.perf_counter()
        report = train_loop(model, objective, data, config, trainable=trainable, step_projection=project)
        timings["train_s"] = time.perf_counter() - t

        t = time.perf_counter()
        weights = {p.param_name: p.slice.weight for p in plans}
        bound_before = geo.fisher_bound([p.fisher for p in plans],
                                        [p.slice.take(weights[p.param_name].detach() - theta0[p.param_name])
                                         for p in plans])
        ratio_before = _rms_over_bin_width(plans, theta0, weights, trainable, settings.blocksize)
        floor_stats = {"floored": 0, "clamped": 0, "absmax_zeroed": 0}
        with torch.no_grad():
            for p in plans:
                w0 = theta0[p.param_name]
                res = geo.magnitude_floor(w0, weights[p.param_name].detach() - w0, trainable[p.param_name],
                                          settings.floor, settings.floor_margin, settings.blocksize)
                weights[p.param_name].copy_(res.theta)
                floor_stats["floored"] += res.floored
                floor_stats["clamped"] += res.clamped
                floor_stats["absmax_zeroed"] += res.absmax_zeroed
        ratio_after = _rms_over_bin_width(plans, theta0, weights, trainable, settings.blocksize)
        final_delta = {n: weights[n].detach() - theta0[n] for n in weights}
        bound_after = geo.fisher_bound([p.fisher for p in plans],
                                       [p.slice.take(final_delta[p.param_name]) for p in plans])
        updated = [trainable[p.param_name] & (final_delta[p.param_name] != 0) for p in plans]
        post = geo.post_condition([theta0[p.param_name] for p in plans],
                                  [weights[p.param_name].detach() for p in plans], updated, settings.blocksize)
        if settings.postcondition_gptq:
            post.grids["gptq"] = _gptq_changes(context, model, plans, updated)
        timings["floor_and_checks_s"] = time.perf_counter() - t
        seconds = time.perf_counter() - start

        n_updated = sum(int(u.sum()) for u in updated)
        rms = [float(final_delta[p.param_name][u].double().pow(2).mean().sqrt()) if u.any() else 0.0
               for p, u in zip(plans, updated)]
        diagnostics = {
            "circuit": {"kind": settings.circuit, "frac": float(circuit.frac), "n_params": int(circuit.n_params),
                        "neurons": {str(l): [int(i) for i in idx] for l, idx in sorted(circuit.neurons.items())}},
            "geometry": geometry,
            "trainable_coordinates": report.trainable_parameters,
            "updated_coordinates": n_updated,
            "fisher_bound_before_floor": bound_before,
            "fisher_bound_after_floor": bound_after,
            "floor": {"mode": settings.floor, **floor_stats},
            "rms_update_over_bin_width": {"before_floor": ratio_before, "after_floor": ratio_after},
            "postcondition": post.to_dict(),
            "update_rms_per_slice": {p.param_name: r for p, r in zip(plans, rms)},
            "loop": report.summary(),
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        model.eval()
        for prm in model.parameters():
            prm.requires_grad_(False)
        return UnlearnResult(model, report.steps, seconds, diagnostics, self.name, settings_dict(settings), context.seed)

