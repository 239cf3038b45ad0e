"""MANSU's retain geometry, step projection, magnitude floor and post-conditions (SPEC §8).

Everything here acts on *slices*: the part of one MLP weight matrix that MANSU may
change, written as a 2-D matrix ``rows × features`` whose rows are constrained
against retain activations living in feature space:

* gate_proj / up_proj rows of the circuit neurons S: slice ``W[S, :]`` (|S| × d_model).
  Our choice for the analogue of the down_proj constraint: the update must leave the
  neurons' pre-activations on retain tokens unchanged, ``ΔW[S, :] · x ≈ 0`` for the
  layer's MLP inputs x (post-norm residual stream). Then the activations a_S on retain
  tokens are unchanged, and so is everything downstream of them.
* down_proj columns of S: slice ``W[:, S]`` (d_model × |S|); constraint
  ``ΔW[:, S] · a_S ≈ 0`` for the neurons' retain activations a_S (inputs of down_proj).
* ``projection="global"`` (ablation): the whole matrix is the slice (all neurons), with
  the full layer's activation statistics.

"Covariance" is the uncentred second moment E[u uᵀ] over retain tokens (the
constraint is ΔW·u = 0, not ΔW·(u − ū) = 0), accumulated and eigendecomposed in
float64. Directions with eigenvalue > ``null_rtol · λ_max`` span the retain subspace;
the rest is the null space the update is projected onto. λ_max is that of the whole
layer's moment (x, or all of a), so circuit neurons that are nearly silent on retain
text fall into the null space (see `slice_subspace`). The Fisher mask is combined
with the projection *exactly*: for each row r with free coordinates F_r (Fisher below
the quantile, not a block absmax), the step is projected onto
{v : v_j = 0 for j ∉ F_r, v · U = 0}, so both properties hold at once (project-then-mask
would break the null-space property, mask-then-project the mask).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from mansu_audit.quantizers import weight_quantizer

from mansu_audit.quantizers.nf4 import DEFAULT_BLOCKSIZE, nf4_bin_geometry, quantize_weight_4bit

KINDS = ("gate", "up", "down")


# --------------------------------------------------------------------------- slices


@dataclass
class WeightSlice:
    """The trainable part of one weight matrix, seen as ``rows × features``.

    axis 0: rows ``index`` of the weight (gate/up: neuron rows), features = columns;
    axis 1: columns ``index`` of the weight (down: neuron columns), rows = weight rows.
    ``index=None`` means the whole matrix (global projection).
    """

    name: str
    layer: int
    kind: str
    weight: torch.nn.Parameter
    axis: int
    index: torch.Tensor | None

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """The slice of a full-shaped tensor as ``rows × features``."""
        if self.index is None:
            return full
        return full.index_select(self.axis, self.index.to(full.device))

    def put(self, full: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``rows × features`` values back into a full-shaped tensor (in place)."""
        if self.index is None:
            full.copy_(values)
        else:
            full.index_copy_(self.axis, self.index.to(full.device), values.to(full.dtype))

    def full_mask(self, sliced: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean tensor of the weight's shape: True on the slice's coordinates (where `sliced`)."""
        mask = torch.zeros(self.weight.shape, dtype=torch.bool, device=self.weight.device)
        values = torch.ones_like(self.take(mask)) if sliced is None else sliced.to(mask.device)
        self.put(mask, values)
        return mask

    @property
    def numel(self) -> int:
        if self.index is None:
            return self.weight.numel()
        return int(self.index.numel()) * self.weight.shape[1 - self.axis]


def circuit_slices(layers: Sequence, neurons: dict[int, torch.Tensor], global_: bool = False) -> list[WeightSlice]:
    """Slices for the circuit's neurons (or whole MLP matrices of every layer when `global_`).

    `layers[l]` must have `gate_proj`, `up_proj`, `down_proj` nn.Linear attributes (a
    gated Llama-style MLP, e.g. `mansu_audit.circuits.adapter_for(model).layers`).
    """
    out: list[WeightSlice] = []
    chosen = range(len(layers)) if global_ else sorted(l for l, idx in neurons.items() if len(idx))
    for l in chosen:
        idx = None if global_ else torch.as_tensor(neurons[l], dtype=torch.long).sort().values
        mlp = layers[l]
        out.append(WeightSlice(f"layers.{l}.gate", l, "gate", mlp.gate_proj.weight, 0, idx))
        out.append(WeightSlice(f"layers.{l}.up", l, "up", mlp.up_proj.weight, 0, idx))
        out.append(WeightSlice(f"layers.{l}.down", l, "down", mlp.down_proj.weight, 1, idx))
    return out


# --------------------------------------------------------------------------- retain activations


@dataclass
class LayerMoments:
    """Uncentred second moments (float64) of one layer's MLP input x and down_proj input a."""

    x: torch.Tensor  # d_model × d_model
    a: torch.Tensor  # d_ff × d_ff
    tokens: int


@torch.no_grad()
def retain_moments(model: torch.nn.Module, layers: Sequence, batches: Iterable[dict]) -> list[LayerMoments]:
    """E[x xᵀ] and E[a aᵀ] per layer over the non-padding tokens of `batches`.

    `batches` yields dicts with `input_ids` and `attention_mask` (the forward pass is
    the model's own, so the activations are exactly the ones the constraint is about).
    """
    device = next(model.parameters()).device
    d_model = layers[0].gate_proj.weight.shape[1]
    d_ff = layers[0].gate_proj.weight.shape[0]
    sx = [torch.zeros(d_model, d_model, dtype=torch.float64, device=device) for _ in layers]
    sa = [torch.zeros(d_ff, d_ff, dtype=torch.float64, device=device) for _ in layers]
    current: dict[str, torch.Tensor] = {}
    handles = []

    def hook(store: list[torch.Tensor], l: int) -> Callable:
        def fn(_module, inputs):
            u = inputs[0].reshape(-1, inputs[0].shape[-1])[current["keep"]].double()
            store[l] += u.T @ u
        return fn

    for l, mlp in enumerate(layers):
        handles.append(mlp.gate_proj.register_forward_pre_hook(hook(sx, l)))
        handles.append(mlp.down_proj.register_forward_pre_hook(hook(sa, l)))
    n = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            current["keep"] = mask.reshape(-1).bool()
            n += int(current["keep"].sum())
            model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n == 0:
        raise ValueError("no retain tokens to estimate activation moments")
    return [LayerMoments(x / n, a / n, n) for x, a in zip(sx, sa)]


@dataclass
class RetainSubspace:
    """Orthonormal basis U (features × k) of the retain directions and the spectrum."""

    basis: torch.Tensor
    eigenvalues: torch.Tensor  # ascending, float64
    rank: int
    null_energy: float  # fraction of retain activation energy (trace) left in the null space

    @property
    def dim(self) -> int:
        return self.basis.shape[0]


def retain_subspace(moment: torch.Tensor, rtol: float, scale: float | None = None) -> RetainSubspace:
    """Split feature space by eigh (float64): eigenvalues > rtol·scale are retain directions.

    `scale` defaults to the moment's own λ_max.
    """
    sym = (moment.double() + moment.double().T) / 2
    evals, evecs = torch.linalg.eigh(sym)
    top = (float(evals[-1]) if evals.numel() else 0.0) if scale is None else float(scale)
    keep = evals > rtol * top if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
    total = float(evals.clamp_min(0).sum())
    null_energy = float(evals[~keep].clamp_min(0).sum()) / total if total > 0 else 0.0
    return RetainSubspace(evecs[:, keep].contiguous(), evals, int(keep.sum()), null_energy)


def slice_subspace(s: WeightSlice, moments: LayerMoments, rtol: float) -> RetainSubspace:
    """The retain subspace of a slice's feature space (a_S's moment is a submatrix of a's).

    The threshold is relative to λ_max of the *whole layer's* moment (x for gate/up, all
    of a for down), not of the slice's submatrix: a circuit neuron that is nearly silent
    on retain text then counts as null space, as it should — relative to its own tiny
    λ_max it would look like a full-rank retain direction.
    """
    if s.kind in ("gate", "up"):
        return retain_subspace(moments.x, rtol)
    if s.index is None:
        return retain_subspace(moments.a, rtol)
    scale = float(torch.linalg.eigvalsh((moments.a + moments.a.T) / 2)[-1])
    return retain_subspace(moments.a[s.index][:, s.index], rtol, scale=scale)


# --------------------------------------------------------------------------- projection


@dataclass
class RowProjector:
    """Per-row orthonormal bases Q_r of D_r·U (rows × features × k), D_r = diag(free_r).

    project(v)_r = D_r v_r − Q_r Q_rᵀ D_r v_r lies in {v: v_j = 0 off F_r, v·U = 0}.
    """

    free: torch.Tensor  # bool rows × features
    bases: torch.Tensor  # float64 rows × features × k (zero columns pad rank deficits)

    def project(self, step: torch.Tensor) -> torch.Tensor:
        v = (step.double() * self.free)
        if self.bases.shape[-1]:
            coeff = torch.einsum("rfk,rf->rk", self.bases, v)
            v = v - torch.einsum("rfk,rk->rf", self.bases, coeff)
        return (v * self.free).to(step.dtype)


def row_projector(subspace: RetainSubspace, free: torch.Tensor, chunk: int = 256) -> RowProjector:
    """Exact per-row projectors onto the intersection of the Fisher mask and the null space."""
    u = subspace.basis.to(free.device)
    rows, features = free.shape
    k = u.shape[1]
    bases = torch.zeros(rows, features, k, dtype=torch.float64, device=free.device)
    if k:
        for start in range(0, rows, chunk):
            f = free[start:start + chunk].double()
            b = f[:, :, None] * u[None]  # rows × features × k
            q, sv, _ = torch.linalg.svd(b, full_matrices=False)
            tol = sv.amax(dim=-1, keepdim=True).clamp_min(1e-300) * max(features, k) * torch.finfo(torch.float64).eps
            bases[start:start + chunk] = q * (sv > tol)[:, None, :]
    return RowProjector(free, bases)


@dataclass
class GlobalProjector:
    """Global ablation: one shared projector I − UUᵀ on every row, then the mask.

    The per-row exact intersection would need rows × features × k storage for whole
    matrices; for the ablation we accept project-then-mask (documented in mansu.py).
    """

    free: torch.Tensor
    basis: torch.Tensor  # features × k

    def project(self, step: torch.Tensor) -> torch.Tensor:
        v = step.double()
        u = self.basis.to(v.device)
        if u.shape[1]:
            v = v - (v @ u) @ u.T
        return (v * self.free).to(step.dtype)


# --------------------------------------------------------------------------- Fisher


def diagonal_fisher(model: torch.nn.Module, slices: Sequence[WeightSlice],
                    examples: Iterable[dict]) -> list[torch.Tensor]:
    """Diagonal empirical Fisher per slice: mean over retain sequences of (∂ log p(x)/∂θ_i)².

    One backward pass per sequence (the *empirical* Fisher needs per-example gradients;
    the square of a batch-mean gradient would not be it). log p(x) is the sum of the
    sequence's next-token log-likelihoods, so ½ Σ F_ii Δ_i² is the second-order rise of
    the per-sequence retain NLL at a minimum. `examples` yields single-sequence dicts
    with `input_ids` and `labels` (−100 = ignored).
    """
    params = {id(s.weight): s.weight for s in slices}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in params)
    was_training = model.training
    model.eval()
    sums = [torch.zeros_like(s.take(s.weight.detach()), dtype=torch.float64) for s in slices]
    n = 0
    try:
        for ex in examples:
            model.zero_grad(set_to_none=True)
            device = next(model.parameters()).device
            out = model(input_ids=ex["input_ids"].to(device))
            logits = out.logits[:, :-1].float()
            labels = ex["labels"].to(device)[:, 1:]
            logp = -torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                      ignore_index=-100, reduction="sum")
            logp.backward()
            for i, s in enumerate(slices):
                sums[i] += s.take(s.weight.grad).double() ** 2
            n += 1
    finally:
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.train(was_training)
    if n == 0:
        raise ValueError("no retain sequences to estimate the Fisher")
    return [s / n for s in sums]


