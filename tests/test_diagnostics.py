"""Permanence diagnostics: identities on constructed updates, JSON and CLI."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from mansu_audit.diagnostics import DATA_FREE_GPTQ, GPTQ_DATAFREE, HISTOGRAM_EDGES, diagnose
from mansu_audit.errors import InputError
from mansu_audit.quantizers import linear_weight, quantizable_linears, quantize_model
from mansu_audit.quantizers.nf4 import fake_quant_4bit, nf4_bin_geometry


def perturbed(model, fn):
    """Copy of `model` with every quantizable weight W replaced by fn(name, W)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in quantizable_linears(out):
            module.weight.copy_(fn(name, module.weight.detach().clone()))
    return out


def test_identical_models_show_nothing(tiny_model):
    d = diagnose(tiny_model, tiny_model, ["nf4", "int8"])
    for q in d.quantizers.values():
        o = q.overall
        assert o.frac_updated == o.rms_delta == o.rms_delta_over_bin == o.frac_code_changed == 0.0
        assert o.frac_value_changed == 0.0
        assert o.histogram[0] == o.n == sum(o.histogram)


def test_tiny_updates_are_invisible_and_bin_sized_updates_are_not(tiny_model):
    width = {n: nf4_bin_geometry(linear_weight(m)).bin_width for n, m in quantizable_linears(tiny_model)}
    # 1/1000 of the local bin width on every weight: RMS ratio exactly 1e-3, nothing reaches half a gap
    small = perturbed(tiny_model, lambda n, w: w + 1e-3 * width[n])
    d = diagnose(tiny_model, small, ["nf4"]).quantizers["nf4"].overall
    assert d.rms_delta_over_bin == pytest.approx(1e-3, rel=1e-3)
    assert d.frac_over_half_gap == 0.0 and d.frac_code_changed < 0.01
    # ...yet most deployed values move, because each block's absmax moved with its weights
    assert d.frac_value_changed > 0.5
    # a full bin width up (away from the block absmax): almost every weight changes code
    big = perturbed(tiny_model, lambda n, w: w + 1.0 * width[n] * (w.abs() < 0.5 * w.abs().max()))
    b = diagnose(tiny_model, big, ["nf4"]).quantizers["nf4"].overall
    assert b.frac_over_half_gap > 0.4 and b.frac_code_changed > 0.3


def test_layer_numbers_match_direct_computation(tiny_model):
    g = torch.Generator().manual_seed(0)
    cand = perturbed(tiny_model, lambda n, w: w + 0.004 * torch.randn(w.shape, generator=g))
    d = diagnose(tiny_model, cand, ["nf4"]).quantizers["nf4"]
    base_layers, cand_layers = dict(quantizable_linears(tiny_model)), dict(quantizable_linears(cand))
    total_changed = total = 0
    for s in d.layers:
        w0, w1 = linear_weight(base_layers[s.name]), linear_weight(cand_layers[s.name])
        delta = w1.double() - w0.double()
        width = nf4_bin_geometry(w0).bin_width.double()
        (q0, c0, _), (q1, c1, _) = fake_quant_4bit(w0), fake_quant_4bit(w1)
        assert s.rms_delta_over_bin == pytest.approx(float(((delta / width) ** 2).mean().sqrt()), rel=1e-9)
        assert s.frac_over_half_gap == pytest.approx(float((delta.abs() >= width / 2).double().mean()))
        assert s.frac_code_changed == pytest.approx(float((c0 != c1).double().mean()))
        assert s.frac_value_changed == pytest.approx(float((q0 != q1).double().mean()))
        counts = torch.histc((delta.abs() / width).clamp(max=1e9), bins=1, min=0, max=1e9)
        assert sum(s.histogram) == s.n == int(counts.sum())
        total_changed += int((c0 != c1).sum())
        total += s.n
    assert d.overall.frac_code_changed == pytest.approx(total_changed / total)
    assert len(d.overall.histogram) == len(HISTOGRAM_EDGES) - 1


