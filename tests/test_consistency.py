"""Permutation consistency: rotations, statistics, and flags on a letter memoriser vs a content reader."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mansu_audit.consistency import (choice_orders, permutation_consistency, permute_item, rotate_item,
                                     summarize)
from mansu_audit.data import MCQItem
from mansu_audit.prompts import LETTERS


class _StubMCQModel(torch.nn.Module):
    """A real torch module that answers MCQ prompts from a lookup table keyed by the question text.

    `mode="letter"`: always the letter where the answer sat in the *original* item (memorised
    letters, ignores the choices shown); `mode="content"`: the letter of the shown choice whose
    text is the right answer (reads the content).
    """

    def __init__(self, tokenizer, items, mode: str):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))
        self.tokenizer, self.mode = tokenizer, mode
        self.table = {it.question: (it.answer, it.choices[it.answer]) for it in items}
        probe = "Q\nA. x\nAnswer:"
        self.letter_ids = [tokenizer(probe + f" {LETTERS[j]}").input_ids[-1] for j in range(4)]

    def forward(self, input_ids, attention_mask=None, **_):
        vocab = len(self.tokenizer)
        logits = torch.zeros(*input_ids.shape, vocab)
        for b, row in enumerate(input_ids):
            n = int(attention_mask[b].sum()) if attention_mask is not None else len(row)
            lines = self.tokenizer.decode(row[:n].tolist(), skip_special_tokens=True).split("\n")
            letter, text = self.table[lines[0].strip()]
            if self.mode == "content":
                shown = [line.split(". ", 1)[1].strip() for line in lines[1:-1]]
                letter = shown.index(text)
            logits[b, :, self.letter_ids[letter]] = self.scale
        return SimpleNamespace(logits=logits)


def test_rotation_and_permutation_keep_the_answer_text():
    it = MCQItem("x", "Which?", ("a", "b", "c", "d"), 2)
    for r in range(4):
        rot = rotate_item(it, r)
        assert rot.choices[rot.answer] == "c" and sorted(rot.choices) == list(it.choices)
    assert rotate_item(it, 1).choices == ("b", "c", "d", "a")
    perm = permute_item(it, [3, 2, 1, 0])
    assert perm.choices == ("d", "c", "b", "a") and perm.answer == 1
    with pytest.raises(ValueError):
        permute_item(it, [0, 0, 1, 2])


def test_orders_start_with_identity_and_are_seeded():
    items = [MCQItem(str(i), "q", ("a", "b", "c", "d"), 0) for i in range(5)]
    rot = choice_orders(items)
    assert all(o[0] == [0, 1, 2, 3] and len(o) == 4 for o in rot)
    assert all(sorted(map(tuple, o)) == sorted({tuple(x) for x in o}) for o in rot)  # all rotations distinct
    a = choice_orders(items, "permutations", 6, seed=3)
    assert a == choice_orders(items, "permutations", 6, seed=3)
    assert a != choice_orders(items, "permutations", 6, seed=4)
    assert all(len(o) == 6 and o[0] == [0, 1, 2, 3] for o in a)


def test_summary_statistics_and_flag():
    correct = np.zeros((200, 4))
    correct[:, 0] = 1  # right only in the original order
    res = summarize("s", [str(i) for i in range(200)], correct, "rotations", 0.25, B=500)
    assert res.original.point == 1.0 and res.permuted.point == 0.25
    assert res.dependence.point == pytest.approx(0.75) and res.order_dependent
    steady = summarize("s", [str(i) for i in range(200)], np.ones((200, 4)), "rotations", 0.25, B=500)
    assert steady.dependence.point == 0 and not steady.order_dependent
    d = res.to_dict(per_item=True)
    assert d["order_dependent"] is True and len(d["per_item_permuted"]) == 200


def test_letter_memoriser_is_flagged_and_content_reader_is_not(bundle, ref_tokenizer):
    items = bundle.split("forget_eval")[:60]
    memo = permutation_consistency(_StubMCQModel(ref_tokenizer, items, "letter"), ref_tokenizer, items, B=500)
    assert memo.original.point == 1.0
    assert memo.permuted.point == pytest.approx(0.25)
    assert memo.order_dependent
    reader = permutation_consistency(_StubMCQModel(ref_tokenizer, items, "content"), ref_tokenizer, items, B=500)
    assert reader.original.point == 1.0 and reader.permuted.point == 1.0
    assert not reader.order_dependent
    # seeded random permutations give the same picture
    perm = permutation_consistency(_StubMCQModel(ref_tokenizer, items, "letter"), ref_tokenizer, items,
                                   mode="permutations", orders=8, seed=1, B=500)
    assert perm.correct.shape == (60, 8) and perm.order_dependent
