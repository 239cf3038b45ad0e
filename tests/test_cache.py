"""Content-addressed result cache: keys follow content, an interrupted certify resumes, stale entries are never reused."""
from __future__ import annotations

import dataclasses
import importlib
import json

import numpy as np
import pytest
import torch

from conftest import small_bundle, tiny_llama
from mansu_audit.cache import (CACHE_ENV, NoCache, ResultCache, default_cache_dir, state_dict_sha256,
                               tokenizer_sha256)
from mansu_audit.errors import InputError
from mansu_audit.loading import model_from_objects
from mansu_audit.policy import Policy

certify_module = importlib.import_module("mansu_audit.certify")  # the module (mansu_audit.certify is the function)
FAST = Policy(bootstrap_replicates=500)


class CountingEvaluator:
    """Wraps evaluate_mcq, counting calls; raises KeyboardInterrupt on call number `fail_at` (a crash)."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at, self.real = 0, fail_at, certify_module.evaluate_mcq

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return self.real(*args, **kwargs)


def test_state_dict_hash_follows_content(ref_tokenizer):
    a = tiny_llama(len(ref_tokenizer), seed=0, hidden=32, intermediate=64)
    b = tiny_llama(len(ref_tokenizer), seed=0, hidden=32, intermediate=64)
    assert state_dict_sha256(a) == state_dict_sha256(b)  # same content, different objects
    with torch.no_grad():
        w = b.model.layers[1].mlp.down_proj.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))  # one ulp
    assert state_dict_sha256(a) != state_dict_sha256(b)
    assert state_dict_sha256(a.to(torch.float64)) != state_dict_sha256(tiny_llama(len(ref_tokenizer), seed=0,
                                                                                   hidden=32, intermediate=64))
    assert tokenizer_sha256(ref_tokenizer) == tokenizer_sha256(ref_tokenizer)


def test_cache_round_trip_and_corruption(tmp_path):
    cache = ResultCache(tmp_path / "c")
    inputs = {"model": "m1", "settings": {"b": 2, "a": 1}}
    k1 = ResultCache.key("stage", inputs)
    assert k1 == ResultCache.key("stage", {"settings": {"a": 1, "b": 2}, "model": "m1"})  # order-free
    assert k1 != ResultCache.key("stage", {"model": "m2", "settings": {"b": 2, "a": 1}})
    assert cache.get(k1) is None
    with pytest.raises(ValueError):
        cache.put(k1, {"x": 1}, stage="stage", inputs={"model": "m2"})  # a key that is not its inputs' hash
    cache.put(k1, {"x": [1, 2, float("-inf")]}, stage="stage", inputs=inputs)
    assert cache.get(k1) == {"x": [1, 2, float("-inf")]} and k1 in cache
    assert not list((tmp_path / "c").rglob("*.tmp"))  # atomic write leaves no temp files
    path = next((tmp_path / "c").rglob(f"{k1}.json"))
    path.write_text('{"key": "')  # a torn write from some other tool
    assert cache.get(k1) is None
    NoCache().put(k1, {"x": 1})
    assert NoCache().get(k1) is None


def test_default_location_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    assert ResultCache().root == tmp_path / "env-cache"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "mansu-audit"


@pytest.fixture()
def pair(ref_tokenizer):
    base = model_from_objects(tiny_llama(len(ref_tokenizer), seed=0, hidden=32, intermediate=64), ref_tokenizer, "b")
    cand = model_from_objects(tiny_llama(len(ref_tokenizer), seed=1, hidden=32, intermediate=64), ref_tokenizer, "c")
    return base, cand


def run(base, cand, bundle, cache, monkeypatch, fail_at=None):
    counter = CountingEvaluator(fail_at)
    monkeypatch.setattr(certify_module, "evaluate_mcq", counter)
    try:
        cert = certify_module.certify(base, cand, bundle, quantizers=("int8",), policy=FAST, cad=None, cache=cache,
                                      relearn=None, consistency=None, cross_scoring=None)
    finally:
        monkeypatch.setattr(certify_module, "evaluate_mcq", counter.real)
    return cert, counter.calls


def test_interrupted_certify_resumes(pair, tmp_path, monkeypatch):
    base, cand = pair
    bundle = small_bundle(tmp_path / "bundle")
    cache = ResultCache(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        run(base, cand, bundle, cache, monkeypatch, fail_at=4)  # 3 evaluations finished, the 4th crashed
    resumed, calls = run(base, cand, bundle, cache, monkeypatch)
    assert calls == 8 - 3  # 2 models x (fp32, int8) x 2 splits, minus the finished ones
    again, calls = run(base, cand, bundle, cache, monkeypatch)
    assert calls == 0
    fresh, calls = run(base, cand, bundle, NoCache(), monkeypatch)
    assert calls == 8
    assert fresh.body == resumed.body == again.body  # cached and fresh results are the same bytes
    assert fresh.body_sha256 == resumed.body_sha256


def test_changed_inputs_never_reuse_stale_entries(pair, tmp_path, monkeypatch):
    base, cand = pair
    bundle = small_bundle(tmp_path / "bundle")
    cache = ResultCache(tmp_path / "cache")
    first, calls = run(base, cand, bundle, cache, monkeypatch)
    assert calls == 8
    # The candidate changes in one weight: only its 4 evaluations are redone, under the same run name.
    with torch.no_grad():
        cand.model.model.layers[0].self_attn.q_proj.weight[0, 0] += 0.5
    changed, calls = run(base, cand, bundle, cache, monkeypatch)
    assert calls == 4
    assert changed.body["models"]["candidate"]["state_dict_sha256"] != first.body["models"]["candidate"][
        "state_dict_sha256"]
    # One retain question edited: both models' retain_eval evaluations (fp32 and int8) are redone.
    edited = small_bundle(tmp_path / "bundle2", edit_retain_question=True)
    _, calls = run(base, cand, edited, cache, monkeypatch)
    assert calls == 4
    # New evaluation code: nothing is reused.
    monkeypatch.setattr(certify_module, "evaluation_code_sha256", lambda: "0" * 64)
    _, calls = run(base, cand, bundle, cache, monkeypatch)
    assert calls == 8


def test_cached_predictions_equal_fresh_ones(pair, tmp_path, monkeypatch):
    base, cand = pair
    bundle = small_bundle(tmp_path / "bundle")
    cache = ResultCache(tmp_path / "cache")
    cert, _ = run(base, cand, bundle, cache, monkeypatch)
    fresh = certify_module.evaluate_mcq(cand.model, cand.tokenizer, bundle.split("forget_eval"))
    np.testing.assert_array_equal(cert.body["per_item"]["forget_eval"]["predictions"][
        certify_module.variant_key(certify_module.CANDIDATE, certify_module.UNQUANTIZED)],
                                  fresh.predictions)


def test_atomic_write_is_all_or_nothing_with_ordinary_permissions(tmp_path):
    import os
    import stat

    from mansu_audit.io import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a" / "x.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "x.json").read_bytes() == b"{}"
    assert stat.S_IMODE((tmp_path / "a" / "x.json").stat().st_mode) == 0o644
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]  # no temporary file left behind


def test_cad_is_keyed_by_the_corrupt_prompts(pair, tmp_path, monkeypatch):
    """Refitting forget_attr's corrupt prompts (same questions) must recompute CAD, never reuse the old one."""
    from mansu_audit.data import MCQItem

    base, cand = pair
    bundle = small_bundle(tmp_path / "bundle", n=8)
    cache = ResultCache(tmp_path / "cache")
    calls, real_compute_cad = [], certify_module.compute_cad

    def counting_compute_cad(*args, **kwargs):
        calls.append(1)
        return real_compute_cad(*args, **kwargs)

    monkeypatch.setattr(certify_module, "compute_cad", counting_compute_cad)
    certify_module.certify(base, cand, bundle, quantizers=(), policy=FAST, cache=cache)
    certify_module.certify(base, cand, bundle, quantizers=(), policy=FAST, cache=cache)
    assert len(calls) == 1
    attr = bundle.mcq["forget_attr"]
    length = lambda text: len(base.tokenizer(text).input_ids)  # noqa: E731
    refit = []
    for it in attr:  # another item's corrupt question of the same token length: a different, still valid refit
        other = next((o.corrupt for o in attr if o.corrupt != it.corrupt and length(o.corrupt) == length(it.corrupt)),
                     it.corrupt)
        refit.append(MCQItem(it.id, it.question, it.choices, it.answer, it.subject, {**it.extra, "corrupt": other}))
    assert any(r.corrupt != it.corrupt for r, it in zip(refit, attr))
    changed = dataclasses.replace(bundle, mcq={**bundle.mcq, "forget_attr": tuple(refit)})
    certify_module.certify(base, cand, changed, quantizers=(), policy=FAST, cache=cache)
    assert len(calls) == 2


