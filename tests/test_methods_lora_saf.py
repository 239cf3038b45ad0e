"""Quantization-aware baselines: `lora-ga`, `lora-npo` (adapter-only unlearning) and `saf` (STE + SAM)."""
from __future__ import annotations

import json

import pytest
import torch

from mansu_audit.cli import main
from mansu_audit.errors import InputError
from mansu_audit.loading import load_model, model_from_objects
from mansu_audit.loading.lora import merge_lora, read_adapter_config, read_adapter_weights
from mansu_audit.methods import get_method
from mansu_audit.methods.base import UnlearnContext, parse_overrides, settings_dict
from mansu_audit.methods.saf import sam_objective, ste_fake_quant
from mansu_audit.methods.loop import collate, corpus_sequences, sequence_nll
from mansu_audit.quantizers import quantize_weights, weight_dequantizer, weight_quantizer
from mansu_audit.unlearn import unlearn
from test_methods import forget_nll, small_bundle, small_model, trained_base  # noqa: F401  (fixtures)

pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # peft calls a deprecated transformers helper
FAST = {"steps": 4, "batch_size": 8}


def run(name, base, tokenizer, bundle, seed=0, **extra):
    cls = get_method(name)
    settings = parse_overrides(cls.Settings, {**FAST, **extra})
    return cls().run(UnlearnContext(base, tokenizer, bundle, seed=seed, progress=False), settings)


def logits(model, tokenizer, bundle):
    batch = collate(corpus_sequences(tokenizer, bundle.texts("forget_corpus")[:4]), tokenizer.pad_token_id)
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


# --------------------------------------------------------------------------- lora-ga, lora-npo


@pytest.mark.parametrize("name", ["lora-ga", "lora-npo"])
def test_lora_methods_train_only_the_adapter(name, ref_tokenizer, small_bundle, trained_base):
    snapshot = {n: p.clone() for n, p in trained_base.state_dict().items()}
    rng = torch.get_rng_state()
    result = run(name, trained_base, ref_tokenizer, small_bundle)
    assert torch.equal(rng, torch.get_rng_state())  # peft's own init ran under fork_rng
    assert all(torch.equal(snapshot[n], p) for n, p in trained_base.state_dict().items())  # θ0 untouched
    state = result.model.state_dict()
    base_keys = {k: k.replace("base_model.model.", "", 1).replace(".base_layer", "") for k in state if "lora_" not in k}
    assert set(base_keys.values()) == set(snapshot)
    assert all(torch.equal(state[k], snapshot[v]) for k, v in base_keys.items())  # base frozen, bit-identical
    lora_b = [p for k, p in state.items() if ".lora_B." in k]
    assert len(lora_b) == 2 * 7 and all(p.abs().max() > 0 for p in lora_b)  # every Linear of both blocks trained
    assert result.diagnostics["lora"]["adapter_parameters"] == sum(p.numel() for k, p in state.items() if "lora_" in k)
    assert forget_nll(result.model, ref_tokenizer, small_bundle) > forget_nll(trained_base, ref_tokenizer, small_bundle)
    json.dumps(result.diagnostics)


