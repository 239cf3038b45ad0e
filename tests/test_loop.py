"""The shared unlearning loop: masks, the step-projection hook, gradient transforms, determinism, data."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_llama
from mansu_audit.methods.gu_simnpo import project_out
from mansu_audit.methods.loop import (IGNORE, LoopConfig, SequenceSampler, UnlearnData, corpus_sequences,
                                      mcq_sequences, sequence_nll, train_loop)
from mansu_audit.prompts import LETTERS


def row_mask(param: torch.Tensor, rows) -> torch.Tensor:
    """Bool mask training only `rows` (output units; gate/up rows = MLP neurons)."""
    mask = torch.zeros_like(param, dtype=torch.bool)
    mask[torch.as_tensor(rows, dtype=torch.long)] = True
    return mask


def column_mask(param: torch.Tensor, columns) -> torch.Tensor:
    """Bool mask training only `columns` (input units; down_proj columns = MLP neurons)."""
    mask = torch.zeros_like(param, dtype=torch.bool)
    mask[:, torch.as_tensor(columns, dtype=torch.long)] = True
    return mask


def small_model(vocab: int, seed: int = 0):
    return tiny_llama(vocab, seed=seed, hidden=32, intermediate=64, heads=4, kv_heads=2)


@pytest.fixture(scope="module")
def data(bundle, ref_tokenizer):
    forget = corpus_sequences(ref_tokenizer, bundle.texts("forget_corpus")[:24])
    retain = corpus_sequences(ref_tokenizer, bundle.texts("retain_corpus")[:24])
    return UnlearnData(forget, retain, ref_tokenizer.pad_token_id)


def ga(m, forget, retain, step):
    return {"forget": -sequence_nll(m, forget).mean()}


def cfg(**kw):
    base = dict(steps=3, lr=1e-2, batch_size=4, weight_decay=0.1, seed=0, progress=False)
    base.update(kw)
    return LoopConfig(**base)


def test_masks_leave_masked_entries_bit_identical(ref_tokenizer, data):
    model = small_model(len(ref_tokenizer))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    up, down = "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"
    params = dict(model.named_parameters())
    trainable = {up: row_mask(params[up], [1, 5]), down: column_mask(params[down], [3]),
                 "model.layers.1.self_attn.o_proj.weight": None}
    train_loop(model, ga, data, cfg(), trainable=trainable)  # weight decay on: masked entries must still not move
    after = dict(model.named_parameters())
    for name, p0 in before.items():
        p1 = after[name].detach()
        if name in (up, down):
            mask = trainable[name]
            assert torch.equal(p1[~mask], p0[~mask]), name
            assert (p1[mask] != p0[mask]).all(), name
        elif name in trainable:
            assert not torch.equal(p1, p0)
        else:
            assert torch.equal(p1, p0), name


def test_projection_hook_gets_before_and_after(ref_tokenizer, data):
    torch.manual_seed(0)
    model = small_model(len(ref_tokenizer))
    plain = copy.deepcopy(model)
    name = "model.layers.0.mlp.down_proj.weight"
    trainable = {name: None, "model.layers.1.mlp.gate_proj.weight": None}
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = []

    def keep_first_column(step, before, params):
        calls.append((step, {n: t.clone() for n, t in before.items()},
                      {n: p.detach().clone() for n, p in params.items()}))
        for n, p in params.items():  # keep only the step's first input column
            step_delta = p - before[n]
            step_delta[:, 1:] = 0
            p.copy_(before[n] + step_delta)

    train_loop(model, ga, data, cfg(weight_decay=0.0), trainable=trainable, step_projection=keep_first_column)
    assert [c[0] for c in calls] == [0, 1, 2]
    assert set(calls[0][1]) == set(trainable)
    for n in trainable:  # the first call sees θ0 before, and the optimiser's unprojected step after
        assert torch.equal(calls[0][1][n], start[n])
    train_loop(plain, ga, data, cfg(weight_decay=0.0, steps=1), trainable=trainable)
    for n in trainable:
        assert torch.equal(calls[0][2][n], dict(plain.named_parameters())[n].detach())
        assert not torch.equal(calls[0][2][n][:, 1:], start[n][:, 1:])  # unprojected step touched all columns
        for k in (1, 2):  # each step starts where the projected previous one ended
            projected = calls[k - 1][1][n].clone()
            projected[:, 0] = calls[k - 1][2][n][:, 0]
            assert torch.equal(calls[k][1][n], projected)
        final = dict(model.named_parameters())[n].detach()
        assert torch.equal(final[:, 1:], start[n][:, 1:])
        assert not torch.equal(final[:, 0], start[n][:, 0])


def test_same_seed_same_weights_other_seed_differs(ref_tokenizer, data):
    runs = []
    for seed in (3, 3, 4):
        model = small_model(len(ref_tokenizer))

        def graddiff(m, forget, retain, step):
            return {"forget": -sequence_nll(m, forget).mean(), "retain": sequence_nll(m, retain).mean()}

        train_loop(model, graddiff, data, cfg(seed=seed, steps=2))
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, c) for a, c in zip(runs[0], runs[2]))


def test_loop_draws_only_from_explicit_generators(ref_tokenizer, data):
    """No hidden global state: the process-wide RNG is neither seeded nor advanced; a passed
    generator drives the batches (same generator state, same weights)."""
    torch.manual_seed(123)
    state = torch.get_rng_state()
    runs = []
    for seed in (5, 5, 6):
        model = small_model(len(ref_tokenizer))
        torch.set_rng_state(state)
        train_loop(model, ga, data, cfg(steps=2), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(torch.get_rng_state(), state)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, c) for a, c in zip(runs[0], runs[2]))


def test_gradient_transform_receives_each_terms_gradient(ref_tokenizer, data):
    model = small_model(len(ref_tokenizer))
    name = "model.layers.0.mlp.down_proj.weight"
    seen = {}

    def objective(m, forget, retain, step):
        seen["batches"] = (forget, retain)
        return {"forget": -sequence_nll(m, forget).mean(), "retain": 2.0 * sequence_nll(m, retain).mean()}

    def transform(step, grads):
        seen["grads"] = grads
        return {n: torch.zeros_like(g) for n, g in grads["forget"].items()}

    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_loop(model, objective, data, cfg(steps=1, weight_decay=0.0), trainable={name: None},
               gradient_transform=transform)
    forget, retain = seen["batches"]
    p = dict(model.named_parameters())[name]
    p.requires_grad_(True)
    expect_f, = torch.autograd.grad(-sequence_nll(model, forget).mean(), [p])
    expect_r, = torch.autograd.grad(2.0 * sequence_nll(model, retain).mean(), [p])
    torch.testing.assert_close(seen["grads"]["forget"][name], expect_f)
    torch.testing.assert_close(seen["grads"]["retain"][name], expect_r)
    assert all(torch.equal(start[n], q.detach()) for n, q in model.named_parameters())  # zero step: no change


def test_gu_projection_is_orthogonal_to_the_retain_span():
    gen = torch.Generator().manual_seed(0)
    shapes = {"a": (3, 4), "b": (5,)}
    rand = lambda: {n: torch.randn(s, generator=gen) for n, s in shapes.items()}  # noqa: E731
    forget, spanning = rand(), [rand(), rand()]
    out = project_out(forget, spanning)
    flat = lambda g: torch.cat([g[n].reshape(-1) for n in shapes]).double()  # noqa: E731
    for s in spanning:
        assert abs(float(flat(out) @ flat(s))) < 1e-5
    residual = flat(forget) - flat(out)  # what was removed lies in the span
    basis = torch.stack([flat(s) for s in spanning], 1)
    coef = torch.linalg.lstsq(basis, residual.unsqueeze(1)).solution
    torch.testing.assert_close(basis @ coef, residual.unsqueeze(1), atol=1e-5, rtol=0)


def test_mcq_sequences_score_only_the_answer_letter(bundle, ref_tokenizer):
    items = bundle.split("forget_attr")[:5]
    for it, seq in zip(items, mcq_sequences(ref_tokenizer, items)):
        labelled = [t for t in seq.labels if t != IGNORE]
        assert ref_tokenizer.decode(labelled) == " " + LETTERS[it.answer]
        assert len(seq.ids) == len(seq.labels) and seq.ids[-1] == labelled[-1]


def test_corpus_sequences_and_sampler(bundle, ref_tokenizer):
    seqs = corpus_sequences(ref_tokenizer, bundle.texts("forget_corpus")[:10])
    assert all(s.labels[0] == IGNORE and s.labels[1:] == s.ids[1:] and s.ids[-1] == ref_tokenizer.eos_token_id
               for s in seqs)
    a = SequenceSampler(seqs, 4, 0, seed=1)
    b = SequenceSampler(seqs, 4, 0, seed=1)
    first = [a.next() for _ in range(2)]
    assert all(torch.equal(x.input_ids, b.next().input_ids) for x in first)
    a = SequenceSampler(seqs, 5, 0, seed=2)  # one epoch covers every sequence once
    seen = {tuple(r[m.bool()].tolist()) for _ in range(2) for bt in [a.next()] for r, m in
            zip(bt.input_ids, bt.attention_mask)}
    assert seen == {s.ids for s in seqs}
