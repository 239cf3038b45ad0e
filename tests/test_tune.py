"""`tune` / `mansu-audit tune`: declared search spaces, seeded trials scored on the training splits only,
the settings file round trip into `matrix --settings`, and one-line refusals of bad input."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from conftest import small_bundle
from mansu_audit.cli import main
from mansu_audit.methods.base import Method, MethodSettings, UnlearnResult, parse_overrides, settings_dict
from mansu_audit.registry import available_methods, get_method

tune_module = importlib.import_module("mansu_audit.tune")  # `mansu_audit.tune` is also the function
FAST_SPACE = {"lr": (1e-3, 3e-2, "log"), "steps": [1, 2]}
FIXED = {"batch_size": 4}


def _spy(monkeypatch) -> list[str]:
    """Record the split of every MCQ evaluation tune runs (and make evaluating an eval split fail loudly)."""
    seen: list[str] = []
    real = tune_module.evaluate_mcq

    def spy(model, tokenizer, items, *, split="", **kwargs):
        seen.append(split)
        assert not any(it.id.startswith(("fe-", "re-")) for it in items), "an evaluation item was scored"
        return real(model, tokenizer, items, split=split, **kwargs)

    monkeypatch.setattr(tune_module, "evaluate_mcq", spy)
    return seen


def _trials(result) -> list[dict]:
    return [{k: v for k, v in t.to_dict().items() if k != "seconds"} for t in result.trials]


class Recorder(Method):
    """A method that records the splits it was given and leaves the model as it is (plumbing tests)."""

    name = "recorder"
    Settings = MethodSettings
    search_space = {"lr": [1e-4, 2e-4], "steps": (1, 5)}
    seen: list[list[str]] = []

    def run(self, context, settings):
        Recorder.seen.append(sorted(context.bundle.mcq))
        return UnlearnResult(context.frozen_copy(), settings.steps, 0.0, {}, self.name, settings_dict(settings),
                             context.seed)


def test_every_bundled_method_declares_a_valid_search_space():
    rng = np.random.default_rng(0)
    for name, cls in available_methods().items():
        space = tune_module.method_space(cls())
        assert {"lr", "steps"} <= set(space), name
        drawn = tune_module.sample_settings(space, cls.Settings, rng)
        parse_overrides(cls.Settings, drawn)  # every draw is a valid setting


def test_sampling_is_seeded_and_ranges_are_respected():
    space = {"lr": (1e-5, 1e-3, "log"), "steps": (10, 20), "forget_source": ["corpus", "attr"]}
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [tune_module.sample_settings(space, MethodSettings, rng) for _ in range(20)]

    a, b = draw(3), draw(3)
    assert a == b and a != draw(4)
    assert all(1e-5 <= d["lr"] <= 1e-3 and isinstance(d["steps"], int) and 10 <= d["steps"] <= 20 for d in a)
    assert {d["forget_source"] for d in a} == {"corpus", "attr"}


def test_trials_are_deterministic_and_only_training_splits_are_scored(reference, tmp_path, monkeypatch):
    bundle = small_bundle(tmp_path / "bundle", n=24)
    seen = _spy(monkeypatch)
    run = lambda: tune_module.tune("ga", 2, seed=5, base=reference, benchmark=bundle, space=FAST_SPACE, fixed=FIXED,
                                   threads=1)
    first, second = run(), run()
    assert _trials(first) == _trials(second)
    assert set(seen) == {"forget_train", "retain_train"}
    assert len(seen) == 2 * 2 * (1 + 2)  # two runs x two splits x (the base once + each trial)
    assert [t.settings["lr"] for t in first.trials] != [t.settings["lr"] for t in
                                                        tune_module.tune("ga", 2, seed=6, base=reference,
                                                                         benchmark=bundle, space=FAST_SPACE,
                                                                         fixed=FIXED, threads=1).trials]
    d = first.to_dict()
    assert d["splits"] == {"forget": "forget_train", "retain": "retain_train"}
    for t in d["trials"]:
        assert t["D_F"]["n"] == 24 and t["D_F"]["low"] <= t["D_F"]["point"] <= t["D_F"]["high"]
        assert t["feasible"] == (t["D_R"]["high"] <= d["max_retain_drop"])
    if first.chosen is not None:
        best = max((t for t in first.trials if t.feasible), key=lambda t: t.D_F.low)
        assert first.trials[first.chosen].D_F.low == best.D_F.low
        assert first.settings == {**first.trials[first.chosen].settings, **FIXED}


def test_the_method_never_sees_evaluation_splits(tiny_dir, tmp_path, monkeypatch):
    bundle = small_bundle(tmp_path / "bundle", n=12)
    seen = _spy(monkeypatch)
    Recorder.seen = []
    result = tune_module.tune(Recorder, 3, seed=1, base=str(tiny_dir), benchmark=bundle, threads=1)
    assert len(Recorder.seen) == 3
    assert all("forget_eval" not in s and "retain_eval" not in s and "forget_train" in s for s in Recorder.seen)
    assert set(seen) == {"forget_train", "retain_train"}
    # the model is unchanged, so every trial has D_F = D_R = 0 and is feasible; ties go to the earlier trial
    assert all(t.D_F.point == 0 and t.feasible for t in result.trials) and result.chosen == 0


def test_a_base_at_chance_gets_a_note():
    from mansu_audit.evaluate import MCQResult
    from mansu_audit.policy import Policy

    answers = np.arange(120) % 4
    logprobs = np.zeros((120, 4))

    def result(predictions):
        return MCQResult("forget_train", tuple(map(str, range(120))), answers, predictions, logprobs)

    notes = tune_module.base_notes({"forget_train": result(np.zeros(120, dtype=np.int64)),
                                    "retain_train": result(answers.copy())}, Policy(bootstrap_replicates=1000))
    assert len(notes) == 1 and "forget_train" in notes[0] and "not informative" in notes[0]


def test_settings_file_round_trips_into_matrix_overrides(tiny_dir, tmp_path):
    bundle = small_bundle(tmp_path / "bundle", n=12)
    result = tune_module.tune("ga", 2, seed=0, base=str(tiny_dir), benchmark=bundle, space=FAST_SPACE,
                              fixed=FIXED, threads=1)
    path = tune_module.write_result(result, tmp_path / "ga.json")
    back = tune_module.TuneResult.from_dict(json.loads(path.read_text()))
    assert back.to_dict() == result.to_dict()
    method, pairs = tune_module.read_settings_file(path)
    assert method == "ga"
    assert settings_dict(parse_overrides(get_method("ga").Settings, pairs)) == \
        settings_dict(parse_overrides(get_method("ga").Settings, result.settings))
    overrides = tune_module.tuned_overrides([path], ["GA", "npo"], {"GA": ["steps=7"]})
    assert overrides["GA"] == pairs + ["steps=7"]  # --set comes last, so it wins
    assert parse_overrides(get_method("ga").Settings, overrides["GA"]).steps == 7


def test_cli_writes_the_file_and_prints_json_without_out(tiny_dir, tmp_path, capsys):
    bundle_dir = tmp_path / "bundle"
    small_bundle(bundle_dir, n=12)
    common = ["tune", "--method", "ga", "--budget", "1", "--base", str(tiny_dir), "--benchmark", str(bundle_dir),
              "--set", "steps=1", "--set", "batch_size=4", "--quiet", "--threads", "1"]
    out = tmp_path / "t.json"
    assert main(common + ["--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "mansu-audit-tune" and doc["chosen"]["settings"]["steps"] == 1
    assert "steps" not in doc["search_space"] and doc["fixed"] == {"steps": 1, "batch_size": 4}
    capsys.readouterr()
    assert main(common) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [t["settings"] for t in printed["trials"]] == [t["settings"] for t in doc["trials"]]


def _one_line_error(capsys, argv) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own one-line errors exit from parse_args
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line(tiny_dir, tmp_path, capsys):
    bundle_dir = tmp_path / "bundle"
    small_bundle(bundle_dir, n=12)
    args = ["--base", str(tiny_dir), "--benchmark", str(bundle_dir), "--quiet"]
    assert "unknown method" in _one_line_error(capsys, ["tune", "--method", "nosuch", "--budget", "2", *args])
    assert "--budget" in _one_line_error(capsys, ["tune", "--method", "ga", "--budget", "0", *args])
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    for split in ("forget_train", "retain_train"):
        manifest["splits"].pop(split)
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    err = _one_line_error(capsys, ["tune", "--method", "ga", "--budget", "2", *args])
    assert "forget_train" in err and "manifest.json" in err
    with pytest.raises(tune_module.InputError, match="no search_space"):
        tune_module.method_space(type("Plain", (Method,), {"name": "plain"})())
    with pytest.raises(tune_module.InputError, match="budget"):
        tune_module.tune("ga", 0)
    with pytest.raises(tune_module.InputError, match="unknown setting"):
        tune_module.check_space({"nope": [1]}, MethodSettings)


def test_matrix_refuses_a_bad_settings_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    argv = ["matrix", "--methods", "ga", "--out", str(tmp_path / "m"), "--no-cache", "--quiet", "--settings"]
    assert "tune" in _one_line_error(capsys, argv + [str(bad)])
    none_chosen = tmp_path / "none.json"
    none_chosen.write_text(json.dumps({"format": "mansu-audit-tune", "version": 1, "method": "ga", "chosen": None}))
    assert "no trial" in _one_line_error(capsys, argv + [str(none_chosen)])
    other = tmp_path / "npo.json"
    other.write_text(json.dumps({"format": "mansu-audit-tune", "version": 1, "method": "npo",
                                 "chosen": {"trial": 0, "settings": {"lr": 1e-4}}}))
    assert "not in --methods" in _one_line_error(capsys, argv + [str(other)])