def fisher_free_mask(fisher: Sequence[torch.Tensor], quantile: float) -> tuple[list[torch.Tensor], float]:
    """Coordinates allowed to move: F_ii ≤ the `quantile` of F over the whole circuit.

    quantile 1.0 disables the mask. Returns the masks and the threshold.
    """
    if quantile >= 1.0:
        return [torch.ones_like(f, dtype=torch.bool) for f in fisher], math.inf
    flat = torch.cat([f.reshape(-1) for f in fisher])
    if flat.numel() > 8_000_000:  # torch.quantile's size limit: use the exact k-th value
        k = max(1, int(math.ceil(quantile * flat.numel())))
        threshold = float(flat.kthvalue(k).values)
    else:
        threshold = float(torch.quantile(flat, quantile))
    return [f <= threshold for f in fisher], threshold


def fisher_bound(fisher: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]) -> float:
    """The diagonal-Fisher retain bound ½ Σ_i F_ii Δ_i² over the circuit."""
    return float(sum(0.5 * (f.double() * d.double() ** 2).sum() for f, d in zip(fisher, deltas)))


# --------------------------------------------------------------------------- magnitude floor

FLOOR_MODES = ("boundary", "bin", "none")


@dataclass
class FloorResult:
    theta: torch.Tensor  # the new weight θ0 + Δ, exactly as it must be stored
    delta: torch.Tensor  # θ − θ0 (full-shaped cumulative update after the floor)
    floored: int  # coordinates whose |Δ| was raised
    clamped: int  # coordinates clamped to keep |θ| ≤ block absmax
    absmax_zeroed: int  # block-absmax coordinates whose update was removed


