"""In-house GPTQ: exact RTN under an identity Hessian, lower output error than RTN, robust numerics."""
from __future__ import annotations

import pytest
import torch

from mansu_audit.errors import InputError
from mansu_audit.quantizers import linear_weight, quantizable_linears, quantize_model
from mansu_audit.quantizers.gptq import calibration_chunks, gptq_quantize_weight
from mansu_audit.quantizers.rtn import rtn_fake_quant


def layer_inputs(model, tokenizer, texts, n_texts=256, seq_len=256):
    """Inputs X (tokens, in) of every quantizable Linear of the full-precision model."""
    chunks = calibration_chunks(texts, tokenizer, n_texts, seq_len, seed=0)
    xs: dict[str, list] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: xs.setdefault(n, []).append(
        args[0].reshape(-1, args[0].shape[-1]).double())) for n, m in quantizable_linears(model)]
    with torch.no_grad():
        for ids in chunks:
            model(input_ids=ids)
    for h in handles:
        h.remove()
    return {n: torch.cat(v) for n, v in xs.items()}


def output_error(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> float:
    return float(((x @ (q.double() - w.double()).T) ** 2).sum())


@pytest.mark.parametrize("act_order", [False, True])
def test_identity_hessian_is_exactly_rtn(act_order):
    torch.manual_seed(0)
    w = torch.randn(48, 300) * 0.02
    res = gptq_quantize_weight(w, torch.eye(300, dtype=torch.float64), bits=4, group_size=128, symmetric=True,
                               act_order=False)
    deq, codes, scales, zeros = rtn_fake_quant(w, 4, 128, symmetric=True)
    assert torch.equal(res.weight, deq) and torch.equal(res.codes, codes)
    assert torch.equal(res.scales, scales) and res.damp == 0.01
    asym = gptq_quantize_weight(w, torch.eye(300, dtype=torch.float64), symmetric=False)
    assert torch.equal(asym.weight, rtn_fake_quant(w, 4, 128, symmetric=False)[0])
    if act_order:  # equal diagonals: act-order's stable permutation is the identity up to ties
        ao = gptq_quantize_weight(w, torch.eye(300, dtype=torch.float64) * torch.linspace(2, 1, 300,
                                  dtype=torch.float64), act_order=True)
        assert torch.equal(ao.weight, deq)  # decreasing diagonal: order unchanged, still diagonal H


def test_lower_output_error_than_rtn_on_correlated_inputs():
    torch.manual_seed(1)
    basis = torch.randn(16, 256)
    x = (torch.randn(2048, 16) @ basis + 0.1 * torch.randn(2048, 256)).double()  # low-rank + noise
    w = torch.randn(64, 256) * 0.02
    H = 2 * x.T @ x / len(x)
    for act_order in (False, True):
        res = gptq_quantize_weight(w, H, act_order=act_order)
        rtn = rtn_fake_quant(w, 4, 128, symmetric=True)[0]
        assert output_error(x, w, res.weight) < 0.5 * output_error(x, w, rtn)


def test_rank_deficient_and_dead_columns_stay_finite():
    torch.manual_seed(2)
    x = (torch.randn(40, 3) @ torch.randn(3, 130)).double()  # rank 3 of 130
    x[:, 5] = 0.0  # a dead input column
    w = torch.randn(16, 130)
    res = gptq_quantize_weight(w, x.T @ x)
    assert torch.isfinite(res.weight).all() and res.dead_columns == 1
    assert torch.equal(res.weight[:, 5], torch.zeros(16))


def test_damp_is_raised_until_cholesky_succeeds():
    H = torch.eye(8, dtype=torch.float64)
    H[0, 1] = H[1, 0] = 2.0  # indefinite: eigenvalues -1 and 3
    res = gptq_quantize_weight(torch.randn(4, 8), H, group_size=8)
    assert res.damp > 0.01 and torch.isfinite(res.weight).all()


def test_gptq_beats_rtn_layerwise_on_a_model(tiny_model, ref_tokenizer, bundle):
    model = tiny_model
    texts = bundle.texts("retain_corpus")
    qm = quantize_model(model, "gptq", tokenizer=ref_tokenizer, calibration=bundle)
    xs = layer_inputs(model, ref_tokenizer, texts)
    g_layers, fp_layers = dict(quantizable_linears(qm.model)), dict(quantizable_linears(model))
    total_g = total_r = 0.0
    for name, x in xs.items():
        w = linear_weight(fp_layers[name])
        rtn = rtn_fake_quant(w, 4, 128, symmetric=True)[0]
        eg, er = output_error(x, w, linear_weight(g_layers[name])), output_error(x, w, rtn)
        assert eg < er, name
        total_g, total_r = total_g + eg, total_r + er
    assert total_g < 0.9 * total_r
    s = qm.settings
    assert s["calibration_texts"] == 256 and s["seed"] == 0 and s["calibration_tokens"] > 1000
    assert all(r.settings["damp_used"] == 0.01 for r in qm.records.values())


def test_gptq_on_reference_model_layers(reference, bundle):
    qm = quantize_model(reference.model, "gptq", tokenizer=reference.tokenizer, calibration=bundle)
    xs = layer_inputs(reference.model, reference.tokenizer, bundle.texts("forget_corpus"), n_texts=128)
    g_layers, fp_layers = dict(quantizable_linears(qm.model)), dict(quantizable_linears(reference.model))
    wins = 0
    for name, x in xs.items():  # held-out text (forget corpus): GPTQ should still generalise
        w = linear_weight(fp_layers[name])
        rtn = rtn_fake_quant(w, 4, 128, symmetric=True)[0]
        wins += output_error(x, w, linear_weight(g_layers[name])) < output_error(x, w, rtn)
    assert wins >= 0.9 * len(xs)


def test_gptq_is_sequential_deterministic_and_needs_data(tiny_model, ref_tokenizer, bundle):
    texts = bundle.texts("retain_corpus")[:64]
    a = quantize_model(tiny_model, "gptq", tokenizer=ref_tokenizer, calibration=texts)
    b = quantize_model(tiny_model, "gptq", tokenizer=ref_tokenizer, calibration=texts)
    for (na, ma), (_, mb) in zip(quantizable_linears(a.model), quantizable_linears(b.model)):
        assert torch.equal(ma.weight, mb.weight), na
    assert len(a.records) == 14 and a.settings["calibration_texts"] == 64
    with pytest.raises(InputError, match="calibration"):
        quantize_model(tiny_model, "gptq")
    ao = quantize_model(tiny_model, "gptq-act-order", tokenizer=ref_tokenizer, calibration=texts)
    rec = ao.records["model.layers.0.mlp.down_proj"]
    assert sorted(set(rec.settings["group_index"])) == [0] and torch.isfinite(rec.bin_width).all()


def hessian_from(model, name, tokenizer, texts):
    """2/N Σ xxᵀ of the inputs reaching `name` in `model`, accumulated chunk by chunk like gptq does."""
    module = dict(quantizable_linears(model))[name]
    H, count = None, 0

    def hook(mod, args):
        nonlocal H, count
        x = args[0].reshape(-1, args[0].shape[-1]).double()
        H = x.T @ x if H is None else H + x.T @ x
        count += x.shape[0]

    handle = module.register_forward_pre_hook(hook)
    with torch.no_grad():
        for ids in calibration_chunks(texts, tokenizer, 256, 256, seed=0):
            model(input_ids=ids)
    handle.remove()
    return H * (2.0 / count)


def test_layers_are_fed_by_quantized_predecessors(tiny_model, ref_tokenizer, bundle):
    texts = bundle.texts("retain_corpus")[:64]
    qm = quantize_model(tiny_model, "gptq", tokenizer=ref_tokenizer, calibration=texts)
    name = "model.layers.1.self_attn.q_proj"
    w = linear_weight(dict(quantizable_linears(tiny_model))[name])
    got = linear_weight(dict(quantizable_linears(qm.model))[name])
    # its inputs come from block 0 already quantized (in qm.model, block 1 sees exactly those inputs)
    from_quantized = gptq_quantize_weight(w, hessian_from(qm.model, name, ref_tokenizer, texts)).weight
    from_full = gptq_quantize_weight(w, hessian_from(tiny_model, name, ref_tokenizer, texts)).weight
    assert torch.equal(got, from_quantized)
    assert not torch.equal(got, from_full)
