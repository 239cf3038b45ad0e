"""Shared pieces of every converter: the forget split, neutral corrupt stems, the atomic bundle writer.

**Forget split (our choice).** The forget items are permuted with
`numpy.random.default_rng(seed)`; the first `round(attr_fraction · n)` (default
0.2, capped by `attr_max`) become `forget_attr` (circuit attribution, CAD,
MANSU), the rest `forget_eval` (F and Q). Both keep the source order. The seed
and fraction are written into the manifest.

**Corrupt prompts for foreign benchmarks (SPEC §7).** There is no entity to
swap, so `forget_attr` items get a *length-matched neutral stem*: the question
is replaced by domain-free filler text ("Consider the following question ...")
ending in "?", keeping the answer choices. With `--tokenizer`, its length is
adjusted until the whole prompt (`prompts.format_prompt`) has exactly as many
tokens as the clean prompt under that tokenizer (`corrupt_matched: true`);
without one it has the question's number of words and attribution must call
`rematch_corrupt(items, tokenizer)` for its own tokenizer. Each item records
`corrupt_kind: "neutral-stem"`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from mansu_audit.data import MCQItem, load_bundle
from mansu_audit.errors import InputError
from mansu_audit.io import UMASK
from mansu_audit.prompts import format_prompt

DEFAULT_ATTR_FRACTION = 0.2
DEFAULT_SEED = 0
NEUTRAL_FILLER = ("Consider the following question carefully and choose the best answer from the options "
                  "that are listed below for this general multiple choice item ")
CORRUPT_KIND = "neutral-stem"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- split

def split_forget(items: Sequence[MCQItem], attr_fraction: float = DEFAULT_ATTR_FRACTION,
                 seed: int = DEFAULT_SEED, attr_max: int | None = None) -> tuple[list[MCQItem], list[MCQItem]]:
    """(forget_eval, forget_attr): a seeded, disjoint split; each part in source order."""
    n = len(items)
    if not 0.0 < attr_fraction < 1.0:
        raise InputError(f"--attr-fraction must be in (0, 1), got {attr_fraction}")
    if n < 2:
        raise InputError(f"need at least 2 forget items to split, got {n}")
    k = min(max(1, round(attr_fraction * n)), n - 1)
    if attr_max is not None:
        k = max(1, min(k, attr_max))
    chosen = set(np.random.default_rng(seed).permutation(n)[:k].tolist())
    attr = [it for i, it in enumerate(items) if i in chosen]
    evals = [it for i, it in enumerate(items) if i not in chosen]
    return evals, attr


def subsample(items: Sequence[MCQItem], max_items: int | None, seed: int) -> list[MCQItem]:
    """At most `max_items`, seeded, in source order (e.g. a manageable MMLU retain set)."""
    if max_items is None or len(items) <= max_items:
        return list(items)
    keep = set(np.random.default_rng(seed).permutation(len(items))[:max_items].tolist())
    return [it for i, it in enumerate(items) if i in keep]


# --------------------------------------------------------------------------- neutral stems

def _filler_words(n: int) -> str:
    words = NEUTRAL_FILLER.split()
    return " ".join(words[i % len(words)] for i in range(max(1, n)))


def _prompt_len(tokenizer, question: str, choices: Sequence[str]) -> int:
    return len(tokenizer(format_prompt(question, list(choices))).input_ids)


def neutral_corrupt(question: str, choices: Sequence[str], tokenizer=None) -> tuple[str, bool]:
    """A neutral stem for `question`: (text, token-length-matched?).

    With a tokenizer the stem is searched (a few rounds of fixing the count
    difference) so the full prompt has the clean prompt's token count.
    """
    words = max(1, len(question.split()) - 1)
    if tokenizer is None:
        return _filler_words(words) + "?", False
    target = _prompt_len(tokenizer, question, choices)
    filler_ids = tokenizer(_filler_words(2 * len(question.split()) + 16), add_special_tokens=False,
                           verbose=False).input_ids
    best, best_gap = _filler_words(words) + "?", None
    estimate = max(1, len(tokenizer(question, add_special_tokens=False).input_ids) - 1)
    # BPE merges make the count jump at some cut points: scan cuts near the estimate, two endings each.
    cuts = sorted(range(1, len(filler_ids) + 1), key=lambda n: (abs(n - estimate), n))[:24]
    for n in cuts:
        for ending in ("?", " ?"):
            text = tokenizer.decode(filler_ids[:n]).strip() + ending
            gap = target - _prompt_len(tokenizer, text, choices)
            if gap == 0:
                return text, True
            if best_gap is None or abs(gap) < abs(best_gap):
                best, best_gap = text, gap
    return best, False


def with_corrupt(items: Sequence[MCQItem], tokenizer=None) -> tuple[list[MCQItem], int]:
    """Items with a `corrupt` neutral stem; returns them and how many are exactly length-matched."""
    out, matched = [], 0
    for it in items:
        text, ok = neutral_corrupt(it.question, it.choices, tokenizer)
        matched += ok
        extra = dict(it.extra, corrupt=text, corrupt_kind=CORRUPT_KIND, corrupt_matched=ok)
        out.append(MCQItem(it.id, it.question, it.choices, it.answer, it.subject, extra))
    return out, matched


def rematch_corrupt(items: Sequence[MCQItem], tokenizer) -> list[MCQItem]:
    """Re-fit neutral stems to `tokenizer` (items with an entity-swap corrupt are left alone)."""
    todo = [it for it in items if it.extra.get("corrupt_kind") == CORRUPT_KIND or it.corrupt is None]
    fixed = {it.id: it for it in with_corrupt(todo, tokenizer)[0]}
    return [fixed.get(it.id, it) for it in items]


# --------------------------------------------------------------------------- writer

def _item_json(item: MCQItem) -> str:
    obj = {"id": item.id, "question": item.question, "choices": list(item.choices), "answer": item.answer}
    if item.subject is not None:
        obj["subject"] = item.subject
    obj.update(item.extra)
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse early (before reading anything big) to clobber a non-empty folder."""
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError("output folder is not empty (pass --force to replace it)", out)


