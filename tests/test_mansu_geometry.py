"""MANSU geometry: projection identities, moments, Fisher, the magnitude floor and post-conditions."""
from __future__ import annotations

import pytest
import torch

from mansu_audit.methods import mansu_geometry as geo
from conftest import tiny_llama


def _rank_deficient(features: int, rank: int, tokens: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(features, rank, generator=gen, dtype=torch.float64)
    return (torch.randn(tokens, rank, generator=gen, dtype=torch.float64) @ basis.T)  # tokens × features


# --------------------------------------------------------------------------- subspace and projection


def test_retain_subspace_threshold_and_energy():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    evals = torch.tensor([1e-6, 1e-4, 0.02, 0.5, 2.0, 10.0], dtype=torch.float64)
    moment = q @ torch.diag(evals) @ q.T
    sub = geo.retain_subspace(moment, rtol=1e-2)
    assert sub.rank == 3  # 0.5, 2, 10 exceed 0.1 = rtol·λ_max; 0.02 does not
    assert torch.allclose(sub.basis.T @ sub.basis, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert sub.null_energy == pytest.approx(float(evals[:3].sum() / evals.sum()), rel=1e-9)
    # the basis spans exactly the eigenvectors of the kept eigenvalues
    kept = q[:, 3:]
    assert torch.allclose(sub.basis @ sub.basis.T, kept @ kept.T, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_row_projector_is_the_orthogonal_projection_onto_mask_and_null_space(seed):
    rows, features = 7, 12
    acts = _rank_deficient(features, rank=5, tokens=40, seed=seed)
    sub = geo.retain_subspace(acts.T @ acts / len(acts), rtol=1e-10)
    assert sub.rank == 5
    gen = torch.Generator().manual_seed(100 + seed)
    free = torch.rand(rows, features, generator=gen) < 0.7
    proj = geo.row_projector(sub, free)
    v = torch.randn(rows, features, generator=gen, dtype=torch.float64)
    w = torch.randn(rows, features, generator=gen, dtype=torch.float64)
    pv, pw = proj.project(v), proj.project(w)
    # constraints: masked coordinates stay zero, outputs on every retain activation are zero
    assert torch.all(pv[~free] == 0)
    assert (pv @ acts.T).abs().max() < 1e-10 * acts.abs().max() * v.abs().max() * features
    # a projection: idempotent and self-adjoint (row by row)
    assert torch.allclose(proj.project(pv), pv, atol=1e-12)
    assert torch.allclose((pv * w).sum(1), (v * pw).sum(1), atol=1e-10)
    # nothing outside the constraint set is lost needlessly: the residual is orthogonal to the set
    assert torch.allclose(((v - pv) * pw).sum(1), torch.zeros(rows, dtype=torch.float64), atol=1e-10)


def test_row_projector_without_retain_directions_is_the_mask():
    sub = geo.retain_subspace(torch.zeros(5, 5, dtype=torch.float64), rtol=1e-2)
    free = torch.tensor([[True, False, True, True, False]] * 3)
    v = torch.randn(3, 5, dtype=torch.float64)
    assert torch.equal(geo.row_projector(sub, free).project(v), v * free)


def test_global_projector_removes_retain_directions():
    acts = _rank_deficient(10, rank=4, tokens=30, seed=3)
    sub = geo.retain_subspace(acts.T @ acts, rtol=1e-10)
    proj = geo.GlobalProjector(torch.ones(6, 10, dtype=torch.bool), sub.basis)
    pv = proj.project(torch.randn(6, 10, dtype=torch.float64))
    assert (pv @ acts.T).abs().max() < 1e-9


def test_slices_take_put_roundtrip_and_masks():
    model = tiny_llama(64, hidden=16, intermediate=32, layers=2, heads=2, kv_heads=1)
    from mansu_audit.circuits import adapter_for

    layers = adapter_for(model).layers
    slices = geo.circuit_slices(layers, {1: torch.tensor([5, 2, 9])})
    assert [s.kind for s in slices] == ["gate", "up", "down"]
    gate, _, down = slices
    assert gate.take(gate.weight).shape == (3, 16) and down.take(down.weight).shape == (16, 3)
    assert torch.equal(gate.take(gate.weight), gate.weight[[2, 5, 9]])
    assert torch.equal(down.take(down.weight), down.weight[:, [2, 5, 9]])
    mask = down.full_mask()
    assert int(mask.sum()) == down.numel == 48 and mask[:, [2, 5, 9]].all()
    full = torch.zeros(16, 32)
    down.put(full, torch.ones(16, 3))
    assert torch.equal(full.bool(), mask)


# --------------------------------------------------------------------------- moments and Fisher


def _batches(vocab: int, n: int, length: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, length - 3:] = 0  # some padding that must not count
    labels = ids.masked_fill(mask == 0, -100)
    return [{"input_ids": ids, "attention_mask": mask, "labels": labels}]


def test_retain_moments_match_the_mlp_inputs_and_activations():
    model = tiny_llama(64, hidden=16, intermediate=32, layers=2, heads=2, kv_heads=1)
    from mansu_audit.circuits import adapter_for

    layers = adapter_for(model).layers
    batches = _batches(64, 3, 9, seed=1)
    moments = geo.retain_moments(model, layers, batches)
    xs = {}
    hooks = [model.model.layers[l].mlp.register_forward_pre_hook(
        lambda m, inp, l=l: xs.__setitem__(l, inp[0].detach())) for l in range(2)]
    with torch.no_grad():
        model(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"])
    for h in hooks:
        h.remove()
    keep = batches[0]["attention_mask"].reshape(-1).bool()
    assert moments[0].tokens == int(keep.sum())
    for l in range(2):
        mlp = model.model.layers[l].mlp
        x = xs[l].reshape(-1, 16)[keep].double()
        a = torch.nn.functional.silu(x @ mlp.gate_proj.weight.double().T) * (x @ mlp.up_proj.weight.double().T)
        assert torch.allclose(moments[l].x, x.T @ x / len(x), rtol=1e-5, atol=1e-7)
        assert torch.allclose(moments[l].a, a.T @ a / len(a), rtol=1e-4, atol=1e-7)


def test_diagonal_fisher_equals_mean_squared_per_sequence_gradient():
    model = tiny_llama(64, hidden=16, intermediate=32, layers=2, heads=2, kv_heads=1)
    from mansu_audit.circuits import adapter_for

    slices = geo.circuit_slices(adapter_for(model).layers, {0: torch.tensor([1, 4]), 1: torch.tensor([0])})
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 64, (1, 6 + i), generator=gen) for i in range(3)]
    examples = [{"input_ids": s, "labels": s} for s in seqs]
    fisher = geo.diagonal_fisher(model, slices, examples)
    expected = [torch.zeros_like(f) for f in fisher]
    params = [s.weight for s in slices]
    for s in seqs:
        logits = model(input_ids=s).logits[0, :-1]
        logp = torch.log_softmax(logits, -1).gather(-1, s[0, 1:, None]).sum()
        grads = torch.autograd.grad(logp, params)
        for i, (sl, g) in enumerate(zip(slices, grads)):
            expected[i] += sl.take(g).double() ** 2 / len(seqs)
    for f, e in zip(fisher, expected):
        assert torch.allclose(f, e, rtol=1e-4, atol=1e-12)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_fisher_mask_quantile_and_bound_definition():
    gen = torch.Generator().manual_seed(0)
    fisher = [torch.rand(4, 8, generator=gen, dtype=torch.float64), torch.rand(8, 4, generator=gen, dtype=torch.float64)]
    free, threshold = geo.fisher_free_mask(fisher, 0.5)
    flat = torch.cat([f.flatten() for f in fisher])
    assert sum(int(m.sum()) for m in free) == int((flat <= threshold).sum()) == 32
    assert all(torch.equal(m, f <= threshold) for m, f in zip(free, fisher))
    all_free, inf = geo.fisher_free_mask(fisher, 1.0)
    assert all(m.all() for m in all_free) and inf == float("inf")
    deltas = [torch.randn(4, 8, generator=gen), torch.randn(8, 4, generator=gen)]
    explicit = 0.0
    for f, d in zip(fisher, deltas):
        for fi, di in zip(f.flatten().tolist(), d.double().flatten().tolist()):
            explicit += 0.5 * fi * di * di
    assert geo.fisher_bound(fisher, deltas) == pytest.approx(explicit, rel=1e-12)


# --------------------------------------------------------------------------- floor and post-conditions


def _bnb_nf4(w: torch.Tensor) -> torch.Tensor:
    import bitsandbytes.functional as F

    q, state = F.quantize_4bit(w.contiguous(), blocksize=64, quant_type="nf4")
    return F.dequantize_4bit(q, state, blocksize=64, quant_type="nf4")


def _weights(kind: str, shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(*shape, generator=gen) * 0.02
    if kind == "heavy":
        return torch.distributions.StudentT(2.0).sample(shape) * 0.01
    return (torch.rand(*shape, generator=gen) - 0.5) * 0.1


@pytest.mark.parametrize("mode", ["boundary", "bin"])
@pytest.mark.parametrize("seed", range(6))
def test_floor_guarantees_code_changes_and_leaves_block_absmax_alone(mode, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    shape = [(32, 64), (48, 96), (16, 128)][seed % 3]
    w0 = _weights(["normal", "heavy", "uniform"][seed % 3], shape, gen)
    coords = torch.rand(*shape, generator=gen) < 0.3
    scale = [1e-7, 1e-5, 1e-3][seed % 3]  # from far below to around a bin width
    delta = torch.randn(*shape, generator=gen) * scale * coords
    res = geo.magnitude_floor(w0, delta, coords, mode, margin=0.05)
    w1 = res.theta
    assert torch.equal(w1 - w0, res.delta)
    assert torch.equal(w1[~coords], w0[~coords])  # nothing outside the coordinates moves
    g0 = geo.nf4_geometry(w0)
    absmax_el = g0.is_block_absmax.reshape(shape)
    assert torch.equal(w1[absmax_el], w0[absmax_el])  # block-absmax elements never move
    assert torch.equal(geo.nf4_geometry(w1).absmax, g0.absmax)  # so every block keeps its scale
    moved = coords & (delta != 0) & ~absmax_el
    codes0 = g0.codes.reshape(shape)
    outward = ((codes0 == 15) & (delta > 0)) | ((codes0 == 0) & (delta < 0))
    must = moved & ~outward
    # the real bitsandbytes quantizer sees a different value on every floored coordinate
    q0, q1 = _bnb_nf4(w0), _bnb_nf4(w1)
    assert must.any()
    assert torch.all(q0[must] != q1[must])
    # and the sign of every update is kept
    assert torch.all(torch.sign(res.delta[moved]) == torch.sign(delta[moved]))


def test_floor_boundary_is_the_smallest_crossing_move():
    gen = torch.Generator().manual_seed(7)
    w0 = torch.randn(8, 64, generator=gen) * 0.02
    coords = torch.ones_like(w0, dtype=torch.bool)
    delta = torch.full_like(w0, 1e-9) * torch.sign(torch.randn(8, 64, generator=gen))
    res = geo.magnitude_floor(w0, delta, coords, "boundary", margin=0.0)
    g0 = geo.nf4_geometry(w0)
    shrunk = w0 + (res.delta * 0.98)  # 2% short of the floored move: most stay in their bin
    moved = (res.delta != 0) & ~g0.is_block_absmax.reshape(w0.shape)
    codes_short = geo.nf4_geometry(shrunk).codes.reshape(w0.shape)
    same = (codes_short == g0.codes.reshape(w0.shape)) | ~moved
    assert same.float().mean() > 0.95


def test_floor_none_only_protects_absmax():
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(4, 64, generator=gen)
    delta = torch.randn(4, 64, generator=gen) * 1e-6
    coords = torch.ones_like(w0, dtype=torch.bool)
    res = geo.magnitude_floor(w0, delta, coords, "none")
    absmax_el = geo.nf4_geometry(w0).is_block_absmax.reshape(w0.shape)
    assert torch.equal(res.delta[~absmax_el], delta[~absmax_el]) and torch.all(res.delta[absmax_el] == 0)


def test_int8_codes_match_deployed_bitsandbytes():
    import bitsandbytes.functional as F

    w = torch.randn(16, 40) * 0.05
    codes, absmax = geo.grid_codes("int8", w)
    # what Linear8bitLt stores: Int8Params casts to float16, then int8_vectorwise_quant
    cb, scb, _ = F.int8_vectorwise_quant(w.half())
    assert torch.equal(codes, cb) and torch.equal(absmax, scb.float())


def _reference_mlp_weights() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from mansu_audit.loading.local import BUNDLED_MODELS

    path = BUNDLED_MODELS["reference"] / "model.safetensors"
    if not path.is_file():
        pytest.skip("reference model weights not built")
    return {k: v for k, v in load_file(str(path)).items() if ".mlp." in k and k.endswith(".weight")}


class _OneLinear(torch.nn.Module):
    """A one-block model holding `w` as its only Linear (the quantizers' walk sees one decoder layer)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        linear.weight.data.copy_(w)
        self.layers = torch.nn.ModuleList([torch.nn.ModuleDict({"proj": linear})])


@pytest.mark.parametrize("grid", ["nf4", "int8"])
def test_post_condition_codes_are_the_certified_quantizers_codes(grid, reference):
    """MANSU's post-condition codes equal the codes of the quantizer certify deploys, on the
    bundled reference model's real MLP weights (issue 11: its int8 had drifted: no float16 cast)."""
    from mansu_audit.quantizers import quantize_model

    weights = _reference_mlp_weights()
    deployed = quantize_model(reference.model, grid).records
    assert set(weights) == {f"{name}.weight" for name in deployed if ".mlp." in name}
    gen = torch.Generator().manual_seed(0)
    for key, w0 in weights.items():
        codes, _ = geo.grid_codes(grid, w0)
        assert torch.equal(codes, deployed[key[:-len(".weight")]].codes), key
        # and the post-condition counts exactly the deployed code changes of an update
        updated = torch.rand(w0.shape, generator=gen) < 0.3
        w1 = torch.where(updated, w0 + torch.randn(w0.shape, generator=gen) * w0.abs().mean() * 0.5, w0)
        post = geo.post_condition([w0], [w1], [updated], grids=(grid,))
        c0 = quantize_model(_OneLinear(w0), grid).records["layers.0.proj"].codes
        c1 = quantize_model(_OneLinear(w1), grid).records["layers.0.proj"].codes
        assert post.grids[grid].updated == int(updated.sum())
        assert post.grids[grid].changed == int(((c0 != c1) & updated).sum()) > 0


def test_post_condition_counts_code_changes():
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(8, 64, generator=gen) * 0.02
    coords = torch.rand(8, 64, generator=gen) < 0.5
    floored = geo.magnitude_floor(w0, torch.randn(8, 64, generator=gen) * 1e-8 * coords, coords, "boundary")
    unfloored = geo.magnitude_floor(w0, torch.randn(8, 64, generator=gen) * 1e-8 * coords, coords, "none")
    for res, passes in ((floored, True), (unfloored, False)):
        updated = [coords & (res.delta != 0)]
        post = geo.post_condition([w0], [res.theta], updated)
        nf4 = post.grids["nf4"]
        expected = int(((_bnb_nf4(w0) != _bnb_nf4(res.theta)) & updated[0]).sum())
        assert nf4.updated == int(updated[0].sum()) and nf4.changed == expected
        assert post.absmax_preserved and post.passed is passes
