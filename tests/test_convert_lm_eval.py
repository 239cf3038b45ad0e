"""`convert lm-eval` / `--benchmark lm-eval:...`: bundles built by lm-eval's own TaskManager score item by
item as `lm_eval.simple_evaluate` does (acc, acc_norm, log-likelihoods), offline, on task YAMLs over local JSON."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from mansu_audit.cli import main
from mansu_audit.convert.lm_eval import LmEvalSpec, convert_lm_eval
from mansu_audit.data import load_bundle, resolve_benchmark
from mansu_audit.errors import InputError
from mansu_audit.evaluate import evaluate_mcq

from conftest import tiny_llama
from test_lm_eval_parity import TASK_YAML as PARITY_YAML

N = 12  # docs per task (--limit)

# A cloze task: description, 2 few-shot examples from a separate split, each choice's text scored.
CLOZE_YAML = """task: mansu_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    train: {train}
test_split: test
fewshot_split: train
num_fewshot: 2
description: "Facts about hazardous agents.\\n\\n"
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""

# An MMLU-style task (test_lm_eval_parity's, with a description and 1 few-shot example drawn from the test split
# itself): the choices listed in the prompt, letters scored.
LETTER_YAML = (PARITY_YAML.replace("task: mansu_parity", "task: mansu_letters")
               .replace("{data}", "{test}")
               .replace("output_type:", "num_fewshot: 1\ndescription: \"The following are multiple choice questions "
                                        "(with answers) about music.\\n\\n\"\noutput_type:")
               + "  - metric: acc_norm\n")


GENERATE_YAML = """task: mansu_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[0]}}}}"
metric_list:
  - metric: exact_match
"""


def _jsonl(path, items):
    path.write_text("".join(json.dumps({"question": it.question, "choices": list(it.choices),
                                        "answer": it.answer}) + "\n" for it in items))
    return path


@pytest.fixture()
def tasks(tmp_path, bundle, monkeypatch):
    """A folder of task YAMLs over local JSON (synthhazard items); returns it."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "tasks"
    folder.mkdir()
    forget = _jsonl(tmp_path / "forget.jsonl", bundle.split("forget_eval")[:40])
    train = _jsonl(tmp_path / "train.jsonl", bundle.split("forget_train")[:10])
    retain = _jsonl(tmp_path / "retain.jsonl", bundle.split("retain_eval")[:40])
    (folder / "cloze.yaml").write_text(CLOZE_YAML.format(test=forget, train=train))
    (folder / "letters.yaml").write_text(LETTER_YAML.format(test=retain))
    (folder / "generate.yaml").write_text(GENERATE_YAML.format(test=retain))
    return folder


def _manager(folder):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=False)


def test_items_score_as_lm_eval_does(tmp_path, tasks, ref_tokenizer):
    """Per item, in both scoring modes: acc and acc_norm equal lm-eval's, log-likelihoods within 2e-4."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = _manager(tasks)
    out = convert_lm_eval("mansu_cloze", "mansu_letters", tmp_path / "bundle", include_path=str(tasks), limit=N,
                          task_manager=manager)
    converted = load_bundle(out)
    assert converted.default_scoring == "choice-text" and converted.check_scoring(None) == "choice-text"
    forget, retain = converted.split("forget_eval"), converted.split("retain_eval")
    assert len(forget) == len(retain) == N
    assert forget[0].extra["context"].startswith("Facts about hazardous agents.\n\nQuestion: ")
    assert forget[0].extra["context"].count("\nAnswer:") == 3  # two few-shot examples, then the doc
    assert retain[0].choices == ("A", "B", "C", "D") and retain[0].extra["context"].count("\nAnswer:") == 2
    record = converted.manifest["lm_eval"]["tasks"]
    assert record["forget"]["mansu_cloze"]["num_fewshot"] == 2 and record["retain"]["mansu_letters"]["n"] == N

    model = tiny_llama(len(ref_tokenizer), seed=5, positions=512)
    lm = HFLM(pretrained=model, tokenizer=ref_tokenizer, batch_size=16, device="cpu")
    result = lm_eval.simple_evaluate(model=lm, tasks=["mansu_cloze", "mansu_letters"], task_manager=manager,
                                     limit=N, log_samples=True)
    for split, task in (("forget_eval", "mansu_cloze"), ("retain_eval", "mansu_letters")):
        samples = sorted(result["samples"][task], key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in samples] == [it.extra["lm_eval_doc_id"] for it in converted.split(split)]
        lls = np.array([[r[0] for r in s["filtered_resps"]] for s in samples], dtype=np.float64)
        plain = evaluate_mcq(model, ref_tokenizer, converted.split(split), batch_size=16, scoring="choice-text")
        norm = evaluate_mcq(model, ref_tokenizer, converted.split(split), batch_size=16, scoring="choice-text-norm")
        np.testing.assert_allclose(plain.logprobs, lls, atol=2e-4)
        np.testing.assert_allclose(norm.logprobs, lls, atol=2e-4)
        np.testing.assert_array_equal(plain.correct.astype(float), [s["acc"] for s in samples])
        np.testing.assert_array_equal(norm.correct.astype(float), [s["acc_norm"] for s in samples])
        assert plain.accuracy == pytest.approx(result["results"][task]["acc,none"])