def test_cad_without_usable_items_is_one_clear_error(pair, tmp_path):
    """Corrupt prompts of another length than the clean ones leave CAD nothing to compare: InputError, not a crash."""
    from mansu_audit.data import MCQItem

    base, cand = pair
    bundle = small_bundle(tmp_path / "bundle", n=8)
    bad = tuple(MCQItem(it.id, it.question, it.choices, it.answer, it.subject,
                        {**it.extra, "corrupt": it.question + " and much more text here"})
                for it in bundle.mcq["forget_attr"])
    bundle = dataclasses.replace(bundle, mcq={**bundle.mcq, "forget_attr": bad})
    with pytest.raises(InputError, match="CAD on forget_attr impossible"):
        certify_module.certify(base, cand, bundle, quantizers=(), policy=FAST, cache=NoCache())


def _entry_variants(entry: dict, key: str) -> dict:
    """Every way a stored entry can be wrong: each must be a miss, never used, never a crash."""
    value = entry["value"]
    wrong_pred = json.loads(json.dumps(entry))
    wrong_pred["value"]["result"]["predictions"][0] = (value["result"]["predictions"][0] + 1) % 4
    short = json.loads(json.dumps(entry))
    short["value"]["result"]["predictions"] = value["result"]["predictions"][:-1]
    from mansu_audit.cache import value_sha256
    short["value_sha256"] = value_sha256(short["value"])  # digest recomputed: caught by the shape check
    no_result = json.loads(json.dumps(entry))
    del no_result["value"]["result"]
    no_result["value_sha256"] = value_sha256(no_result["value"])
    bad_ids = json.loads(json.dumps(entry))
    bad_ids["value"]["result"]["ids"][0] = "someone-else"
    bad_ids["value_sha256"] = value_sha256(bad_ids["value"])
    other_inputs = json.loads(json.dumps(entry))
    other_inputs["inputs"]["variant"] = "int8"  # an entry moved to another key's file
    legacy = {"key": key, "value": value}  # the unchecked format of earlier versions
    return {"edited predictions": json.dumps(wrong_pred).encode(), "short arrays": json.dumps(short).encode(),
            "missing key": json.dumps(no_result).encode(), "other ids": json.dumps(bad_ids).encode(),
            "moved entry": json.dumps(other_inputs).encode(), "legacy format": json.dumps(legacy).encode(),
            "non-UTF-8": b'{"format": 2, "key": "\xff\xfe"}', "not JSON": b"\x00\x01garbage",
            "JSON list": b"[1, 2, 3]", "empty file": b""}


