"""Converters: WMDP/MMLU/generic tables -> bundles (fixtures in the real datasets' column layouts)."""
from __future__ import annotations

import numpy as np

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mansu_audit.cli import main
from mansu_audit.convert import (ConvertOptions, FieldMap, convert_generic, convert_mmlu, convert_wmdp,
                                 neutral_corrupt, rematch_corrupt, split_forget)
from mansu_audit.convert.bundle import NEUTRAL_FILLER
from mansu_audit.convert.readers import read_table, rows_to_items
from mansu_audit.data import load_bundle
from mansu_audit.errors import InputError
from mansu_audit.prompts import format_prompt, item_prompt

FIX = Path(__file__).parent / "fixtures"
WMDP_DIR, WMDP_JSON = FIX / "wmdp", FIX / "wmdp-bio.json"
MMLU_DIR, MMLU_JSONL = FIX / "mmlu", FIX / "mmlu.jsonl"
CORPORA = FIX / "wmdp-corpora"


def _content(items):
    return Counter((it.question, it.choices, it.answer) for it in items)


def _opts(**kw) -> ConvertOptions:
    return ConvertOptions(retain_source=kw.pop("retain_source", MMLU_DIR), **kw)


def test_wmdp_parquet_and_json_give_the_same_bundle(tmp_path):
    a = load_bundle(convert_wmdp(WMDP_DIR, "wmdp-bio", tmp_path / "a", _opts()))
    b = load_bundle(convert_wmdp(WMDP_JSON, "wmdp-bio", tmp_path / "b", _opts(retain_source=MMLU_JSONL)))
    for split in ("forget_eval", "forget_attr", "retain_eval"):
        assert a.split(split) == b.split(split)
    source = json.loads(WMDP_JSON.read_text())
    # every source row lands in exactly one forget split, unchanged
    assert _content(a.split("forget_eval")) + _content(a.split("forget_attr")) == \
        Counter((r["question"], tuple(r["choices"]), r["answer"]) for r in source)
    assert len(a.split("forget_attr")) == round(0.2 * len(source))  # documented default ratio
    assert {it.subject for it in a.split("forget_eval")} == {"biology"}
    assert len(a.split("retain_eval")) == 12 and {it.subject for it in a.split("retain_eval")} == \
        {"elementary_mathematics", "astronomy", "college_biology"}
    m = a.manifest
    assert m["seed"] == 0 and m["attr_fraction"] == 0.2 and m["corrupt"]["kind"] == "neutral-stem"
    assert m["source"]["forget"]["files"]  # the source file is hashed into the manifest


def test_wmdp_prompt_equals_lm_eval_task_config(tmp_path):
    """With the subject line, our prompt is lm-eval's wmdp_bio description + doc_to_text."""
    import jinja2
    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks" / "wmdp"
    template = yaml.safe_load((tasks / "_default_template_yaml").read_text())["doc_to_text"]
    description = yaml.safe_load((tasks / "wmdp_bio.yaml").read_text())["description"]
    bundle = load_bundle(convert_wmdp(WMDP_DIR, "wmdp-bio", tmp_path / "w", _opts()))
    for item in bundle.split("forget_eval"):
        doc = {"question": item.question, "choices": list(item.choices)}
        assert item_prompt(item, subject_line=True) == description + jinja2.Template(template).render(**doc)


def test_split_is_seeded_disjoint_and_ordered():
    items = rows_to_items(read_table(WMDP_JSON), FieldMap(subject=None), "x")
    e1, a1 = split_forget(items, 0.5, seed=3)
    e2, a2 = split_forget(items, 0.5, seed=3)
    e3, a3 = split_forget(items, 0.5, seed=4)
    assert (e1, a1) == (e2, a2) and a1 != a3
    assert not {it.id for it in e1} & {it.id for it in a1} and len(e1) + len(a1) == len(items)
    order = {it.id: i for i, it in enumerate(items)}
    assert [order[it.id] for it in a1] == sorted(order[it.id] for it in a1)
    assert len(split_forget(items, 0.5, seed=0, attr_max=2)[1]) == 2