def test_benchmark_prefix_converts_into_the_cache(tmp_path, tasks, monkeypatch):
    """`lm-eval:FORGET,RETAIN:include_path=DIR:limit=N` resolves to a content-named folder in the cache."""
    monkeypatch.setenv("MANSU_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    spec = f"lm-eval:mansu_cloze,mansu_letters:include_path={tasks}:limit=4:num_fewshot=1"
    first = resolve_benchmark(spec)
    assert first.parent == tmp_path / "cache" / "lm-eval-bundles"
    assert resolve_benchmark(spec) == first  # same content, same folder; no build folder left behind
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]
    converted = load_bundle(spec)
    assert len(converted.split("forget_eval")) == 4
    assert converted.split("forget_eval")[0].extra["context"].count("\nAnswer:") == 2  # num_fewshot=1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "forget.jsonl", "retain.jsonl", "tasks",
                                                          "train.jsonl"]


def test_certify_with_cad_skip(tmp_path, tasks, ref_tokenizer, capsys):
    """A converted bundle without corpora certifies (int8, no CAD), recording choice-text scoring; gptq, which
    needs a retain corpus, says so in one line."""
    models = []
    for seed in (1, 2):
        d = tmp_path / f"m{seed}"
        tiny_llama(len(ref_tokenizer), seed=seed, positions=512).save_pretrained(str(d), safe_serialization=True)
        ref_tokenizer.save_pretrained(str(d))
        models.append(d)
    out = convert_lm_eval("mansu_cloze", "mansu_letters", tmp_path / "bundle", include_path=str(tasks), limit=8,
                          task_manager=_manager(tasks))
    rc = main(["certify", "--base", str(models[0]), "--candidate", str(models[1]), "--benchmark", str(out),
               "--quantizers", "int8", "--cad", "skip", "--no-cache", "--quiet", "--out", str(tmp_path / "cert")])
    assert rc in (1, 3), capsys.readouterr().err  # two random models: FAIL or INCONCLUSIVE, never bad input
    body = json.loads((tmp_path / "cert" / "certificate.json").read_text())["body"]
    assert body["desiderata"]["S"]["verdict"] == "NOT COMPUTED"
    assert body["prompting"]["scoring"] == "choice-text"
    assert body["benchmark"]["splits"] == {"forget_eval": 8, "retain_eval": 8}
    capsys.readouterr()
    assert main(["certify", "--base", str(models[0]), "--candidate", str(models[1]), "--benchmark", str(out),
                 "--quantizers", "gptq", "--cad", "skip", "--no-cache", "--quiet", "--out", str(tmp_path / "c2")]) == 2
    assert "'gptq' calibrates on the benchmark's retain_corpus" in capsys.readouterr().err


@pytest.mark.parametrize("task,message", [
    ("mansu_generate", "lm-eval task 'mansu_generate' has output_type 'generate_until': only multiple_choice"),
    ("no_such_task", "no lm-eval task or group named 'no_such_task'"),
])
def test_unusable_tasks_are_one_line_errors(tmp_path, tasks, task, message):
    with pytest.raises(InputError, match=message) as err:
        convert_lm_eval(task, "mansu_letters", tmp_path / "bundle", task_manager=_manager(tasks))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bundle").exists()


def test_cli_errors_are_one_line(tmp_path, tasks, capsys):
    out = str(tmp_path / "bundle")
    assert main(["convert", "lm-eval", "--forget-task", "mansu_generate", "--retain-task", "mansu_letters",
                 "--include-path", str(tasks), "--out", out]) == 2
    assert main(["convert", "lm-eval", "--forget-task", "mansu_cloze", "--out", out]) == 2
    assert main(["convert", "jsonl", "--source", "x.jsonl", "--forget-task", "t", "--out", out]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mansu-audit:")]
    assert len(err) == 3 and "output_type 'generate_until'" in err[0] and "--retain-task" in err[1] \
        and "--forget-task is for convert lm-eval only" in err[2]
    assert not (tmp_path / "bundle").exists()


def test_missing_lm_eval_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MANSU_CACHE_DIR", str(tmp_path / "cache"))
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")] + ["lm_eval"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(InputError, match=r"needs the optional dependency 'lm_eval': pip install "
                                         r"'mansu-audit\[lm-eval\]'"):
        convert_lm_eval("a", "b", tmp_path / "bundle")
    with pytest.raises(InputError, match="optional dependency 'lm_eval'"):
        resolve_benchmark("lm-eval:a,b")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("text,message", [
    ("lm-eval:wmdp_bio", "expected lm-eval:FORGET,RETAIN"),
    ("lm-eval:mmlu,mmlu", "must differ"),
    ("lm-eval:a,b:limit=x", "'limit' .* must be an integer"),
    ("lm-eval:a,b:shots=3", "bad option 'shots=3'"),
    ("lm-eval:a,b:limit=0", "--limit must be at least 1"),
])
def test_bad_benchmark_specs(text, message):
    with pytest.raises(InputError, match=message):
        resolve_benchmark(text)


def test_spec_round_trip():
    spec = LmEvalSpec.parse(f"lm-eval:wmdp_bio,mmlu:include_path={os.sep}:limit=100:num_fewshot=0")
    assert spec == LmEvalSpec("wmdp_bio", "mmlu", os.sep, 100, 0)
    assert LmEvalSpec.from_dict(spec.to_dict()) == spec