SLOW = pytest.mark.slow


@pytest.mark.parametrize("case", ["edited predictions", "short arrays", "missing key", "non-UTF-8",
                                  *(pytest.param(c, marks=SLOW) for c in ("other ids", "moved entry", "legacy format",
                                                                          "not JSON", "JSON list", "empty file"))])
def test_poisoned_cache_entry_is_recomputed_and_replaced(pair, tmp_path, monkeypatch, capsys, case):
    """A bad entry is a miss: one warning line, recomputed, replaced; the result equals a cold run."""
    base, cand = pair
    bundle = small_bundle(tmp_path / "bundle", n=12)
    cache = ResultCache(tmp_path / "cache")
    cold, calls = run(base, cand, bundle, cache, monkeypatch)
    assert calls == 8
    entries = sorted((tmp_path / "cache").rglob("*.json"))
    target = next(p for p in entries if json.loads(p.read_text())["inputs"]["variant"] == certify_module.UNQUANTIZED
                  and json.loads(p.read_text())["inputs"]["split"] == "forget_eval"
                  and json.loads(p.read_text())["inputs"]["model"] == certify_module.model_content_sha256(cand))
    good = target.read_bytes()
    target.write_bytes(_entry_variants(json.loads(good), target.stem)[case])
    capsys.readouterr()
    again, calls = run(base, cand, bundle, cache, monkeypatch)
    err = capsys.readouterr().err.strip().splitlines()
    assert calls == 1  # only the poisoned evaluation is redone
    assert len(err) == 1 and "warning: cache entry" in err[0] and target.name in err[0], err
    assert again.body == cold.body  # never used: the result equals the cold run
    assert json.loads(target.read_bytes()) == json.loads(good)  # replaced by the recomputed entry
    _, calls = run(base, cand, bundle, cache, monkeypatch)
    assert calls == 0 and not capsys.readouterr().err  # and now trusted again