def test_neutral_corrupt_is_token_length_matched(ref_tokenizer, tmp_path):
    bundle = load_bundle(convert_wmdp(WMDP_DIR, "wmdp-bio", tmp_path / "w",
                                      _opts(tokenizer="reference", attr_fraction=0.5)))
    filler = set(NEUTRAL_FILLER.lower().split())
    for item in bundle.split("forget_attr"):
        clean = ref_tokenizer(format_prompt(item.question, item.choices)).input_ids
        corrupt = ref_tokenizer(format_prompt(item.corrupt, item.choices)).input_ids
        assert len(corrupt) == len(clean) and corrupt != clean
        assert item.extra["corrupt_matched"] is True and item.extra["corrupt_kind"] == "neutral-stem"
        # only filler (a word may be cut to fit the length): no question content leaks in
        assert all(any(f.startswith(w) for f in filler) for w in item.corrupt.rstrip("?").lower().split())
    assert bundle.manifest["corrupt"]["matched"] == len(bundle.split("forget_attr"))
    assert all(it.corrupt is None for it in bundle.split("forget_eval"))


def test_corrupt_without_tokenizer_is_rematched_later(ref_tokenizer, tmp_path):
    bundle = load_bundle(convert_wmdp(WMDP_DIR, "wmdp-bio", tmp_path / "w", _opts(attr_fraction=0.5)))
    attr = bundle.split("forget_attr")
    assert all(it.corrupt and it.extra["corrupt_matched"] is False for it in attr)
    assert all(len(it.corrupt.split()) == max(1, len(it.question.split()) - 1) for it in attr)
    for item in rematch_corrupt(attr, ref_tokenizer):
        assert len(ref_tokenizer(format_prompt(item.corrupt, item.choices)).input_ids) == \
            len(ref_tokenizer(format_prompt(item.question, item.choices)).input_ids)
    text, ok = neutral_corrupt("Short?", ["a", "b"], ref_tokenizer)
    assert ok and text.endswith("?")


def test_corpora_keep_nonempty_texts(tmp_path):
    bundle = load_bundle(convert_wmdp(
        WMDP_DIR, "wmdp-bio", tmp_path / "w",
        _opts(forget_corpus=CORPORA / "bio-forget-corpus.jsonl", retain_corpus=CORPORA / "bio-retain-corpus.jsonl")))
    forget = [json.loads(l)["text"] for l in (CORPORA / "bio-forget-corpus.jsonl").read_text().splitlines()]
    assert bundle.texts("forget_corpus") == [t for t in forget if t.strip()]
    assert len(bundle.texts("retain_corpus")) == 3
    limited = load_bundle(convert_wmdp(WMDP_DIR, "wmdp-bio", tmp_path / "l", _opts(
        forget_corpus=CORPORA / "bio-forget-corpus.jsonl", corpus_max_docs=2)))
    assert len(limited.texts("forget_corpus")) == 2


def test_mmlu_subjects_split_forget_from_retain(tmp_path):
    bundle = load_bundle(convert_mmlu(MMLU_DIR, ("college_biology",), tmp_path / "m", ConvertOptions()))
    forget = bundle.split("forget_eval") + bundle.split("forget_attr")
    assert {it.subject for it in forget} == {"college_biology"} and len(forget) == 4
    assert {it.subject for it in bundle.split("retain_eval")} == {"elementary_mathematics", "astronomy"}
    only = load_bundle(convert_mmlu(MMLU_JSONL, ("astronomy",), tmp_path / "o",
                                    ConvertOptions(retain_subjects=("elementary_mathematics",))))
    assert {it.subject for it in only.split("retain_eval")} == {"elementary_mathematics"}
    with pytest.raises(InputError, match="subject 'virology' not in the source"):
        convert_mmlu(MMLU_DIR, ("virology",), tmp_path / "v", ConvertOptions())


def test_retain_subsample_is_seeded(tmp_path):
    a = load_bundle(convert_wmdp(WMDP_DIR, "wmdp-bio", tmp_path / "a", _opts(retain_max=5, seed=1)))
    b = load_bundle(convert_wmdp(WMDP_DIR, "wmdp-bio", tmp_path / "b", _opts(retain_max=5, seed=1)))
    assert len(a.split("retain_eval")) == 5 and a.split("retain_eval") == b.split("retain_eval")


