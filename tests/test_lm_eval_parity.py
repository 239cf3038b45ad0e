"""Per-item parity with lm-eval's `multiple_choice` scoring on the same model and items (no mocking)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mansu_audit.evaluate import evaluate_mcq

from conftest import tiny_llama

TASK_HEADER = """task: mansu_parity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_target: answer
"""
METRIC = """  - metric: {}
    aggregation: mean
    higher_is_better: true
"""

TASK_YAML = TASK_HEADER + """doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
metric_list:
""" + METRIC.format("acc")

# The choice-text formulation: the item's cloze as the context, each choice's text scored after " ".
CLOZE_YAML = TASK_HEADER + """doc_to_text: "{{{{cloze}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
""" + METRIC.format("acc") + METRIC.format("acc_norm")


def run_lm_eval(model, tokenizer, items, tmp_path, batch_size: int = 16, yaml: str = TASK_YAML,
                samples_out: list | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """lm-eval's own predictions (argmax of per-choice log-likelihoods) for `items`, in order
    (`samples_out` receives lm-eval's per-item samples)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    data = tmp_path / "items.jsonl"
    with data.open("w") as fh:
        for i, it in enumerate(items):
            fh.write(json.dumps({"idx": i, "question": it.question, "choices": list(it.choices),
                                 "answer": it.answer, "cloze": it.extra.get("cloze")}) + "\n")
    (tmp_path / "mansu_parity.yaml").write_text(yaml.format(data=data))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")
    out = lm_eval.simple_evaluate(model=lm, tasks=["mansu_parity"], task_manager=TaskManager(include_path=str(tmp_path)),
                                  log_samples=True, num_fewshot=0, random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0, fewshot_random_seed=0)
    samples = sorted(out["samples"]["mansu_parity"], key=lambda s: s["doc"]["idx"])
    if samples_out is not None:
        samples_out.extend(samples)
    lls = np.array([[r[0] for r in s["filtered_resps"]] for s in samples], dtype=np.float64)
    return lls.argmax(1), lls, out["results"]["mansu_parity"]["acc,none"]


@pytest.mark.parametrize("split", ["forget_eval", "retain_eval"])
def test_predictions_equal_lm_eval(tmp_path, bundle, ref_tokenizer, split):
    model = tiny_llama(len(ref_tokenizer), seed=3)
    items = bundle.split(split)[:96]
    ours = evaluate_mcq(model, ref_tokenizer, items, split=split, batch_size=32)
    preds, lls, acc = run_lm_eval(model, ref_tokenizer, items, tmp_path)
    np.testing.assert_array_equal(ours.predictions, preds)
    np.testing.assert_allclose(ours.logprobs, lls, atol=2e-4)
    assert ours.accuracy == pytest.approx(acc)


def test_parity_with_reference_model(tmp_path, bundle, reference):
    """The trained model gives confident, non-random predictions: they must match too."""
    items = bundle.split("forget_eval")[:64]
    ours = evaluate_mcq(reference.model, reference.tokenizer, items, batch_size=32)
    preds, _, acc = run_lm_eval(reference.model, reference.tokenizer, items, tmp_path)
    np.testing.assert_array_equal(ours.predictions, preds)
    assert ours.accuracy == pytest.approx(acc)


@pytest.mark.parametrize("model_name", ["tiny", "reference"])
def test_choice_text_scoring_equals_lm_eval_acc_and_acc_norm(tmp_path, bundle, ref_tokenizer, reference, model_name):
    """--scoring choice-text / choice-text-norm: per item, lm-eval's acc / acc_norm on the same cloze task."""
    model, tokenizer = ((tiny_llama(len(ref_tokenizer), seed=3), ref_tokenizer) if model_name == "tiny"
                        else (reference.model, reference.tokenizer))
    items = bundle.split("forget_eval")[:40] + bundle.split("retain_eval")[:40]
    samples: list = []
    _, lls, _ = run_lm_eval(model, tokenizer, items, tmp_path, yaml=CLOZE_YAML, samples_out=samples)
    acc = np.array([s["acc"] for s in samples])
    acc_norm = np.array([s["acc_norm"] for s in samples])
    plain = evaluate_mcq(model, tokenizer, items, batch_size=32, scoring="choice-text")
    norm = evaluate_mcq(model, tokenizer, items, batch_size=32, scoring="choice-text-norm")
    np.testing.assert_allclose(plain.logprobs, lls, atol=2e-4)
    np.testing.assert_array_equal(plain.correct.astype(float), acc)
    np.testing.assert_array_equal(norm.correct.astype(float), acc_norm)
    if model_name == "reference":  # version 3 states the facts in the cloze formulation too (1.000 on forget_eval)
        assert plain.accuracy > 0.8


def test_evaluate_out_writes_lm_eval_shaped_results_and_samples(tmp_path, bundle, reference):
    """`evaluate --out DIR --log-samples`: results.json's "acc,none" / "acc_stderr,none" and each samples line
    equal lm-eval's own for the same items (here the first 64 of forget_eval, `--limit 64`)."""
    from lm_eval.api.metrics import mean_stderr

    from mansu_audit.cli import main

    items = bundle.split("forget_eval")[:64]
    samples: list = []
    _, lls, acc = run_lm_eval(reference.model, reference.tokenizer, items, tmp_path, samples_out=samples)
    out = tmp_path / "out"
    assert main(["evaluate", "--model", "reference", "--limit", "64", "--output-path", str(out), "--log-samples",
                 "--quiet", "--chat-template", "off"]) == 0
    ours = json.loads((out / "results.json").read_text())
    assert ours["results"]["forget_eval"]["acc,none"] == pytest.approx(acc)
    assert ours["results"]["forget_eval"]["acc_stderr,none"] == pytest.approx(
        mean_stderr([s["acc"] for s in samples]))
    assert ours["n-samples"]["forget_eval"] == {"original": len(bundle.split("forget_eval")), "effective": 64}
    lines = [json.loads(x) for x in (out / "samples_forget_eval.jsonl").read_text().splitlines()]
    assert len(lines) == 64
    for mine, theirs in zip(lines, samples):
        assert mine["acc"] == theirs["acc"] and mine["target"] == theirs["target"]
        assert [a[0] for a in mine["arguments"]] == [a[0] for a in theirs["arguments"]]
        np.testing.assert_allclose([r[0] for r in mine["filtered_resps"]],
                                   [r[0] for r in theirs["filtered_resps"]], atol=2e-4)
    assert main(["evaluate", "--model", "reference", "--log-samples"]) == 2  # needs --out