def nf4_geometry(weight: torch.Tensor, blocksize: int = 64):
    return nf4_bin_geometry(weight, blocksize=blocksize)


@torch.no_grad()
def magnitude_floor(theta0: torch.Tensor, delta: torch.Tensor, coords: torch.Tensor, mode: str,
                    margin: float = 0.05, blocksize: int = 64) -> FloorResult:
    """Δ_i ← sign(Δ_i)·max(|Δ_i|, δ_i) on the updated coordinates (`coords` & Δ ≠ 0).

    bin:      δ_i = the width of θ0_i's NF4 bin, i.e. of its decision interval
              (upper − lower, θ0's block absmax): moving that far from anywhere inside
              the interval leaves it (Lemma 1). The two unbounded end bins use the gap
              to their neighbouring level. (The geometry's `bin_width`, the gap between
              the two levels bracketing θ0_i, does *not* guarantee a crossing: NF4 gaps
              grow away from zero.)
    boundary: δ_i = (distance from θ0_i to its interval's boundary in the direction of
              Δ_i)·(1 + margin): the smallest move that changes the code.
    Block-absmax elements are never moved (their update is zeroed) and other elements are
    clamped to |θ| ≤ the block absmax, so every block keeps θ0's scale — and with it the
    guarantee. A coordinate at an end code moving outward has no boundary to cross and
    keeps its Δ. The value stored in θ0's dtype is checked against the exact float32
    boundaries and stepped by ulps where rounding would undo the crossing.
    """
    if mode not in FLOOR_MODES:
        raise ValueError(f"floor mode must be one of {FLOOR_MODES}")
    delta = delta.clone()
    geo = nf4_geometry(theta0, blocksize)
    absmax_el = geo.is_block_absmax.reshape(delta.shape)
    moving = coords & (delta != 0)
    absmax_zeroed = int((moving & absmax_el).sum())
    delta[coords & absmax_el] = 0
    moving &= ~absmax_el
    if mode == "none":
        return FloorResult(theta0 + delta, delta, 0, 0, absmax_zeroed)
    t0 = theta0.double()
    lower, upper = geo.lower.reshape(delta.shape).double(), geo.upper.reshape(delta.shape).double()
    up = delta > 0
    outward = torch.where(up, torch.isinf(upper), torch.isinf(lower))
    if mode == "bin":
        width = upper - lower
        gap = geo.bin_width.reshape(delta.shape).double()
        floor = torch.where(torch.isfinite(width), width, gap)
    else:
        floor = torch.where(up, upper - t0, t0 - lower) * (1.0 + margin)
    floor = torch.where(outward | ~torch.isfinite(floor), torch.zeros_like(floor), floor)
    d = delta.double()
    raised = moving & (d.abs() < floor)
    d = torch.where(raised, torch.sign(d) * floor, d)
    absmax = geo.absmax.reshape(delta.shape).double()
    target = t0 + d
    limited = target.clamp(-absmax, absmax)
    clamped = moving & (limited != target)
    stored = torch.where(moving, limited, t0 + delta.double()).to(theta0.dtype)
    # rounding to the weight's dtype must not undo a crossing: step one ulp at a time
    toward = torch.where(up, torch.full_like(stored, math.inf), torch.full_like(stored, -math.inf))
    for _ in range(8):
        short = raised & ~clamped & torch.where(up, stored.double() <= upper, stored.double() > lower)
        if not bool(short.any()):
            break
        stored = torch.where(short, torch.nextafter(stored, toward), stored)
    stored = torch.where(moving, torch.minimum(torch.maximum(stored, -absmax.to(stored.dtype)),
                                               absmax.to(stored.dtype)), stored)
    theta = torch.where(coords, stored, theta0)
    return FloorResult(theta, theta - theta0, int(raised.sum()), int(clamped.sum()), absmax_zeroed)