def write_bundle(out: str | Path, name: str, mcq: dict[str, Sequence[MCQItem]], corpora: dict[str, Sequence[str]],
                 manifest_extra: dict, overwrite: bool = False) -> Path:
    """Write a bundle atomically: built and validated (`load_bundle`) in a temp folder, then renamed."""
    out = Path(out)
    check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes it private; the bundle is an ordinary folder
    try:
        splits = {}
        for split, items in mcq.items():
            (tmp / f"{split}.jsonl").write_text("".join(_item_json(it) + "\n" for it in items), encoding="utf-8")
            splits[split] = {"kind": "mcq", "n": len(items), "path": f"{split}.jsonl"}
        for split, texts in corpora.items():
            lines = (json.dumps({"id": f"{split}-{i:06d}", "text": t}, ensure_ascii=False) + "\n"
                     for i, t in enumerate(texts))
            (tmp / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
            splits[split] = {"kind": "corpus", "n": len(texts), "path": f"{split}.jsonl"}
        num_choices = sorted({len(it.choices) for items in mcq.values() for it in items})
        manifest = {"name": name, "version": FORMAT_VERSION, "num_choices": num_choices[0] if len(num_choices) == 1
                    else num_choices, "splits": splits, **manifest_extra}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        load_bundle(tmp)  # never leave behind a bundle the suite cannot read
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "bundle")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- assembly

def assemble(out: str | Path, name: str, forget: Sequence[MCQItem], retain: Sequence[MCQItem], *,
             attr_fraction: float = DEFAULT_ATTR_FRACTION, attr_max: int | None = None, seed: int = DEFAULT_SEED,
             tokenizer=None, tokenizer_name: str | None = None, corpora: dict[str, Sequence[str]] | None = None,
             provenance: dict | None = None, description: str = "", overwrite: bool = False) -> Path:
    """Split the forget items, add neutral corrupt stems to `forget_attr`, write the bundle."""
    forget_eval, forget_attr = split_forget(forget, attr_fraction, seed, attr_max)
    forget_attr, matched = with_corrupt(forget_attr, tokenizer)
    corrupt_doc = {
        "kind": CORRUPT_KIND,
        "how": "question replaced by domain-free filler ending in '?', choices kept; "
               + ("token count of the whole prompt matched under the tokenizer" if tokenizer is not None
                  else "word count matched only: call mansu_audit.convert.rematch_corrupt(items, tokenizer)"),
        "tokenizer": tokenizer_name if tokenizer is not None else None,
        "matched": matched,
        "of": len(forget_attr),
    }
    extra = {"description": description, "seed": seed, "attr_fraction": attr_fraction, "attr_max": attr_max,
             "corrupt": corrupt_doc, "source": provenance or {}, "converter": "mansu_audit.convert"}
    mcq = {"forget_eval": forget_eval, "forget_attr": forget_attr, "retain_eval": list(retain)}
    # lm-eval's WMDP/MMLU prompts open with "The following are multiple choice questions (with answers)
    # about <subject>.": evaluation adds that line when every evaluated item names its subject.
    extra["prompt"] = {"subject_line": all(it.subject for it in [*forget_eval, *retain])}
    return write_bundle(out, name, mcq, dict(corpora or {}), extra, overwrite=overwrite)
