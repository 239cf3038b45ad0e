"""One CLI (issue 13 §3) and one API (§4): shared options on every command, help texts, `--version`,
`--cad skip` from matrix/demo down to certify, `certify(cad="skip")` the same as `cad=None`."""
from __future__ import annotations

import argparse
import importlib

import pytest

import mansu_audit.matrix as matrix_module
from conftest import REFERENCE_DIR, small_bundle, tiny_llama
from mansu_audit._version import __version__
from mansu_audit.cache import NoCache
from mansu_audit.cli import build_parser, main
from mansu_audit.errors import InputError
from mansu_audit.policy import Policy

certify_module = importlib.import_module("mansu_audit.certify")  # the module, not the function

# Commands that load a model. verify re-runs at the certificate's recorded dtype (its --device defaults to the
# recorded device), so it takes --device and --threads but no --dtype.
MODEL_COMMANDS = ("attribute", "cad", "certify", "demo", "diagnose", "evaluate", "matrix", "unlearn", "verify")
RECORDED_DTYPE = ("verify",)
PROGRESS_COMMANDS = ("attribute", "cad", "certify", "demo", "evaluate", "matrix", "unlearn", "verify")
TABLE_COMMANDS = ("cad", "certify", "demo", "diagnose", "evaluate", "matrix", "methods")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def test_model_commands_share_device_dtype_threads():
    subs = _subparsers()
    for name in MODEL_COMMANDS:
        opts = _options(subs[name])
        wanted = {"--device", "--threads"} | (set() if name in RECORDED_DTYPE else {"--dtype"})
        assert wanted <= set(opts), (name, wanted - set(opts))
        if name not in RECORDED_DTYPE:
            assert opts["--device"].default == "auto" and opts["--dtype"].default == "auto", name


def test_quiet_and_json_where_progress_or_a_table_is_printed():
    subs = _subparsers()
    for name in PROGRESS_COMMANDS:
        assert "--quiet" in _options(subs[name]), name
    for name in TABLE_COMMANDS:
        assert "--json" in _options(subs[name]), name


def test_every_option_has_help_showing_its_default():
    for name, p in _subparsers().items():
        for action in p._actions:
            if not action.option_strings or "--help" in action.option_strings or action.help == argparse.SUPPRESS:
                continue
            assert action.help and action.help.strip(), (name, action.option_strings)
            if action.default not in (None, [], argparse.SUPPRESS) and not isinstance(action.default, bool):
                assert "default" in action.help, (name, action.option_strings, action.default)


def test_model_and_benchmark_help_is_one_shared_text():
    subs = _subparsers()
    for name, p in subs.items():
        opts = _options(p)
        for flag in ("--model", "--base", "--candidate"):
            if flag in opts and not (name == "verify"):  # verify's default is the recorded model
                text = opts[flag].help
                for word in ("reference-nf4grid", "reference-oracle", "hub id", "LoRA adapter", ".gguf"):
                    assert word in text, (name, flag, word)
        if "--benchmark" in opts and name != "verify":
            assert "synthhazard" in opts["--benchmark"].help and "lm-eval:FORGET,RETAIN" in opts["--benchmark"].help
        p.format_help()  # every %(default)s expands


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mansu-audit {__version__}"


@pytest.mark.parametrize("command", ["attribute", "diagnose"])
def test_pinned_commands_refuse_other_devices(command, capsys):
    args = {"attribute": ["--model", "reference", "--out-file", "x.json"],
            "diagnose": ["--base", "reference", "--candidate", "reference"]}[command]
    assert main([command, *args, "--dtype", "bfloat16"]) == 2
    assert "runs in float32" in capsys.readouterr().err