# --------------------------------------------------------------------------- post-conditions


def grid_codes(grid: str, weight: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scales) of `weight` under the registered data-free quantizer `grid` (nf4, int8, ...).

    Calls the quantizer's own per-weight function (`quantizers.weight_quantizer`), so the
    post-condition measures exactly what `certify` deploys (int8 included: it casts to
    float16 first, as bitsandbytes' Int8Params does). `blocksize` other than 64 (MANSU's
    `blocksize` setting) runs the same nf4 function at that block size.
    """

    if grid == "nf4" and blocksize != DEFAULT_BLOCKSIZE:
        _, record = quantize_weight_4bit(grid, weight, "nf4", double_quant=False, blocksize=blocksize)
    else:
        _, record = weight_quantizer(grid)(grid, weight)
    return record.codes, record.scales


@dataclass
class GridReport:
    """Fraction of updated coordinates whose quantized value/code differs from θ0's."""

    grid: str
    updated: int
    changed: int

    @property
    def fraction(self) -> float:
        return self.changed / self.updated if self.updated else float("nan")

    def to_dict(self) -> dict:
        return {"grid": self.grid, "updated": self.updated, "changed": self.changed,
                "fraction": self.fraction if self.updated else None}


def code_change_report(grid: str, before: Sequence[torch.Tensor], after: Sequence[torch.Tensor],
                       updated: Sequence[torch.Tensor]) -> GridReport:
    """Compare per-coordinate codes (or dequantized values) of θ0 and θu on updated coordinates."""
    n = sum(int(u.sum()) for u in updated)
    c = sum(int(((b != a) & u).sum()) for b, a, u in zip(before, after, updated))
    return GridReport(grid, n, c)


