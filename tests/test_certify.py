"""The certify pipeline: S from a CAD result or hook, compatibility checks, CLI exit codes, the reference model."""
from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from mansu_audit.cache import NoCache, ResultCache
from mansu_audit.cli import main
from mansu_audit.compat import check_compatible
from mansu_audit.errors import InputError
from mansu_audit.loading import LoadedModel, model_from_objects
from mansu_audit.policy import Policy
from mansu_audit.stats import Estimate
from conftest import small_bundle

certify_module = importlib.import_module("mansu_audit.certify")
FAST = Policy(bootstrap_replicates=500)


@pytest.fixture()
def pair(ref_tokenizer):
    base = model_from_objects(tiny_llama(len(ref_tokenizer), seed=0, hidden=32, intermediate=64), ref_tokenizer, "b")
    cand = model_from_objects(tiny_llama(len(ref_tokenizer), seed=1, hidden=32, intermediate=64), ref_tokenizer, "c")
    return base, cand


@pytest.fixture()
def small(tmp_path):
    return small_bundle(tmp_path / "bundle", n=16)


def test_python_api_is_exported():
    import mansu_audit

    assert mansu_audit.certify is certify_module.certify


def test_cad_given_as_estimate_values_or_hook(pair, small):
    base, cand = pair
    given = Estimate(0.9, 0.7, 1.1, 16, 500, 0, 0.95, "given")
    cert = certify_module.certify(base, cand, small, quantizers=(), policy=FAST, cad=given, cache=NoCache())
    assert cert.body["statistics"]["cad"]["point"] == 0.9
    # CAD alone would pass, but an Estimate carries no random-circuit control: S cannot PASS without one
    # (schema 2); and a random tiny model answers one letter: the over-unlearning guard fails the certificate.
    assert cert.desiderata["S"]["verdict"] == "INCONCLUSIVE" and "control" in cert.desiderata["S"]["reason"]
    assert cert.verdict == "FAIL" and any(g["scope"] == "all" for g in cert.body["guard"])
    values = np.full(16, 0.2)
    cert = certify_module.certify(base, cand, small, quantizers=(), policy=FAST, cad=values, cache=NoCache())
    assert cert.desiderata["S"]["verdict"] == "FAIL"  # CAD 0.2 with zero spread: wholly below min_cad 0.5
    assert cert.desiderata["S"]["estimate"]["point"] == pytest.approx(0.2)
    seen = {}

    def hook(b, c, bundle, policy):
        seen["args"] = (b, c, bundle.name, policy.min_cad)
        return Estimate(0.6, 0.4, 0.8, 16, 500, 0, 0.95, "given")

    cert = certify_module.certify(base, cand, small, quantizers=(), policy=FAST, cad=hook, cache=NoCache())
    assert seen["args"] == (base, cand, small.name, 0.5)
    assert cert.desiderata["S"]["verdict"] == "INCONCLUSIVE"
    cert = certify_module.certify(base, cand, small, quantizers=(), policy=FAST, cad=None, cache=NoCache())
    assert cert.desiderata["S"]["verdict"] == "NOT COMPUTED" and cert.verdict != "PASS"


def test_cad_auto_runs_eap_ig_and_is_cached(pair, small, tmp_path, monkeypatch):
    base, cand = pair
    cache = ResultCache(tmp_path / "cache")
    same = certify_module.certify(base, copy.deepcopy(base), small, quantizers=(), policy=FAST, cache=cache)
    cad = same.desiderata["S"]["estimate"]
    assert cad["point"] == pytest.approx(0.0, abs=1e-9)  # identical models: circuit intact, CAD = 0
    assert same.desiderata["S"]["verdict"] == "FAIL"
    monkeypatch.setattr(certify_module, "compute_cad", lambda *a, **k: pytest.fail("CAD recomputed despite cache"))
    again = certify_module.certify(base, copy.deepcopy(base), small, quantizers=(), policy=FAST, cache=cache)
    assert again.body == same.body