def test_poisoned_cad_entry_is_recomputed(pair, tmp_path, capsys):
    base, cand = pair
    bundle = small_bundle(tmp_path / "bundle", n=8)
    cache = ResultCache(tmp_path / "cache")
    stages = dict(relearn=None, consistency=None)
    cold = certify_module.certify(base, cand, bundle, quantizers=(), policy=FAST, cache=cache, **stages)
    target = next(p for p in (tmp_path / "cache").rglob("*.json") if json.loads(p.read_text())["stage"] == "cad")
    entry = json.loads(target.read_text())
    entry["value"]["cad"]["low"] = 0.99  # make S look like a PASS
    target.write_text(json.dumps(entry))
    capsys.readouterr()
    again = certify_module.certify(base, cand, bundle, quantizers=(), policy=FAST, cache=cache, **stages)
    assert again.body == cold.body
    assert "value does not match its recorded SHA-256" in capsys.readouterr().err


def test_batch_size_is_not_part_of_the_evaluation_key(tmp_path, ref_tokenizer):
    """A run at another batch size reuses every evaluation entry (issue 13 §4: keys hold only what changes
    results) and gives the same predictions."""
    from mansu_audit.certify import evaluate_all
    from mansu_audit.loading import model_from_objects

    bundle = small_bundle(tmp_path / "bundle", n=12)
    model = model_from_objects(tiny_llama(len(ref_tokenizer), seed=0, hidden=32, intermediate=64), ref_tokenizer, "m")
    cache = ResultCache(tmp_path / "cache")
    first = evaluate_all({"base": model}, bundle, ("int8",), cache, batch_size=5)
    entries = sorted(p.name for p in (tmp_path / "cache").rglob("*.json"))
    again = evaluate_all({"base": model}, bundle, ("int8",), cache, batch_size=64)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.json")) == entries
    assert again.batch_size == 0  # everything came from the cache
    fresh = evaluate_all({"base": model}, bundle, ("int8",), NoCache(), batch_size=64)
    for split, by_key in first.results.items():
        for key, result in by_key.items():
            assert (fresh.results[split][key].predictions == result.predictions).all()