def test_generic_mapping_letters_columns_and_choice_text(tmp_path):
    src = tmp_path / "quiz.jsonl"
    rows = [{"prompt": f"Question {i}?", "A": "one", "B": "two", "C": "three", "D": "four",
             "label": "ABCD"[i % 4] if i % 2 else ["one", "two", "three", "four"][i % 4], "uid": f"q{i}"}
            for i in range(10)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = _opts(map_spec="question=prompt,choices=A|B|C|D,answer=label,id=uid")
    bundle = load_bundle(convert_generic(src, tmp_path / "g", opts, subject="quiz"))
    items = {it.id: it for it in bundle.split("forget_eval") + bundle.split("forget_attr")}
    assert set(items) == {f"forget-q{i}" for i in range(10)}
    assert all(items[f"forget-q{i}"].answer == i % 4 for i in range(10))
    assert all(it.choices == ("one", "two", "three", "four") and it.subject == "quiz" for it in items.values())


def test_parquet_and_hf_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = json.loads(WMDP_JSON.read_text())
    ds = datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
    ds.save_to_disk(str(tmp_path / "saved"))
    via_hf = load_bundle(convert_generic(tmp_path / "saved", tmp_path / "h", _opts(), split="test"))
    via_pq = load_bundle(convert_generic(WMDP_DIR / "wmdp-bio/test-00000-of-00001.parquet", tmp_path / "p", _opts()))
    assert via_hf.split("forget_eval") == via_pq.split("forget_eval")


def test_cli_convert_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["convert", "wmdp", "--source", str(WMDP_DIR), "--config", "wmdp-bio", "--out", str(out),
                 "--retain-source", str(MMLU_DIR), "--split-seed", "2"]) == 0
    assert "forget_eval 10" in capsys.readouterr().out and load_bundle(out).manifest["seed"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q?", "choices": ["a", "b"], "answer": 1}\n'
                   '{"question": "r?", "choices": ["a", "b"], "answer": 5}\n')
    cases = [
        (["jsonl", "--source", str(bad)], f"{bad}:2: answer 5 out of range for 2 choices"),
        (["jsonl", "--source", str(MMLU_JSONL), "--map", "question=prompt"], "missing column 'prompt'"),
        (["wmdp", "--source", str(WMDP_DIR), "--config", "wmdp-bio", "--retain-source", "/nonexistent/x.json"],
         "source not found"),
        (["wmdp", "--source", str(WMDP_DIR), "--config", "wmdp-nuclear"], "unknown WMDP config"),
        (["wmdp", "--source", str(WMDP_DIR)], "--retain-source"),
        (["jsonl", "--source", str(MMLU_JSONL), "--map", "question"], "bad --map entry"),
    ]
    for argv, message in cases:
        target = tmp_path / "never"
        assert main(["convert", *argv, "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
        assert not target.exists()
    assert main(["convert", "wmdp", "--source", str(WMDP_DIR), "--out", str(out), "--retain-source",
                 str(MMLU_DIR)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["convert", "wmdp", "--source", str(WMDP_DIR), "--out", str(out), "--retain-source",
                 str(MMLU_DIR), "--force"]) == 0
    assert load_bundle(out).manifest["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "bundle"]  # no temp folders left


def test_bad_json_line_is_named(tmp_path):
    src = tmp_path / "broken.jsonl"
    src.write_text('{"question": "q?", "choices": ["a", "b"], "answer": 0}\n{oops\n')
    with pytest.raises(InputError) as err:
        convert_generic(src, tmp_path / "o", _opts())
    assert str(err.value).startswith(f"{src}:2: bad JSON")


def test_wmdp_bundle_evaluates_with_lm_eval_subject_line(ref_tokenizer, tmp_path):
    """WMDP/MMLU bundles say `prompt.subject_line`; evaluation then opens every prompt with the subject line."""
    from conftest import tiny_llama
    from mansu_audit.api import evaluate
    from mansu_audit.evaluate import evaluate_mcq
    from mansu_audit.loading import model_from_objects

    bundle = load_bundle(convert_wmdp(WMDP_DIR, "wmdp-bio", tmp_path / "w", _opts(attr_fraction=0.5)))
    assert bundle.subject_line and bundle.manifest["prompt"] == {"subject_line": True}
    model = model_from_objects(tiny_llama(len(ref_tokenizer), seed=3, hidden=32, intermediate=64, positions=256),
                               ref_tokenizer, "t")  # WMDP prompts with the subject line exceed 128 tokens
    got = evaluate(model, bundle, splits=("forget_eval",), B=100).scores["unquantized"]["forget_eval"].result
    items = bundle.split("forget_eval")
    with_subject = evaluate_mcq(model.model, ref_tokenizer, items, subject_line=True)
    without = evaluate_mcq(model.model, ref_tokenizer, items)
    assert np.array_equal(got.margin, with_subject.margin) and not np.allclose(got.margin, without.margin)