def test_lora_is_deterministic_under_a_seed(ref_tokenizer, small_bundle):
    base = small_model(len(ref_tokenizer))
    states = [run("lora-ga", base, ref_tokenizer, small_bundle, seed=s, steps=1).model.state_dict() for s in (3, 3, 4)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_lora_adapter_folder_loads_and_merges_exactly(tmp_path, ref_tokenizer, small_bundle):
    base_dir = tmp_path / "base"
    small_model(len(ref_tokenizer), seed=1).save_pretrained(str(base_dir))
    ref_tokenizer.save_pretrained(str(base_dir))
    out = tmp_path / "adapter"
    result = unlearn("lora-npo", base_dir, small_bundle, seed=0, overrides={**FAST, "rank": 4}, out=out)
    assert {"adapter_config.json", "adapter_model.safetensors", "unlearn.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "model.safetensors").exists()
    cfg = read_adapter_config(out)
    assert cfg["base_model_name_or_path"] == str(base_dir.resolve()) and cfg["r"] == 4
    record = json.loads((out / "unlearn.json").read_text())
    assert record["method"] == "lora-npo" and record["settings"]["save"] == "adapter"

    unmerged = logits(result.model, ref_tokenizer, small_bundle)
    merged = logits(result.model.merge_and_unload(), ref_tokenizer, small_bundle)
    loaded = load_model(out)  # what `certify --candidate out` loads: the adapter merged over its base
    assert any(n.endswith("merged over base " + str(base_dir.resolve()) + " by peft") for n in loaded.notes)
    assert torch.equal(logits(loaded.model, ref_tokenizer, small_bundle), merged)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    builtin = load_model(base_dir).model  # the built-in (peft-free) merge agrees too
    merge_lora(builtin, read_adapter_weights(out, False)[0], cfg, out)
    torch.testing.assert_close(logits(builtin, ref_tokenizer, small_bundle), merged, atol=1e-5, rtol=1e-5)


def test_lora_save_merged_writes_a_dense_checkpoint(tmp_path, ref_tokenizer, small_bundle):
    base = model_from_objects(small_model(len(ref_tokenizer)), ref_tokenizer, "tiny")
    with pytest.raises(InputError, match="built in memory.*save=merged"):
        unlearn("lora-ga", base, small_bundle, overrides=FAST, out=tmp_path / "a")
    assert list(tmp_path.iterdir()) == []  # refused before training, nothing written
    out = tmp_path / "merged"
    unlearn("lora-ga", base, small_bundle, overrides={**FAST, "save": "merged", "target_modules": "q_proj,v_proj"},
            out=out)
    loaded = load_model(out)
    changed = {n for n, p in loaded.model.state_dict().items() if not torch.equal(p, base.model.state_dict()[n])}
    assert changed == {f"model.layers.{i}.self_attn.{m}.weight" for i in (0, 1) for m in ("q_proj", "v_proj")}


# --------------------------------------------------------------------------- saf


def test_saf_ste_gradient_is_the_dense_gradient_at_the_quantized_weights(ref_tokenizer, small_bundle):
    model = small_model(len(ref_tokenizer), seed=2)
    dense = small_model(len(ref_tokenizer), seed=2)
    quantize_weights(dense, weight_quantizer("nf4"))  # the certified nf4 model q(w), as `certify` builds it
    batch = collate(corpus_sequences(ref_tokenizer, small_bundle.texts("forget_corpus")[:4]), ref_tokenizer.pad_token_id)
    with ste_fake_quant(model, weight_dequantizer("nf4")) as parts:
        assert len(parts) == 14
        torch.testing.assert_close(logits(model, ref_tokenizer, small_bundle), logits(dense, ref_tokenizer,
                                                                                    small_bundle), atol=0, rtol=0)
        sequence_nll(model, batch).mean().backward()
        modules = dict(model.named_modules())
        ste = {n: modules[n].parametrizations.weight.original.grad for n in parts}
    sequence_nll(dense, batch).mean().backward()
    reference = dict(dense.named_modules())
    for name, grad in ste.items():
        torch.testing.assert_close(grad, reference[name].weight.grad, atol=1e-7, rtol=1e-5)
    assert not any("parametrizations" in n for n, _ in model.named_parameters())  # removed on exit


def test_saf_sam_ascent_has_radius_rho_and_leaves_the_weights(ref_tokenizer, small_bundle):
    model = small_model(len(ref_tokenizer), seed=2)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    batch = collate(corpus_sequences(ref_tokenizer, small_bundle.texts("forget_corpus")[:4]), ref_tokenizer.pad_token_id)
    with ste_fake_quant(model, weight_dequantizer("nf4")) as parts:
        modules = dict(model.named_modules())
        originals = {n: modules[n].parametrizations.weight.original for n in parts}
        objective = sam_objective(lambda m, f, r: {"forget": -sequence_nll(m, f).mean()}, parts, originals, rho=0.3)
        perturbed = objective(model, batch, None, 0)["forget"]
        norm = torch.sqrt(sum((p.eps ** 2).sum() for p in parts.values()))
        assert abs(float(norm) - 0.3) < 1e-5
        for p in parts.values():
            p.eps = None
        assert float(perturbed.detach()) != float(-sequence_nll(model, batch).mean().detach())
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # ε never moved w


@pytest.mark.parametrize("rho", [0.0, 0.05])
def test_saf_trains_dense_weights_and_keeps_base(rho, ref_tokenizer, small_bundle, trained_base):
    snapshot = {n: p.clone() for n, p in trained_base.state_dict().items()}
    result = run("saf", trained_base, ref_tokenizer, small_bundle, rho=rho, lr=1e-3)
    assert all(torch.equal(snapshot[n], p) for n, p in trained_base.state_dict().items())
    assert set(result.model.state_dict()) == set(snapshot)  # an ordinary model again (no parametrizations)
    assert forget_nll(result.model, ref_tokenizer, small_bundle) > forget_nll(trained_base, ref_tokenizer, small_bundle)
    assert result.diagnostics["saf"] == {"quantizer": "nf4", "rho": rho, "fake_quantized_weights": 14}


@pytest.mark.parametrize("name", ["nf4", "nf4-dq", "fp4", "int8"])
def test_weight_dequantizer_is_the_registered_quantizer_bit_for_bit(name):
    weight = torch.randn(48, 200, generator=torch.Generator().manual_seed(0))
    assert torch.equal(weight_dequantizer(name)(weight), weight_quantizer(name)("w", weight)[0])


# --------------------------------------------------------------------------- settings, listing


@pytest.mark.parametrize("name", ["lora-ga", "lora-npo", "saf"])
def test_settings_round_trip(name):
    cls = get_method(name)
    settings = parse_overrides(cls.Settings, ["steps=7", "lr=0.002"])
    assert parse_overrides(cls.Settings, settings_dict(settings)) == settings
    assert parse_overrides(cls.Settings, [f"{k}={v}" for k, v in settings_dict(settings).items()]) == settings


@pytest.mark.parametrize("name, override, message", [
    ("lora-ga", "save=both", "expected one of adapter, merged"),
    ("lora-ga", "rank=0", "rank=0: must be at least 1"),
    ("lora-npo", "target_modules=nope_proj", "target_modules='nope_proj'"),
    ("saf", "quantizer=gptq", "not weight-wise"),
    ("saf", "quantizer=nf5", "unknown quantizer 'nf5'"),
])
def test_bad_settings_are_one_line_input_errors(name, override, message, ref_tokenizer, small_bundle):
    with pytest.raises(InputError, match=message):
        unlearn(name, model_from_objects(small_model(len(ref_tokenizer)), ref_tokenizer, "tiny"), small_bundle,
                overrides=[override, "steps=1", "batch_size=2"])


def test_methods_command_lists_the_quantization_aware_baselines(capsys):
    assert main(["methods", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["lora-ga"]["settings"]["save"] == {"type": "str", "default": "adapter",
                                                    "choices": ["adapter", "merged"]}
    assert {"rank", "alpha", "target_modules", "beta", "retain_weight"} <= set(table["lora-npo"]["settings"])
    assert table["saf"]["settings"]["rho"]["default"] == 0.05 and table["saf"]["settings"]["quantizer"]["default"] == "nf4"
