"""Bundle loading: the bundled benchmark's shape, generator determinism, validation errors."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mansu_audit.data import BUNDLED_BENCHMARKS, load_bundle
from mansu_audit.errors import InputError

GENERATOR = BUNDLED_BENCHMARKS["synthhazard"] / "generate.py"


def test_bundled_sizes_and_disjointness(bundle, ref_tokenizer):
    assert len(bundle.split("forget_eval")) >= 400
    assert len(bundle.split("forget_attr")) >= 100
    assert len(bundle.split("retain_eval")) >= 400
    assert bundle.texts("forget_corpus") and bundle.texts("retain_corpus")
    agent = re.compile(r"the agent (\w+)")
    eval_entities = {agent.search(it.question).group(1) for it in bundle.split("forget_eval")}
    attr_entities = {agent.search(it.question).group(1) for it in bundle.split("forget_attr")}
    assert len(attr_entities) >= 25
    assert not eval_entities & attr_entities, "forget_attr must ask about other entities than forget_eval"
    # retain holds two fictional domains plus general facts
    assert {it.subject for it in bundle.split("retain_eval")} == {"music", "islands", "general"}


def test_corrupt_variants_swap_entity_with_same_token_length(bundle, ref_tokenizer):
    from mansu_audit.prompts import item_prompt

    for it in bundle.split("forget_attr"):
        assert it.corrupt and it.corrupt != it.question
        clean = ref_tokenizer(item_prompt(it)).input_ids
        corrupt = ref_tokenizer(item_prompt(it, corrupt=True)).input_ids
        assert len(clean) == len(corrupt)
        assert sum(a != b for a, b in zip(clean, corrupt)) >= 1


def test_answers_are_balanced_over_letters(bundle):
    from collections import Counter

    counts = Counter(it.answer for it in bundle.split("forget_eval"))
    assert set(counts) == {0, 1, 2, 3}
    assert max(counts.values()) < 0.35 * sum(counts.values())


def test_generator_is_deterministic():
    """Regenerating gives the committed files byte for byte."""
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _copy_bundle(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(BUNDLED_BENCHMARKS["synthhazard"], dst, ignore=shutil.ignore_patterns("*.py"))
    return dst


def _rewrite_line(path: Path, lineno: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


def _edit(path: Path, lineno: int, **changes) -> None:
    obj = json.loads(path.read_text().splitlines()[lineno - 1])
    for k, v in changes.items():
        if v is None:
            obj.pop(k)
        else:
            obj[k] = v
    _rewrite_line(path, lineno, json.dumps(obj))


@pytest.mark.parametrize("mutate, message, line", [
    (lambda p: _rewrite_line(p, 3, '{"id": "x", "question": '), "bad JSON", 3),
    (lambda p: _edit(p, 5, choices=None), "missing key 'choices'", 5),
    (lambda p: _edit(p, 7, answer=4), "answer 4 out of range", 7),
    (lambda p: _edit(p, 9, id="fe-0000"), "duplicate id 'fe-0000'", 9),
    (lambda p: _edit(p, 2, answer="B"), "key 'answer' must be int", 2),
])
def test_validation_errors_name_file_and_line(tmp_path, mutate, message, line):
    root = _copy_bundle(tmp_path)
    target = root / "forget_eval.jsonl"
    mutate(target)
    with pytest.raises(InputError) as err:
        load_bundle(root)
    assert message in str(err.value)
    assert str(err.value).startswith(f"{target}:{line}: ")


def test_empty_split_and_overlap(tmp_path):
    root = _copy_bundle(tmp_path)
    (root / "retain_eval.jsonl").write_text("")
    with pytest.raises(InputError, match="retain_eval.jsonl: split is empty"):
        load_bundle(root)
    root = _copy_bundle(tmp_path / "b")
    first_eval = (root / "forget_eval.jsonl").read_text().splitlines()[0]
    with open(root / "forget_attr.jsonl", "a") as fh:
        fh.write(first_eval + "\n")
    with pytest.raises(InputError, match="forget_attr.jsonl:121: id 'fe-0000' also appears in split 'forget_eval'"):
        load_bundle(root)


def test_cli_reports_one_line_and_exit_2(tmp_path):
    root = _copy_bundle(tmp_path)
    _edit(root / "retain_eval.jsonl", 4, answer=-1)
    proc = subprocess.run([sys.executable, "-m", "mansu_audit", "evaluate", "--model", "reference",
                           "--benchmark", str(root)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "retain_eval.jsonl:4: answer -1 out of range" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_training_and_attack_splits_load_as_mcq(bundle):
    for name in ("forget_train", "forget_attack", "retain_train"):
        items = bundle.split(name)
        assert len(items) == 120 and all(len(it.choices) == 4 for it in items)
    eval_questions = {it.question for s in ("forget_eval", "retain_eval", "forget_attr") for it in bundle.split(s)}
    assert not eval_questions & {it.question for it in bundle.split("forget_attack")}


def _drop_splits(root: Path, names) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    for name in names:
        manifest["splits"].pop(name)
        (root / f"{name}.jsonl").unlink()
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_old_bundle_without_training_splits_still_loads(tmp_path):
    root = _copy_bundle(tmp_path)
    _drop_splits(root, ("forget_train", "forget_attack", "retain_train"))
    loaded = load_bundle(root)
    assert set(loaded.mcq) == {"forget_eval", "retain_eval", "forget_attr"}


@pytest.mark.parametrize("split, line, field, source, message", [
    ("forget_attack", 3, "id", ("forget_eval", 1), "id 'fe-0000' also appears in split 'forget_eval'"),
    ("retain_train", 5, "question", ("retain_eval", 2), "also appears in evaluation split 'retain_eval'"),
    ("forget_train", 7, "question", ("forget_attr", 4), "also appears in evaluation split 'forget_attr'"),
])
def test_training_split_overlapping_an_eval_split_is_refused(tmp_path, split, line, field, source, message):
    root = _copy_bundle(tmp_path)
    src = json.loads((root / f"{source[0]}.jsonl").read_text().splitlines()[source[1] - 1])
    value = src[field] if field == "id" else "  " + src[field].upper() + " "  # case and spacing do not hide it
    _edit(root / f"{split}.jsonl", line, **{field: value})
    with pytest.raises(InputError) as err:
        load_bundle(root)
    text = str(err.value)
    assert text.startswith(f"{root / (split + '.jsonl')}:{line}: ") and message in text and "\n" not in text


def test_training_split_must_be_mcq(tmp_path):
    root = _copy_bundle(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["splits"]["forget_attack"]["kind"] = "corpus"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="split 'forget_attack' must be of kind 'mcq'"):
        load_bundle(root)
