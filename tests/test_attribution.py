"""EAP / EAP-IG: completeness, agreement with exact activation patching, hooks, padding, faithfulness."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import tiny_llama
from mansu_audit.circuits import (adapter_for, attribute, empty_circuit, faithfulness, full_circuit,
                                  random_circuit, select_circuit)
from mansu_audit.circuits.attribution import (alphas_for, embed, encode_items, make_batches, pad_id, run_metric,
                                              score_embeddings)
from mansu_audit.circuits.hooks import node_hooks


@pytest.fixture(scope="module")
def items(bundle):
    return bundle.split("forget_attr")[:12]


@pytest.fixture(scope="module")
def model(ref_tokenizer):
    return tiny_llama(len(ref_tokenizer), seed=3)


def _completeness_error(model, tok, items, steps):
    a = attribute(model, tok, items, steps=steps, batch_size=6)
    delta = a.metric_clean - a.metric_corrupt
    return float((a.input_items.double() - delta).abs().max()), float(delta.abs().max())


def test_completeness_error_shrinks_with_steps(model, ref_tokenizer, items):
    errors = {s: _completeness_error(model, ref_tokenizer, items, s) for s in (1, 4, 16)}
    scale = errors[16][1]
    assert scale > 1e-3  # the corruption changes the metric at all
    assert errors[4][0] < errors[1][0] / 4
    assert errors[16][0] < errors[4][0] / 4
    assert errors[16][0] < 0.01 * scale


def _patched_metric(adapter, batch, e_clean, corrupt_acts, kind, layer, index):
    def patch(k, l, x):
        if k != kind or l != layer:
            return None
        x = x.clone()
        if kind == "mlp":
            x[..., index] = corrupt_acts[(k, l)][..., index]
        else:
            sl = slice(index * adapter.head_dim, (index + 1) * adapter.head_dim)
            x[..., sl] = corrupt_acts[(k, l)][..., sl]
        return x

    with torch.no_grad(), node_hooks(adapter, patch):
        return run_metric(adapter, e_clean, batch)


def _one_batch(model, tok, items):
    adapter = adapter_for(model)
    encoded, _ = encode_items(tok, items)
    batch = make_batches(encoded, len(encoded), pad_id(tok), torch.device("cpu"))[0]
    return adapter, batch, embed(adapter, batch.clean), embed(adapter, batch.corrupt)


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_scores_match_exact_patching_for_small_perturbations(model, ref_tokenizer, items, method):
    """For a corrupted input close to the clean one, a node's score equals the metric drop when that
    node alone is patched to its corrupted activation (first order: relative error O(eps))."""
    adapter, batch, e_clean, _ = _one_batch(model, ref_tokenizer, items[:4])
    torch.manual_seed(0)
    e_near = e_clean + 4e-4 * torch.randn_like(e_clean) * batch.mask[:, :, None]
    scores = score_embeddings(adapter, e_clean, e_near, batch, alphas_for(method, 4))
    acts = {}
    with torch.no_grad(), node_hooks(adapter, lambda k, l, x: acts.__setitem__((k, l), x.clone())):
        run_metric(adapter, e_near, batch)
    m_clean = scores.metric_clean
    scale = float(scores.mlp.abs().max())
    assert scale > 0
    checked = 0
    for layer in range(adapter.n_layers):
        mean_abs = scores.mlp[:, layer].abs().mean(0)
        for neuron in torch.topk(mean_abs, 3).indices.tolist():
            exact = m_clean - _patched_metric(adapter, batch, e_clean, acts, "mlp", layer, neuron)
            torch.testing.assert_close(scores.mlp[:, layer, neuron], exact, rtol=0.1, atol=0.01 * scale)
            checked += 1
        for head in range(adapter.n_heads):
            exact = m_clean - _patched_metric(adapter, batch, e_clean, acts, "attn", layer, head)
            torch.testing.assert_close(scores.heads[:, layer, head], exact, rtol=0.1, atol=0.01 * scale)
            checked += 1
    assert checked == adapter.n_layers * (3 + adapter.n_heads)


def test_eap_ig_ranks_nodes_like_exact_patching_on_real_corruptions(model, ref_tokenizer, items):
    """With the real (entity-swap) corruption, EAP-IG scores of single neurons correlate with exact patching."""
    adapter, batch, e_clean, e_corrupt = _one_batch(model, ref_tokenizer, items[:6])
    scores = score_embeddings(adapter, e_clean, e_corrupt, batch, alphas_for("eap-ig", 5))
    acts = {}
    with torch.no_grad(), node_hooks(adapter, lambda k, l, x: acts.__setitem__((k, l), x.clone())):
        run_metric(adapter, e_corrupt, batch)
    layer = adapter.n_layers - 1
    mean = scores.mlp[:, layer].mean(0)
    chosen = torch.topk(mean.abs(), 20).indices.tolist()
    exact = torch.stack([(scores.metric_clean - _patched_metric(adapter, batch, e_clean, acts, "mlp", layer, n)).mean()
                         for n in chosen])
    approx = mean[chosen]
    corr = torch.corrcoef(torch.stack([approx, exact.float()]))[0, 1]
    assert corr > 0.95


def test_hooks_leave_logits_unchanged(model, ref_tokenizer, items):
    adapter, batch, e_clean, _ = _one_batch(model, ref_tokenizer, items[:4])
    with torch.no_grad():
        before = model(input_ids=batch.clean, attention_mask=batch.mask).logits
        with node_hooks(adapter, lambda k, l, x: None):
            hooked = model(input_ids=batch.clean, attention_mask=batch.mask).logits
    attribute(model, ref_tokenizer, items[:4], steps=2)
    with torch.no_grad():
        after = model(input_ids=batch.clean, attention_mask=batch.mask).logits
    assert torch.equal(before, hooked) and torch.equal(before, after)
    assert all(not layer.down_proj._forward_pre_hooks and not layer.o_proj._forward_pre_hooks
               for layer in adapter.layers)
    assert all(p.grad is None for p in model.parameters())


def test_batching_and_padding_do_not_change_scores(model, ref_tokenizer, items):
    lengths = {len(ref_tokenizer(it.question).input_ids) for it in items}
    assert len(lengths) > 1  # the batch really mixes lengths (right padding in play)
    alone = attribute(model, ref_tokenizer, items, steps=3, batch_size=1)
    batched = attribute(model, ref_tokenizer, items, steps=3, batch_size=12)
    assert alone.item_ids == batched.item_ids
    torch.testing.assert_close(alone.mlp_items, batched.mlp_items, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(alone.heads_items, batched.heads_items, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(alone.metric_clean, batched.metric_clean, rtol=1e-5, atol=1e-6)


def test_items_with_mismatched_corrupt_length_are_skipped(model, ref_tokenizer, items):
    bad = dataclasses.replace(items[0], id="bad", extra={"corrupt": items[0].corrupt + " and its many cousins"})
    none = dataclasses.replace(items[1], id="none", extra={})
    a = attribute(model, ref_tokenizer, [bad, none, *items[2:5]], steps=1)
    assert a.skipped == ("bad", "none") and a.n_items == 3
    assert a.mlp_items.shape == (3, 2, 128) and a.heads_items.shape == (3, 2, 4)
    torch.testing.assert_close(a.mlp, a.mlp_items.mean(0))


def test_faithfulness_full_is_one_and_empty_is_zero(model, ref_tokenizer, items):
    assert faithfulness(model, ref_tokenizer, items, full_circuit(model)) == pytest.approx(1.0, abs=1e-5)
    assert faithfulness(model, ref_tokenizer, items, empty_circuit(model)) == pytest.approx(0.0, abs=1e-5)


def test_selected_circuit_counts_parameters_and_beats_random(model, ref_tokenizer, items):
    a = attribute(model, ref_tokenizer, items, steps=4)
    adapter = adapter_for(model)
    per_neuron = 3 * 64  # gate row + up row + down column (no biases in Llama)
    assert a.neuron_params == per_neuron and a.mlp_params == 2 * 3 * 64 * 128
    c = select_circuit(a, 0.05)
    assert c.n_neurons == round(0.05 * a.mlp_params / per_neuron) and c.n_params == c.n_neurons * per_neuron
    assert c.frac == pytest.approx(c.n_params / a.mlp_params)
    chosen = a.mlp.abs()[c.neuron_mask()]
    assert chosen.min() >= a.mlp.abs()[~c.neuron_mask()].max()
    r = random_circuit(model, same_size_as=c, seed=1)
    assert r.n_neurons == c.n_neurons and r.kind == "random"
    assert not torch.equal(r.neuron_mask(), c.neuron_mask())
    # a larger attribution circuit keeps more of the metric than a random one of the same size
    big = select_circuit(a, 0.3)
    f_big = faithfulness(model, ref_tokenizer, items, big)
    f_rand = faithfulness(model, ref_tokenizer, items, random_circuit(model, same_size_as=big, seed=0))
    assert abs(1 - f_big) < abs(1 - f_rand)
    assert adapter.n_heads == 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, ref_tokenizer):
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path, safe_serialization=True)
    ref_tokenizer.save_pretrained(path)
    return path


def test_attribute_cli_writes_scores_circuit_and_faithfulness(model_dir, tmp_path, capsys):
    import json

    from mansu_audit.cli import main

    out = tmp_path / "circuit.json"
    rc = main(["attribute", "--model", str(model_dir), "--out-file", str(out), "--circuit-frac", "0.05",
               "--steps", "2", "--quiet"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["attribution"]["n_items"] + report["attribution"]["n_skipped"] == 120
    assert len(report["node_scores"]["mlp"]) == 2 and len(report["node_scores"]["mlp"]["0"]) == 128
    assert len(report["node_scores"]["heads"]["1"]) == 4
    assert report["circuit"]["n_neurons"] == round(0.05 * 2 * 128)
    assert set(report["faithfulness"]) == {"circuit", "random_circuit", "no_neurons"}
    assert report["timing"]["attribution_seconds"] > 0
    # bad input: one line, exit 2, nothing written
    bad = tmp_path / "bad.json"
    assert main(["attribute", "--model", str(model_dir), "--out-file", str(bad), "--circuit-frac", "2"]) == 2
    assert not bad.exists()
    assert "circuit-frac" in capsys.readouterr().err
