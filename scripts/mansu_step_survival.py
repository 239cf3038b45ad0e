"""Which MANSU step removes the forget signal? (issue 18, section 5)

On θ0 (the base model; `MansuSettings` defaults, or a tune output's choice with
`--settings`), with the method's own functions (`find_circuit`, `plan_geometry`;
nothing in the method is changed), this computes the
gradient of MANSU's forget loss (−NLL on the `forget_source` sequences, all of them,
the ascent direction) and measures how much of it each step lets through:

  circuit      |g_C| / |g_MLP|: the share of the gradient over all MLP weights that lies on
               the circuit's coordinates (EAP-IG circuit, and a same-size random circuit)
  fisher mask  |g_C ⊙ m_F| / |g_C|: what the Fisher mask alone keeps (m_F: F_ii ≤ the
               `fisher_quantile` of F over C)
  absmax       |g_C ⊙ m_F ⊙ m_A| / |g_C|: plus the frozen NF4 block-absmax coordinates
  null space   |P_N g_C| / |g_C|: what the retain null-space projection alone keeps
               (every coordinate free)
  both         |P g_C| / |g_C|: the method's own projector (null space ∩ mask ∩ absmax
               freeze), what a projected step can use

P is an orthogonal projection per row, so |P g|² / |g|² is also the share of the
first-order decrease of the forget loss that the projected gradient step keeps. The same
fractions are given for sign(g_C), a proxy of AdamW's first steps (elementwise-normalised).

Usage: .venv/bin/python scripts/mansu_step_survival.py [--model reference] [--settings TUNED.json]
       [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from mansu_audit.circuits import random_circuit
from mansu_audit.data import load_bundle
from mansu_audit.loading import load_model
from mansu_audit.methods import mansu_geometry as geo
from mansu_audit.methods.base import UnlearnContext, parse_overrides
from mansu_audit.methods.loop import UnlearnData, collate, sequence_nll
from mansu_audit.methods.mansu import MansuSettings, _gated_layers, find_circuit, plan_geometry
from mansu_audit.tune import read_settings_file


def forget_gradient(model, data: UnlearnData, batch: int = 16) -> dict[str, torch.Tensor]:
    """Gradient of the forget loss −mean NLL over every forget sequence (float64, by parameter name)."""
    model.zero_grad(set_to_none=True)
    n = len(data.forget)
    for start in range(0, n, batch):
        seqs = data.forget[start:start + batch]
        loss = -sequence_nll(model, collate(seqs, data.pad_id)).sum() / n
        loss.backward()
    return {name: p.grad.detach().double().clone() for name, p in model.named_parameters() if p.grad is not None}


def survival(plans, grads: dict[str, torch.Tensor], fisher_masks, transform) -> dict:
    raw = mask = masked_abs = null = both = 0.0
    for p, fmask in zip(plans, fisher_masks):
        g = transform(p.slice.take(grads[p.param_name]))
        raw += float((g ** 2).sum())
        mask += float(((g * fmask) ** 2).sum())
        masked_abs += float(((g * p.free) ** 2).sum())
        all_free = torch.ones_like(p.free)
        null += float((geo.row_projector(p.subspace, all_free).project(g) ** 2).sum())
        both += float((p.projector.project(g) ** 2).sum())
    frac = (lambda x: math.sqrt(x / raw) if raw > 0 else None)
    return {"norm": math.sqrt(raw), "fisher_mask": frac(mask), "fisher_mask_and_absmax": frac(masked_abs),
            "null_space": frac(null), "null_space_mask_absmax": frac(both)}


def slice_row(p, fmask, grads) -> dict:
    """Per slice: its size, retain rank, free share, and |g| before and after each step (absolute norms)."""
    g = p.slice.take(grads[p.param_name])
    norm = (lambda t: math.sqrt(float((t ** 2).sum())))
    return {"name": p.param_name, "kind": p.slice.kind, "rows_x_features": list(p.free.shape),
            "retain_rank": p.subspace.rank, "feature_dim": p.subspace.dim,
            "fisher_free_fraction": float(fmask.double().mean()), "free_fraction": float(p.free.double().mean()),
            "grad": norm(g), "grad_fisher_mask": norm(g * fmask), "grad_fisher_mask_absmax": norm(g * p.free),
            "grad_null_space": norm(geo.row_projector(p.subspace, torch.ones_like(p.free)).project(g)),
            "grad_kept": norm(p.projector.project(g))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--benchmark", default="synthhazard")
    ap.add_argument("--json", default=None)
    ap.add_argument("--settings", default=None, metavar="FILE",
                    help="a `mansu-audit tune` output for mansu: measure at its chosen settings (default: the defaults)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    start = time.perf_counter()
    loaded = load_model(args.model)
    bundle = load_bundle(args.benchmark)
    overrides = read_settings_file(args.settings)[1] if args.settings else []
    settings = parse_overrides(MansuSettings, overrides)
    context = UnlearnContext(loaded.model, loaded.tokenizer, bundle, seed=0, progress=False)
    circuit = find_circuit(context, settings)
    model = context.trainable_copy()
    adapter = _gated_layers(model)
    data = UnlearnData.from_bundle(bundle, loaded.tokenizer, forget_source=settings.forget_source,
                                   max_length=settings.max_length)
    plans, geometry = plan_geometry(model, adapter, circuit.neurons, data, settings)
    fisher_masks, _ = geo.fisher_free_mask([p.fisher for p in plans], settings.fisher_quantile)
    grads = forget_gradient(model, data)
    mlp = [w for l in adapter.layers for w in (l.gate_proj.weight, l.up_proj.weight, l.down_proj.weight)]
    names = {id(p): n for n, p in model.named_parameters()}
    mlp_sq = sum(float((grads[names[id(w)]] ** 2).sum()) for w in mlp)
    all_sq = sum(float((g ** 2).sum()) for g in grads.values())

    def circuit_share(neurons) -> float:
        sl = geo.circuit_slices(adapter.layers, neurons)
        return math.sqrt(sum(float((s.take(grads[names[id(s.weight)]]) ** 2).sum()) for s in sl) / mlp_sq)

    rand = random_circuit(context.model, same_size_as=circuit, seed=0)
    out = {"model": args.model, "settings": {"circuit_frac": settings.circuit_frac, "fisher_quantile":
                                              settings.fisher_quantile, "null_rtol": settings.null_rtol,
                                              "forget_source": settings.forget_source},
           "forget_sequences": len(data.forget), "retain_sequences": len(data.retain or []),
           "circuit_neurons": sum(len(i) for i in circuit.neurons.values()),
           "circuit_coordinates": sum(p.free.numel() for p in plans),
           "free_coordinates": sum(int(p.free.sum()) for p in plans),
           "mlp_share_of_gradient": math.sqrt(mlp_sq / all_sq),
           "circuit_share_of_mlp_gradient": {"eap-ig": circuit_share(circuit.neurons),
                                             "random": circuit_share(rand.neurons)},
           "gradient": survival(plans, grads, fisher_masks, lambda g: g),
           "sign_gradient": survival(plans, grads, fisher_masks, torch.sign),
           "slices": [slice_row(p, m, grads) for p, m in zip(plans, fisher_masks)],
           "seconds": round(time.perf_counter() - start, 1)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