def test_compatibility_errors_are_one_line(pair, ref_tokenizer):
    base, _ = pair
    wider = model_from_objects(tiny_llama(len(ref_tokenizer), hidden=64), ref_tokenizer, "w")
    with pytest.raises(InputError, match="config 'hidden_size' differs from the base: 64 vs 32"):
        check_compatible(base, wider)
    deeper = model_from_objects(tiny_llama(len(ref_tokenizer), hidden=32, intermediate=64, layers=3), ref_tokenizer)
    with pytest.raises(InputError, match="num_hidden_layers"):
        check_compatible(base, deeper)

    class SwappedVocab:
        add_bos_token = getattr(ref_tokenizer, "add_bos_token", None)

        def get_vocab(self):
            vocab = dict(ref_tokenizer.get_vocab())
            a, b = sorted(vocab)[:2]
            vocab[a], vocab[b] = vocab[b], vocab[a]
            return vocab

    other = LoadedModel(copy.deepcopy(base.model), SwappedVocab(), "swapped", None)
    with pytest.raises(InputError, match="tokenizer vocabulary differs") as err:
        check_compatible(base, other)
    assert "\n" not in str(err.value)
    check_compatible(base, model_from_objects(copy.deepcopy(base.model), ref_tokenizer))  # compatible: no error


