"""CAD (SPEC §7): the formula on known attributions, self-CAD = 0, zeroed circuit = 1, random control."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from mansu_audit.circuits import Circuit, adapter_for, attribute, compute_cad, faithfulness, select_circuit
from mansu_audit.circuits.cad import cad_from_attributions
from mansu_audit.circuits.circuit import random_circuit


def zero_circuit_neurons(model: torch.nn.Module, circuit: Circuit) -> torch.nn.Module:
    """A copy of `model` whose circuit neurons are removed (rows of gate/up and columns of down zeroed)."""
    out = copy.deepcopy(model)
    adapter = adapter_for(out)
    with torch.no_grad():
        for layer, idx in circuit.neurons.items():
            mods = adapter.layers[layer]
            for m in (mods.gate_proj, mods.up_proj):
                m.weight[idx] = 0.0
            mods.down_proj.weight[:, idx] = 0.0
    return out


@pytest.fixture(scope="module")
def items(bundle):
    return bundle.split("forget_attr")[:12]


@pytest.fixture(scope="module")
def model(ref_tokenizer):
    return tiny_llama(len(ref_tokenizer), seed=5)


@pytest.fixture(scope="module")
def base_attr(model, ref_tokenizer, items):
    return attribute(model, ref_tokenizer, items, steps=3)


def _scaled(attr, factor_mlp):
    return dataclasses.replace(attr, mlp_items=attr.mlp_items * factor_mlp, mlp_mean=attr.mlp_mean * factor_mlp)


def test_cad_formula_on_known_attributions(model, base_attr):
    circuit = select_circuit(base_attr, 0.05)
    control = random_circuit(model, same_size_as=circuit, seed=0)
    for factor, expected in ((1.0, 0.0), (0.25, 0.75), (0.0, 1.0), (-1.0, 2.0)):
        res = cad_from_attributions(base_attr, _scaled(base_attr, factor), circuit, random_control=control, B=500)
        assert res.cad.point == pytest.approx(expected, abs=1e-6)
        assert res.random_cad.point == pytest.approx(expected, abs=1e-6)  # a uniform change hits every node
        assert res.cad.low <= res.cad.point + 1e-9 and res.cad.high >= res.cad.point - 1e-9
    # by hand: 1 − Σ_C s_c a_u(c) / Σ_C |a_0(c)| with a different candidate
    rng = np.random.default_rng(0)
    cand = dataclasses.replace(base_attr, mlp_items=base_attr.mlp_items + torch.from_numpy(
        rng.normal(0, 1e-3, base_attr.mlp_items.shape).astype(np.float32)))
    cand = dataclasses.replace(cand, mlp_mean=cand.mlp_items.mean(0))
    res = cad_from_attributions(base_attr, cand, circuit, random_control=control, B=500)
    mask = circuit.neuron_mask()
    a0, au = base_attr.mlp_items.double().mean(0)[mask], cand.mlp_items.double().mean(0)[mask]
    assert res.cad.point == pytest.approx(float(1 - (torch.sign(a0) * au).sum() / a0.abs().sum()), rel=1e-6)


def test_cad_of_a_model_against_itself_is_zero(model, ref_tokenizer, items, base_attr):
    res = compute_cad(model, model, ref_tokenizer, items, circuit_frac=0.05, steps=3, B=1000,
                      base_attribution=base_attr)
    assert res.cad.point == pytest.approx(0.0, abs=1e-6)
    assert res.cad.low <= 1e-6 and res.cad.high >= -1e-6
    assert res.cosine_distance == pytest.approx(0.0, abs=1e-6) and res.topk_jaccard == 1.0
    d = res.to_dict()
    assert d["cad"]["n"] == len(items) and d["circuit"]["n_neurons"] == res.circuit.n_neurons


def test_cad_of_zeroed_circuit_is_one_and_random_control_is_lower(model, ref_tokenizer, items, base_attr):
    circuit = select_circuit(base_attr, 0.05)
    ablated = zero_circuit_neurons(model, circuit)
    res = compute_cad(model, ablated, ref_tokenizer, items, circuit=circuit, steps=3, B=1000,
                      base_attribution=base_attr)
    assert res.cad.point == pytest.approx(1.0, abs=1e-5)  # the circuit's neurons carry no attribution at all
    assert res.cad.low == pytest.approx(1.0, abs=1e-5)
    assert res.topk_jaccard == 0.0  # the re-discovered circuit avoids the dead neurons
    assert abs(res.random_cad.point) < abs(res.cad.point)


@pytest.mark.slow
def test_reference_model_cad_self_zero_and_zeroed_circuit_one(reference, bundle):
    items = bundle.split("forget_attr")
    model, tok = reference.model, reference.tokenizer
    base = attribute(model, tok, items, steps=5)
    circuit = select_circuit(base, 0.01)
    f = faithfulness(model, tok, items, circuit)
    assert np.isfinite(f)
    same = compute_cad(model, model, tok, items, circuit=circuit, base_attribution=base, B=2000)
    assert same.cad.low <= 0.0 <= same.cad.high
    ablated = compute_cad(model, zero_circuit_neurons(model, circuit), tok, items, circuit=circuit,
                          base_attribution=base, B=2000)
    assert ablated.cad.point == pytest.approx(1.0, abs=1e-3)
    assert ablated.random_cad.point < 0.9


def test_cad_cli_json_with_a_quantizer(tmp_path, model, ref_tokenizer, capsys):
    import json

    from mansu_audit.cli import main

    base_dir, cand_dir = tmp_path / "base", tmp_path / "cand"
    model.save_pretrained(base_dir, safe_serialization=True)
    ref_tokenizer.save_pretrained(base_dir)
    candidate = copy.deepcopy(model)
    with torch.no_grad():
        for layer in candidate.model.layers:
            layer.mlp.down_proj.weight.mul_(0.5)
    candidate.save_pretrained(cand_dir, safe_serialization=True)
    ref_tokenizer.save_pretrained(cand_dir)
    capsys.readouterr()
    rc = main(["cad", "--base", str(base_dir), "--candidate", str(cand_dir), "--steps", "1", "--bootstrap", "200",
               "--circuit-frac", "0.05", "--quantizers", "fp32,nf4", "--json"])  # fp32: the unquantized alias
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["results"]) == {"unquantized", "nf4"}
    assert out["unquantized"]["dtype"] == {"base": "float32", "candidate": "float32"}
    unquantized = out["results"]["unquantized"]["cad"]
    assert unquantized["low"] <= unquantized["point"] <= unquantized["high"] and unquantized["B"] == 200
    assert main(["cad", "--base", str(base_dir), "--candidate", str(cand_dir), "--quantizers", "nope"]) == 2