def test_cad_skip_reaches_run_matrix_and_run_demo(monkeypatch, tmp_path):
    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise InputError("stop here")

    monkeypatch.setattr("mansu_audit.commands.matrix.run_matrix", fake)
    assert main(["matrix", "--methods", "ga", "--out", str(tmp_path / "m"), "--no-cache", "--cad", "skip"]) == 2
    assert seen.pop("cad") == "skip"
    monkeypatch.setattr("mansu_audit.commands.demo.run_demo", fake)
    assert main(["demo", "--methods", "ga", "--out", str(tmp_path / "d"), "--no-cache", "--cad", "skip"]) == 2
    assert seen.pop("cad") == "skip"
    monkeypatch.setattr("mansu_audit.demo.run_matrix", fake)
    from mansu_audit.demo import run_demo

    with pytest.raises(InputError, match="stop here"):
        run_demo(tmp_path / "d2", methods=("ga",), quantizers=("int8",), cad="skip")
    assert seen.pop("cad") == "skip"


def test_demo_runs_the_methods_at_their_shipped_tuned_settings(monkeypatch, tmp_path):
    """The demo passes each method's shipped `tune` choice to run_matrix; `--defaults` passes none; a method
    without a shipped file runs at its defaults."""
    from mansu_audit.tune import read_settings_file

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise InputError("stop here")

    monkeypatch.setattr("mansu_audit.demo.run_matrix", fake)
    assert main(["demo", "--methods", "ga,mansu,surgical-ga", "--out", str(tmp_path / "d"), "--no-cache"]) == 2
    from mansu_audit.loading.local import BUNDLED_MODELS

    for method in ("ga", "mansu"):
        name, pairs = read_settings_file(BUNDLED_MODELS["reference"] / "tuned" / f"{method}.json")
        assert name == method and seen["overrides"][method] == pairs and pairs
    assert "surgical-ga" not in seen["overrides"] and "tuned settings" in seen["title"]
    assert main(["demo", "--methods", "ga", "--out", str(tmp_path / "d"), "--no-cache", "--defaults"]) == 2
    assert seen["overrides"] == {} and "default settings" in seen["title"]
    assert main(["demo", "--methods", "GA", "--out", str(tmp_path / "d"), "--no-cache"]) == 2  # any spelling
    assert seen["overrides"]["GA"] and seen["title"].endswith("(tuned settings)")