def test_cli_bad_inputs_exit_2_and_write_nothing(tmp_path, ref_tokenizer, capsys):
    for name, hidden in (("base", 32), ("wide", 64)):
        tiny_llama(len(ref_tokenizer), hidden=hidden, intermediate=64).save_pretrained(tmp_path / name)
        ref_tokenizer.save_pretrained(tmp_path / name)
    small_bundle(tmp_path / "bundle", n=8)
    common = ["--benchmark", str(tmp_path / "bundle"), "--no-cache", "--quiet", "--cad", "skip"]
    cases = [
        (["--base", str(tmp_path / "base"), "--candidate", str(tmp_path / "wide")], "hidden_size"),
        (["--base", str(tmp_path / "base"), "--candidate", str(tmp_path / "nowhere")], "model folder not found"),
        (["--base", str(tmp_path / "base"), "--candidate", str(tmp_path / "base"), "--quantizers", "nf5"],
         "unknown quantizer 'nf5'"),
    ]
    (tmp_path / "bad.yaml").write_text("max_ptq_gap: 0.02\nmin_cad: high\n")
    cases.append((["--base", str(tmp_path / "base"), "--candidate", str(tmp_path / "base"), "--policy",
                   str(tmp_path / "bad.yaml")], "bad.yaml:2: policy key 'min_cad'"))
    capsys.readouterr()
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert main(["certify", *args, *common, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("mansu-audit:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
        assert not out.exists()


def forget_finetuned(reference, bundle, steps=120, lr=2e-3, seed=0):
    """The reference model trained to answer every forget question wrongly (a truly forgetting candidate).

    Targets are the next letter after the right one, so answers stay spread over
    A-D (not a degenerate model); full fine-tuning with a large learning rate
    makes the updates far larger than any quantization bin. 120 steps: on version 3
    60 steps left forget_eval at 0.200 (1 torch thread) or 0.210 (2 threads), on the
    below-chance boundary; 120 steps give 0.131 / 0.162, clearly below chance.
    """
    from mansu_audit.prompts import LETTERS, item_prompt

    torch.manual_seed(seed)
    model = copy.deepcopy(reference.model).train()
    tok = reference.tokenizer
    items = list(bundle.split("forget_eval")) + list(bundle.split("forget_attr"))
    encoded = [tok(item_prompt(it) + " " + LETTERS[(it.answer + 1) % len(it.choices)]).input_ids for it in items]
    # Retain questions keep their right answers, so the model forgets the hazard domain only (no collapse).
    encoded += [tok(item_prompt(it) + " " + LETTERS[it.answer]).input_ids for it in bundle.split("retain_eval")]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for _ in range(steps):
        batch = [encoded[i] for i in rng.choice(len(encoded), size=32, replace=False)]
        width = max(len(e) for e in batch)
        ids = torch.full((len(batch), width), pad)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, e in enumerate(batch):
            ids[b, :len(e)] = torch.tensor(e)
            mask[b, :len(e)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = mask.sum(1) - 1
        target = ids[torch.arange(len(batch)), last]
        loss = torch.nn.functional.cross_entropy(logits[torch.arange(len(batch)), last - 1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
def test_reference_no_op_fails_f_oracle_passes_f_suppression_fails_f(reference, bundle, tmp_path):
    """certify(reference, reference) gives F FAIL; the oracle (never knew the facts) F PASS; a model trained to
    answer the forget questions wrongly (accuracy far below chance: it still identifies the right answer) F FAIL."""
    policy = Policy(bootstrap_replicates=2000)
    cache = ResultCache(tmp_path / "cache")
    fast = dict(quantizers=("nf4",), policy=policy, cad=None, cache=cache, relearn="skip", consistency="skip")
    noop = certify_module.certify("reference", "reference", bundle, **fast)
    assert noop.desiderata["F"]["verdict"] == "FAIL"
    assert noop.desiderata["F"]["estimate"]["point"] == 0.0 and noop.verdict == "FAIL"
    assert noop.desiderata["R"]["verdict"] == "PASS"

    cert = certify_module.certify("reference", "reference-oracle", bundle, out=tmp_path / "out", **fast)
    d_f = cert.desiderata["F"]["estimate"]
    assert cert.desiderata["F"]["verdict"] == "PASS", cert.desiderata["F"]
    assert d_f["low"] >= 0.10 and not cert.body["guard"]
    assert cert.verdict != "PASS"  # S not computed
    assert main(["verify", str(tmp_path / "out" / "certificate.json"), "--candidate", "reference-oracle"]) == 0

    model = forget_finetuned(reference, bundle)
    folder = tmp_path / "suppressed"
    model.save_pretrained(folder, safe_serialization=True)
    reference.tokenizer.save_pretrained(folder)
    suppressed = certify_module.certify("reference", str(folder), bundle, **fast)
    assert suppressed.desiderata["F"]["verdict"] == "FAIL", suppressed.desiderata["F"]
    assert suppressed.verdict == "FAIL"


CHAT = "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"


def test_chat_template_changes_prompts_is_recorded_and_keys_the_cache(pair, small, tmp_path):
    """--chat-template on wraps every prompt, is recorded in the certificate and never reuses plain-prompt results."""
    from mansu_audit.evaluate import evaluate_mcq
    from mansu_audit.prompts import chat_prompt_fn

    base, cand = pair
    tok = copy.deepcopy(base.tokenizer)
    tok.chat_template = CHAT
    base = LoadedModel(base.model, tok, "b", None)
    cand = LoadedModel(cand.model, tok, "c", None)
    cache = ResultCache(tmp_path / "cache")
    plain = certify_module.certify(base, cand, small, quantizers=(), policy=FAST, cad=None, cache=cache,
                                   chat_template="off")
    chat = certify_module.certify(base, cand, small, quantizers=(), policy=FAST, cad=None, cache=cache,
                                  chat_template="on")
    assert plain.body["prompting"]["applied"] is False and plain.body["prompting"]["template_sha256"] is None
    assert chat.body["prompting"]["applied"] is True and len(chat.body["prompting"]["template_sha256"]) == 64
    # The chat run's predictions are those of the wrapped prompts, not the cached plain ones.
    wrap = chat_prompt_fn(tok, "on")
    assert wrap("Q?").startswith("<|user|>Q?") and wrap("Q?").endswith("<|assistant|>")
    direct = evaluate_mcq(cand.model, tok, small.split("forget_eval"), prompt_fn=wrap)
    assert chat.body["per_item"]["forget_eval"]["predictions"]["candidate/unquantized"] == direct.predictions.tolist()
    plain_direct = evaluate_mcq(cand.model, tok, small.split("forget_eval"))
    assert plain.body["per_item"]["forget_eval"]["predictions"]["candidate/unquantized"] == plain_direct.predictions.tolist()
    assert direct.predictions.tolist() != plain_direct.predictions.tolist() or \
        not np.allclose(direct.margin, plain_direct.margin)


def test_chat_template_on_without_template_is_one_clear_error(pair, small):
    base, cand = pair
    with pytest.raises(InputError, match="no chat template"):
        certify_module.certify(base, cand, small, quantizers=(), policy=FAST, cad=None, cache=NoCache(),
                               chat_template="on")


def test_cli_loading_options_reach_the_evaluation(capsys):
    """`evaluate --device cpu --dtype bfloat16 --batch-size 7 --chat-template off`: each option reaches the run."""
    import json

    code = main(["evaluate", "--model", "reference", "--device", "cpu", "--dtype", "bfloat16", "--batch-size", "7",
                 "--chat-template", "off", "--bootstrap", "200", "--quantizers", "fp32", "--json"])  # fp32: an alias
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["results"]) == {"unquantized"}  # named by what it is, its dtype beside it
    assert out["prompting"] == {"mode": "off", "applied": False, "template_sha256": None,
                                 "scoring": "letter"}
    assert out["dtype"] == "bfloat16" and out["batch_size"] == 7
    assert out["results"]["unquantized"]["forget_eval"]["accuracy"] > 0.9  # the memorised facts survive bf16