@dataclass
class PostCondition:
    """MANSU's post-condition: how many updated coordinates leave their code, per grid."""

    grids: dict[str, GridReport] = field(default_factory=dict)
    absmax_preserved: bool = True
    threshold: float = 0.95

    @property
    def passed(self) -> bool:
        nf4 = self.grids.get("nf4")
        return bool(nf4 is not None and nf4.fraction >= self.threshold and self.absmax_preserved)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "threshold": self.threshold, "absmax_preserved": self.absmax_preserved,
                "grids": {k: v.to_dict() for k, v in self.grids.items()}}


@torch.no_grad()
def post_condition(theta0: Sequence[torch.Tensor], theta_u: Sequence[torch.Tensor],
                   updated: Sequence[torch.Tensor], blocksize: int = 64, threshold: float = 0.95,
                   grids: Sequence[str] = ("nf4", "int8")) -> PostCondition:
    """Code changes over the updated coordinates of full weight matrices, per registered quantizer
    in `grids` (each model quantized with its own scales, i.e. the real quantizer); nf4 also
    reports whether every block absmax was preserved."""
    report = PostCondition(threshold=threshold)
    for grid in grids:
        c0, c1 = [], []
        for w0, w1 in zip(theta0, theta_u):
            a, m0 = grid_codes(grid, w0, blocksize)
            b, m1 = grid_codes(grid, w1, blocksize)
            c0.append(a), c1.append(b)
            if grid == "nf4":
                report.absmax_preserved &= bool(torch.equal(m0, m1))
        report.grids[grid] = code_change_report(grid, c0, c1, updated)
    return report