def test_matrix_cell_passes_cad_to_certify(monkeypatch, tmp_path, bundle):
    class Stop(Exception):
        pass

    seen = {}

    def fake_certify(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    class Executor:  # a "remote" executor: run_matrix neither loads the base nor evaluates it here
        def map(self, fn, ctx, items, labels, progress=False):
            seen["ctx"] = ctx
            raise Stop

    with pytest.raises(InputError, match="cad must be"):
        matrix_module.run_matrix(("ga",), ("int8",), (0,), tmp_path / "bad", cache=NoCache(), cad="none",
                                 executor=Executor(), benchmark=bundle)
    with pytest.raises(Stop):
        matrix_module.run_matrix(("ga",), ("int8",), (0,), tmp_path / "m", cache=NoCache(), cad="skip",
                                 executor=Executor(), benchmark=bundle)
    ctx = seen.pop("ctx")
    assert ctx.cad == "skip"
    monkeypatch.setattr(matrix_module, "certify", fake_certify)
    monkeypatch.setattr(matrix_module, "load_model", lambda *a, **k: object())
    monkeypatch.setattr(matrix_module, "model_content_sha256", lambda m: "0" * 64)
    monkeypatch.setattr(matrix_module, "unlearned_checkpoint", lambda *a, **k: (tmp_path / "ckpt", {}))
    with pytest.raises(Stop):
        matrix_module.run_cell(ctx, ("ga", 0, (), "ga"))
    assert seen["cad"] == "skip"


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    from transformers import AutoTokenizer

    from mansu_audit.loading import model_from_objects

    tok = AutoTokenizer.from_pretrained(str(REFERENCE_DIR))
    root = tmp_path_factory.mktemp("cad-skip")
    base = model_from_objects(tiny_llama(len(tok), seed=0, hidden=32, intermediate=64), tok, "b")
    cand = model_from_objects(tiny_llama(len(tok), seed=1, hidden=32, intermediate=64), tok, "c")
    return base, cand, small_bundle(root / "bundle", n=8)


def test_certify_cad_skip_equals_none(tiny_pair):
    base, cand, bundle = tiny_pair
    common = dict(quantizers=(), policy=Policy(bootstrap_replicates=200), relearn=None, consistency=None)
    skipped = certify_module.certify(base, cand, bundle, cad="skip", **common)
    none = certify_module.certify(base, cand, bundle, cad=None, **common)
    assert skipped.body == none.body
    assert skipped.body_sha256 == none.body_sha256


@pytest.mark.parametrize("bad, match", [
    ({"cad": "none"}, "cad must be"), ({"relearn": "yes"}, "relearn must be"),
    ({"consistency": "on please"}, "consistency must be"), ({"chat_template": "maybe"}, "chat_template must be"),
    ({"truncate": "right"}, "truncate must be"), ({"batch_size": 0}, "batch_size must be"),
    ({"device": "tpu"}, "unknown device"), ({"dtype": "int3"}, "unknown dtype")])
def test_certify_checks_every_argument_before_any_work(bad, match, monkeypatch, tmp_path):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(certify_module, "load_bundle", no_work)
    monkeypatch.setattr(certify_module, "load_model", no_work)
    with pytest.raises(InputError, match=match):
        certify_module.certify("reference", "reference", "synthhazard", out=tmp_path / "out", **bad)
    assert not (tmp_path / "out").exists()


def test_reproducible_command_drops_json():
    from mansu_audit.commands.certify import reproducible_command

    assert "--json" not in reproducible_command(["certify", "--base", "b", "--candidate", "c", "--json"])


def test_piped_output_has_no_cursor_control_sequences():
    """stderr is a pipe here: no progress bars (\\r or ANSI escapes), only plain lines."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mansu_audit", "evaluate", "--model", "reference",
                           "--quantizers", "int8"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stream in (proc.stdout, proc.stderr):
        assert "\r" not in stream and "\x1b[" not in stream


def _visible(p: argparse.ArgumentParser) -> set[str]:
    return {o for o, a in _options(p).items() if a.help != argparse.SUPPRESS}


def test_one_meaning_per_flag_name():
    """--seed is the unlearning seed, --method an unlearning method, --out a folder, --benchmark a benchmark:
    the commands where these names meant something else use their own names now (issue 13 §3)."""
    subs = _subparsers()
    where = {flag: sorted(name for name, p in subs.items() if flag in _visible(p))
             for flag in ("--seed", "--method", "--out", "--out-file", "--stats-seed", "--calibration")}
    assert where["--seed"] == ["tune", "unlearn"]
    assert where["--method"] == ["tune", "unlearn"]
    assert where["--out-file"] == ["attribute", "report", "tune"]
    assert not set(where["--out"]) & set(where["--out-file"])
    assert where["--stats-seed"] == ["attribute", "cad", "evaluate"]
    assert where["--calibration"] == []
    for name in where["--out"]:
        assert "file" not in _options(subs[name])["--out"].help.split("(")[0].lower().replace("certificate.json", "")


@pytest.mark.parametrize("argv, dest, value", [
    (["evaluate", "--model", "reference", "--seed", "3"], "stats_seed", 3),
    (["cad", "--base", "a", "--candidate", "b", "--method", "eap"], "attribution", "eap"),
    (["attribute", "--model", "reference", "--out", "x.json"], "out_file", "x.json"),
    (["report", "DIR", "--out", "x.html"], "out_file", "x.html"),
    (["convert", "wmdp", "--source", "s", "--out", "o", "--seed", "2"], "split_seed", 2),
    (["diagnose", "--base", "a", "--candidate", "b", "--calibration", "synthhazard"], "benchmark", "synthhazard"),
])
def test_former_option_names_still_work_with_a_warning(argv, dest, value, capsys):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is now --" in err and "will be removed" in err


def test_renamed_option_keeps_its_type_check(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["evaluate", "--model", "reference", "--seed", "-1"])
    assert exc.value.code == 2


def test_set_has_one_syntax():
    from mansu_audit.commands._common import parse_settings

    assert parse_settings(["steps=3", "ga:lr=1e-4"], ["ga"]) == {"ga": ["steps=3", "lr=1e-4"]}
    assert parse_settings(["ga:steps=3", "npo:beta=0.1"], ["ga", "npo"]) == {"ga": ["steps=3"], "npo": ["beta=0.1"]}
    assert parse_settings(["m.py:Cls:steps=2"], ["m.py:Cls"]) == {"m.py:Cls": ["steps=2"]}
    assert parse_settings(["ga:forget_source=a:b"], ["ga"]) == {"ga": ["forget_source=a:b"]}
    for bad, methods, message in ((["steps"], ["ga"], "expected"), (["steps=3"], ["ga", "npo"], "several methods"),
                                  (["npo:steps=3"], ["ga"], "not a method this command runs"), (["=3"], ["ga"], "expected")):
        with pytest.raises(InputError, match=message):
            parse_settings(bad, methods)


def test_unlearn_and_tune_accept_the_method_prefix(monkeypatch, tmp_path):
    import mansu_audit.commands.tune as tune_command
    import mansu_audit.commands.unlearn as unlearn_command

    seen = {}

    def stop(*args, **kwargs):
        seen.update(kwargs)
        raise InputError("stop here")

    monkeypatch.setattr(unlearn_command, "unlearn", stop)
    monkeypatch.setattr(tune_command, "tune", stop)
    assert main(["unlearn", "--method", "ga", "--model", "reference", "--out", str(tmp_path / "o"),
                 "--set", "ga:steps=2", "--set", "lr=1e-4"]) == 2
    assert seen.pop("overrides") == ["steps=2", "lr=1e-4"]
    seen.clear()
    assert main(["tune", "--method", "ga", "--budget", "1", "--set", "ga:steps=2"]) == 2
    assert seen.pop("fixed") == {"steps": "2"}
    seen.clear()
    assert main(["unlearn", "--method", "ga", "--model", "reference", "--out", str(tmp_path / "o"),
                 "--set", "npo:steps=2"]) == 2 and not seen


def test_attribute_without_out_file_is_one_line(capsys):
    assert main(["attribute", "--model", "reference"]) == 2
    assert capsys.readouterr().err.strip().endswith("the argument --out-file is required")


def test_optional_libraries_import_noise_is_kept_off_stderr_and_restored():
    import logging

    from mansu_audit.errors import IMPORT_NOISE_LOGGERS, quiet_import_noise

    before = [logging.getLogger(n).level for n in IMPORT_NOISE_LOGGERS]
    with quiet_import_noise():
        assert all(not logging.getLogger(n).isEnabledFor(logging.WARNING) for n in IMPORT_NOISE_LOGGERS)
    assert [logging.getLogger(n).level for n in IMPORT_NOISE_LOGGERS] == before


def test_verbose_shows_library_logs_and_restores_their_level(monkeypatch):
    """(transformers' handler keeps the stream it was first given, so the level is checked, not captured text)"""
    import logging

    import mansu_audit.commands.evaluate as evaluate_command
    from transformers.utils import logging as hf_logging

    seen = {}

    def record(*args, **kwargs):
        seen["level"] = hf_logging.get_verbosity()
        seen["torchao_warns"] = logging.getLogger("torchao").isEnabledFor(logging.WARNING)
        raise InputError("stop here")

    monkeypatch.setattr(evaluate_command, "evaluate", record)
    before = hf_logging.get_verbosity()
    assert main(["evaluate", "--model", "reference", "--limit", "4", "--verbose"]) == 2
    assert seen == {"level": logging.INFO, "torchao_warns": True}
    assert hf_logging.get_verbosity() == before
    assert main(["evaluate", "--model", "reference", "--limit", "4"]) == 2
    assert seen["level"] == before and seen["torchao_warns"] is False
    subs = _subparsers()
    for name in PROGRESS_COMMANDS:
        assert "--verbose" in _options(subs[name]), name
