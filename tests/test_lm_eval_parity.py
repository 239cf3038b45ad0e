"""Per-item parity with lm-eval's `multiple_choice` scoring on the same model and items (no mocking)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mansu_audit.evaluate import evaluate_mcq

from conftest import tiny_llama

TASK_YAML = """task: mansu_parity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def run_lm_eval(model, tokenizer, items, tmp_path, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, float]:
    """lm-eval's own predictions (argmax of per-choice log-likelihoods) for `items`, in order."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    data = tmp_path / "items.jsonl"
    with data.open("w") as fh:
        for i, it in enumerate(items):
            fh.write(json.dumps({"idx": i, "question": it.question, "choices": list(it.choices),
                                 "answer": it.answer}) + "\n")
    (tmp_path / "mansu_parity.yaml").write_text(TASK_YAML.format(data=data))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")
    out = lm_eval.simple_evaluate(model=lm, tasks=["mansu_parity"], task_manager=TaskManager(include_path=str(tmp_path)),
                                  log_samples=True, num_fewshot=0, random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0, fewshot_random_seed=0)
    samples = sorted(out["samples"]["mansu_parity"], key=lambda s: s["doc"]["idx"])
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
