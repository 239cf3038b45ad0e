"""The evaluator's cache levers give the plain path's per-item results (no timing here: perf/eval_throughput.py).

`share_context`: an item's choices continue one forward of its context's key/value cache instead of one
sequence per choice. `share_prefix`: a batch's common prefix (few-shot examples) runs once. Both change
the shapes of the matrix products, so log-likelihoods may differ in the last float bits: predictions must
be identical and log-likelihoods within `ATOL` of the plain path's.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mansu_audit.data import MCQItem
from mansu_audit.evaluate import MIN_SHARED_PREFIX, evaluate_mcq

from conftest import small_bundle, tiny_llama

ATOL = 1e-4  # float32 forwards of different shapes; measured at most 1.6e-5 on the reference model
PLAIN = {"share_context": False, "share_prefix": False}


def few_shot(items, shots, letters: bool) -> list[MCQItem]:
    """`items` behind worked examples (lm-eval MMLU-style contexts, verbatim in `context`), alternating between
    two "subjects" with their own examples (`shots`' halves), so batches must be ordered by shared prefix."""
    def head(examples):
        if letters:
            return "".join(f"{s.question}\nA. {s.choices[0]}\nB. {s.choices[1]}\nAnswer: {'AB'[s.answer % 2]}\n\n"
                           for s in examples)
        return "".join(f"Question: {s.question}\nAnswer: {s.choices[s.answer]}\n\n" for s in examples)

    heads = [head(shots[:len(shots) // 2]), head(shots[len(shots) // 2:])]
    return [MCQItem(it.id, it.question, ("A", "B", "C", "D") if letters else it.choices, it.answer, it.subject,
                    {"context": f"{heads[i % 2]}" + (f"{it.question}\nAnswer:" if letters
                                                     else f"Question: {it.question}\nAnswer:")})
            for i, it in enumerate(items)]


class TokenCounter:
    """Counts the (rows x width) tokens the decoder body runs through, via a forward pre-hook."""

    def __init__(self, model):
        self.tokens = 0
        self.handle = model.get_decoder().register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += int(ids.shape[0] * ids.shape[1])


def assert_same(lever, plain):
    np.testing.assert_array_equal(lever.predictions, plain.predictions)
    np.testing.assert_allclose(lever.logprobs, plain.logprobs, atol=ATOL)


@pytest.fixture(scope="module")
def tiny(ref_tokenizer):
    return tiny_llama(len(ref_tokenizer), seed=5, positions=512)


@pytest.mark.parametrize("which", ["tiny", "reference"])
def test_share_context_equals_one_sequence_per_choice(which, tiny, ref_tokenizer, reference, bundle):
    model, tok = (tiny, ref_tokenizer) if which == "tiny" else (reference.model, reference.tokenizer)
    items = bundle.split("forget_eval")[:30] + bundle.split("retain_eval")[:30]
    counters = []
    results = []
    for kwargs in (PLAIN, {"share_context": True}):
        counter = TokenCounter(model)
        try:
            results.append(evaluate_mcq(model, tok, items, batch_size=16, scoring="choice-text", **kwargs))
        finally:
            counter.handle.remove()
        counters.append(counter.tokens)
    assert_same(results[1], results[0])
    assert counters[1] < counters[0]  # the lever ran: contexts once, not once per choice


@pytest.mark.parametrize("letters", [True, False])
@pytest.mark.parametrize("which", ["tiny", "reference"])
def test_share_prefix_equals_plain_on_few_shot_items(which, letters, tiny, ref_tokenizer, reference, bundle):
    model, tok = (tiny, ref_tokenizer) if which == "tiny" else (reference.model, reference.tokenizer)
    items = few_shot(bundle.split("retain_eval")[:16], bundle.split("forget_train")[:6], letters)
    assert len(tok(items[0].extra["context"]).input_ids) > MIN_SHARED_PREFIX + 20
    plain = evaluate_mcq(model, tok, items, batch_size=8, scoring="choice-text", **PLAIN)
    counter = TokenCounter(model)
    try:
        shared = evaluate_mcq(model, tok, items, batch_size=8, scoring="choice-text", share_prefix=True)
    finally:
        counter.handle.remove()
    assert_same(shared, plain)
    plain_tokens = TokenCounter(model)
    try:
        evaluate_mcq(model, tok, items, batch_size=8, scoring="choice-text", share_context=not letters)
    finally:
        plain_tokens.handle.remove()
    assert counter.tokens < plain_tokens.tokens  # the common prefix ran once per batch


def test_share_prefix_from_the_cli(tmp_path, monkeypatch, capsys):
    """`mansu-audit evaluate --share-prefix` reaches the evaluator, is recorded in `prompting`, and gives the
    same accuracies as without it on a few-shot bundle."""
    import json

    import mansu_audit.batching as batching
    from mansu_audit.cli import main

    root = small_bundle(tmp_path / "fewshot", n=12).root
    for split in ("forget_eval", "retain_eval"):
        path = root / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        head = "".join(f"Question: {r['question']}\nAnswer: {r['choices'][r['answer']]}\n\n" for r in rows[:4])
        for r in rows:
            r["context"] = f"{head}Question: {r['question']}\nAnswer:"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    real = batching.evaluate_mcq

    def spy(*args, **kwargs):
        seen.append(kwargs.get("share_prefix"))
        return real(*args, **kwargs)

    monkeypatch.setattr(batching, "evaluate_mcq", spy)
    outputs = []
    for extra in ([], ["--share-prefix"]):
        assert main(["evaluate", "--model", "reference", "--benchmark", str(root), "--scoring", "choice-text",
                     "--json", "--quiet", *extra]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    half = len(seen) // 2  # one call per split and run
    assert half >= 2 and seen == [False] * half + [True] * half
    plain, shared = outputs
    assert "share_prefix" not in plain["prompting"] and shared["prompting"]["share_prefix"] is True
    assert shared["results"] == plain["results"]


def test_groups_wider_than_the_batch_and_mixed_choice_counts(tiny, ref_tokenizer, bundle):
    """Batch size 1 (an item's choices exceed it), items with 2..4 choices and one-token continuations mixed in."""
    items = [MCQItem(it.id, it.question, it.choices[:2 + i % 3], min(it.answer, 1 + i % 3), it.subject, it.extra)
             for i, it in enumerate(bundle.split("retain_eval")[:15])]
    plain = evaluate_mcq(tiny, ref_tokenizer, items, batch_size=1, scoring="choice-text", **PLAIN)
    for batch_size in (1, 3, 64):
        assert_same(evaluate_mcq(tiny, ref_tokenizer, items, batch_size=batch_size, scoring="choice-text",
                                 share_prefix=True), plain)
    assert np.isinf(plain.logprobs[0, 2:]).all() and np.isfinite(plain.logprobs[2]).all()


def test_truncated_items_take_the_plain_path(ref_tokenizer, bundle):
    """Items cut on the left (truncate="left") no longer share a context: scored one sequence per choice."""
    model = tiny_llama(len(ref_tokenizer), seed=5, positions=48)
    items = few_shot(bundle.split("retain_eval")[:10], bundle.split("forget_train")[:4], letters=False)
    plain = evaluate_mcq(model, ref_tokenizer, items, scoring="choice-text", truncate="left", **PLAIN)
    lever = evaluate_mcq(model, ref_tokenizer, items, scoring="choice-text", truncate="left", share_prefix=True)
    assert plain.truncated == lever.truncated > 0
    assert_same(lever, plain)


def test_model_without_a_cache_argument_runs_plain(ref_tokenizer, bundle):
    """A forward that takes no cache (a custom wrapper) gets the plain path, same numbers."""
    inner = tiny_llama(len(ref_tokenizer), seed=5)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    items = bundle.split("retain_eval")[:12]
    wrapped = evaluate_mcq(Wrapper(), ref_tokenizer, items, scoring="choice-text", share_prefix=True)
    direct = evaluate_mcq(inner, ref_tokenizer, items, scoring="choice-text", **PLAIN)
    np.testing.assert_array_equal(wrapped.logprobs, direct.logprobs)


def test_batches_keep_each_subjects_examples_together():
    """share_prefix batching: interleaved few-shot subjects come out one subject per batch; sequences that share
    no prefix are batched longest first, as without the lever."""
    from mansu_audit.evaluate import _batches

    shots = {s: [s] * 3 + list(range(40)) for s in (7, 8)}  # two subjects' examples, 43 tokens each
    few = [shots[7 + i % 2] + [100 + i] * (1 + i % 5) for i in range(24)]
    lone = [[200 + i] * (1 + i) for i in range(5)]
    out = _batches(few + lone, lambda t: t, lambda t: 1, 8, share_prefix=True)
    assert sorted(map(len, out)) == [4, 4, 5, 8, 8]
    assert out[-1] == sorted(lone, key=len, reverse=True)  # no shared prefix: longest first
    for batch in out[:-1]:
        assert len({t[0] for t in batch}) == 1  # one subject's examples per batch
    plain = [t for batch in _batches(few + lone, lambda t: t, lambda t: 1, 8, share_prefix=False) for t in batch]
    assert [len(t) for t in plain] == sorted(map(len, few + lone), reverse=True)


def test_share_context_default_is_on_for_float32_on_the_cpu_only(ref_tokenizer, bundle):
    """The default (None) follows `auto_share_context`: float32 on the CPU shares, bf16 runs one sequence per
    choice (bf16 rounding differs between the two paths; README, performance)."""
    from mansu_audit.evaluate import auto_share_context

    model = tiny_llama(len(ref_tokenizer), seed=5)
    items = bundle.split("retain_eval")[:8]
    assert auto_share_context(model)
    default = evaluate_mcq(model, ref_tokenizer, items, scoring="choice-text")
    np.testing.assert_array_equal(default.logprobs, evaluate_mcq(model, ref_tokenizer, items, scoring="choice-text",
                                                                 share_context=True).logprobs)
    half = model.to(torch.bfloat16)
    assert not auto_share_context(half)
    np.testing.assert_array_equal(evaluate_mcq(half, ref_tokenizer, items, scoring="choice-text").logprobs,
                                  evaluate_mcq(half, ref_tokenizer, items, scoring="choice-text", **PLAIN).logprobs)