def test_data_free_gptq_and_to_dict(tiny_model):
    cand = perturbed(tiny_model, lambda n, w: w * 1.01)
    d = diagnose(tiny_model, cand, ["gptq", "rtn-int4-g128", "int8"])
    # without calibration "gptq" is reported under the proxy's own name, never as gptq
    assert list(d.quantizers) == [GPTQ_DATAFREE, "rtn-int4-g128", "int8"]
    assert d.quantizers[GPTQ_DATAFREE].mode == DATA_FREE_GPTQ and d.quantizers["int8"].mode == "exact"
    assert list(diagnose(tiny_model, cand, [GPTQ_DATAFREE, "gptq-act-order"]).quantizers) == [GPTQ_DATAFREE]
    payload = json.loads(json.dumps(d.to_dict()))
    assert payload["histogram_edges"][-1] == "inf"
    assert set(payload["quantizers"]) == {GPTQ_DATAFREE, "rtn-int4-g128", "int8"}
    assert len(payload["quantizers"][GPTQ_DATAFREE]["layers"]) == 14
    # int8's grid is finer than 4-bit: the same update is larger relative to its bin width
    assert d.quantizers["int8"].overall.rms_delta_over_bin > d.quantizers["rtn-int4-g128"].overall.rms_delta_over_bin


def test_calibrated_gptq_diagnosis(tiny_model, ref_tokenizer, bundle):
    cand = perturbed(tiny_model, lambda n, w: w * 1.02)
    d = diagnose(tiny_model, cand, ["gptq"], calibration=bundle.texts("retain_corpus")[:32],
                 tokenizer=ref_tokenizer).quantizers["gptq"]
    assert d.mode.startswith("calibrated") and 0 < d.overall.frac_code_changed < 1
    assert math.isfinite(d.overall.rms_delta_over_bin)


def test_mismatched_architectures_are_rejected(tiny_model, ref_tokenizer):
    from conftest import tiny_llama

    other = tiny_llama(len(ref_tokenizer), hidden=32, intermediate=64)
    with pytest.raises(InputError, match="architecture"):
        diagnose(tiny_model, other, ["nf4"])


@pytest.fixture()
def saved_pair(tmp_path, tiny_model, ref_tokenizer):
    base, cand = tmp_path / "base", tmp_path / "cand"
    tiny_model.save_pretrained(base)
    perturbed(tiny_model, lambda n, w: w + 0.01 * (n.endswith("down_proj"))).save_pretrained(cand)
    ref_tokenizer.save_pretrained(base)
    ref_tokenizer.save_pretrained(cand)
    return base, cand


def test_cli_json_and_table(saved_pair, capsys):
    from mansu_audit.cli import main

    base, cand = saved_pair
    assert main(["diagnose", "--base", str(base), "--candidate", str(cand), "--quantizers", "nf4,gptq,int8",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["quantizers"]) == ["nf4", GPTQ_DATAFREE, "int8"]  # no calibration: the proxy's own name
    nf4 = out["quantizers"]["nf4"]
    changed = [layer for layer in nf4["layers"] if layer["frac_updated"] > 0]
    assert changed and all(layer["name"].endswith("down_proj") for layer in changed)
    assert main(["diagnose", "--base", str(base), "--candidate", str(cand), "--quantizers", "nf4"]) == 0
    table = capsys.readouterr().out
    assert "rms(d)/bin" in table and "overall" in table
    assert main(["diagnose", "--base", str(base), "--candidate", str(cand)]) == 0  # default: nf4,gptq-datafree,int8
    table = capsys.readouterr().out
    assert GPTQ_DATAFREE in table and "note: gptq-datafree: data-free proxy" in table


def test_cli_unknown_quantizer_exits_2(saved_pair, capsys):
    from mansu_audit.cli import main

    base, cand = saved_pair
    assert main(["diagnose", "--base", str(base), "--candidate", str(cand), "--quantizers", "nf9"]) == 2
    assert "unknown quantizer" in capsys.readouterr().err
