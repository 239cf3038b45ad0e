"""MANSU end to end on a tiny Llama: retain outputs preserved by the projection, forgetting,
the floor's post-condition, determinism and the ablation flags."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import tiny_llama
from mansu_audit.data import Bundle
from mansu_audit.methods import get_method
from mansu_audit.methods.base import UnlearnContext, parse_overrides
from mansu_audit.methods.loop import collate, corpus_sequences, forget_sequences, sequence_nll
from mansu_audit.methods.mansu import MansuSettings


def small_bundle(bundle: Bundle, n_retain: int = 3, n_attr: int = 12, n_forget: int = 24) -> Bundle:
    """A slice of synthhazard: few retain sentences keep the retain activations rank-deficient."""
    mcq = dict(bundle.mcq, forget_attr=bundle.mcq["forget_attr"][:n_attr])
    corpus = {"forget_corpus": bundle.corpus["forget_corpus"][:n_forget],
              "retain_corpus": bundle.corpus["retain_corpus"][:n_retain]}
    return replace(bundle, mcq=mcq, corpus=corpus)


def settings(**overrides) -> MansuSettings:
    base = {"steps": 6, "lr": 1e-3, "batch_size": 4, "forget_source": "attr", "circuit_frac": 0.1, "fisher_sequences": 0,
            "activation_sequences": 0, "postcondition_gptq": False, "null_rtol": 1e-9}
    base.update(overrides)
    return parse_overrides(MansuSettings, base)


def run(model, tokenizer, bundle, seed=0, **overrides):
    method = get_method("mansu")()
    return method.run(UnlearnContext(model, tokenizer, bundle, seed=seed, progress=False), settings(**overrides))


@pytest.fixture(scope="module")
def setup(ref_tokenizer, bundle):
    return tiny_llama(len(ref_tokenizer), hidden=64, intermediate=128), small_bundle(bundle)


@pytest.fixture(scope="module")
def unfloored(setup, ref_tokenizer):
    model, bun = setup
    return run(model, ref_tokenizer, bun, floor="none")


def _retain_logits(model, tokenizer, bun):
    batch = collate(corpus_sequences(tokenizer, bun.texts("retain_corpus")), 2)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return logits[batch.attention_mask.bool()]


def _forget_nll(model, tokenizer, bun) -> float:
    """Mean NLL of the forget training data (forget_attr answer letters)."""
    batch = collate(forget_sequences(bun, tokenizer, "attr"), 2)
    with torch.no_grad():
        return float(sequence_nll(model, batch).mean())


def test_projection_leaves_retain_outputs_unchanged(setup, unfloored, ref_tokenizer):
    model, bun = setup
    theta_u = unfloored.model
    changed = sum(int((a != b).sum()) for a, b in zip(model.parameters(), theta_u.parameters()))
    assert changed > 100  # the circuit really moved...
    before, after = _retain_logits(model, ref_tokenizer, bun), _retain_logits(theta_u, ref_tokenizer, bun)
    # ...yet every retain token's logits are those of θ0 up to float32 rounding
    assert (after - before).abs().max() < 2e-5 * before.abs().max()
    # and the forget answers got less likely
    assert _forget_nll(theta_u, ref_tokenizer, bun) > _forget_nll(model, ref_tokenizer, bun)


def test_only_circuit_coordinates_change(setup, unfloored):
    model, _ = setup
    neurons = {int(l): torch.tensor(v) for l, v in unfloored.diagnostics["circuit"]["neurons"].items()}
    for (name, p0), p1 in zip(model.named_parameters(), unfloored.model.parameters()):
        diff = p0 != p1
        if not diff.any():
            continue
        layer = int(name.split(".")[2])
        allowed = torch.zeros_like(diff)
        if "down_proj" in name:
            allowed[:, neurons[layer]] = True
        else:
            assert "gate_proj" in name or "up_proj" in name, name
            allowed[neurons[layer]] = True
        assert not (diff & ~allowed).any(), name


def test_floor_postcondition_and_bounds(setup, ref_tokenizer, unfloored):
    model, bun = setup
    floored = run(model, ref_tokenizer, bun, floor="boundary", null_rtol=1e-2, fisher_quantile=0.5,
                  postcondition_gptq=True)
    post = floored.diagnostics["postcondition"]
    assert post["passed"] and post["absmax_preserved"]
    assert post["grids"]["nf4"]["fraction"] >= 0.95 and post["grids"]["nf4"]["updated"] > 50
    for grid in ("int8", "gptq"):  # measured, not guaranteed (GPTQ compensates rounding)
        assert post["grids"][grid]["updated"] == post["grids"]["nf4"]["updated"]
        assert 0 <= post["grids"][grid]["fraction"] <= 1
    d = floored.diagnostics
    assert d["fisher_bound_after_floor"] >= d["fisher_bound_before_floor"] >= 0
    # without the floor, tiny Adam steps rarely change an NF4 code
    assert unfloored.diagnostics["postcondition"]["grids"]["nf4"]["fraction"] < 0.5
    assert _forget_nll(floored.model, ref_tokenizer, bun) > _forget_nll(model, ref_tokenizer, bun)


def test_without_projection_retain_outputs_move(setup, ref_tokenizer):
    model, bun = setup
    free = run(model, ref_tokenizer, bun, projection="none", floor="none", steps=3)
    before, after = _retain_logits(model, ref_tokenizer, bun), _retain_logits(free.model, ref_tokenizer, bun)
    assert (after - before).abs().max() > 1e-3 * before.abs().max()


def test_deterministic_under_seed(setup, ref_tokenizer, unfloored):
    model, bun = setup
    again = run(model, ref_tokenizer, bun, floor="none")
    assert all(torch.equal(a, b) for a, b in zip(unfloored.model.parameters(), again.model.parameters()))


def test_theta0_untouched_and_ablations(setup, ref_tokenizer, unfloored):
    model, bun = setup
    snapshot = [p.detach().clone() for p in model.parameters()]
    rand = run(model, ref_tokenizer, bun, circuit="random", floor="none", steps=2)
    glob = run(model, ref_tokenizer, bun, projection="global", floor="none", steps=2, null_rtol=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, model.parameters()))
    eap = unfloored.diagnostics["circuit"]["neurons"]
    assert rand.diagnostics["circuit"]["n_params"] == unfloored.diagnostics["circuit"]["n_params"]
    assert rand.diagnostics["circuit"]["neurons"] != eap
    # global projection trains whole MLP matrices: far more coordinates than the circuit
    assert glob.diagnostics["trainable_coordinates"] > 5 * unfloored.diagnostics["trainable_coordinates"]
