"""Output folders of matrix, demo and report: checked before any work, built aside, published whole.

A reader never sees an old run's files beside a new run's; a non-empty folder is refused
without --overwrite, and a folder holding no earlier mansu-audit output is refused even
with it (one line, exit 2). The matrix cells are canned (a real certificate folder made
once), so these tests exercise the driver's writing, not the unlearning.
"""
from __future__ import annotations

import json

import pytest

import mansu_audit.demo as demo
import mansu_audit.matrix as matrix
from conftest import tiny_llama
from mansu_audit.cache import NoCache
from mansu_audit.certify import certify
from mansu_audit.cli import main
from mansu_audit.errors import InputError
from mansu_audit.loading import model_from_objects
from mansu_audit.outdir import check_output_file, staged_dir
from mansu_audit.policy import Policy
from test_cache import small_bundle


@pytest.fixture(scope="module")
def made(tmp_path_factory, ref_tokenizer):
    """A tiny base, a bundle, and one real certificate folder to serve as every matrix cell's output."""
    root = tmp_path_factory.mktemp("outdir")
    bundle = small_bundle(root / "bundle", n=8)
    base = model_from_objects(tiny_llama(len(ref_tokenizer), seed=0, hidden=32, intermediate=64), ref_tokenizer, "b")
    cand = model_from_objects(tiny_llama(len(ref_tokenizer), seed=1, hidden=32, intermediate=64), ref_tokenizer, "c")
    cert = certify(base, cand, bundle, quantizers=(), policy=Policy(bootstrap_replicates=50), cad=None,
                   cache=NoCache(), out=root / "cert", relearn=None, consistency=None)
    files = [(p.name, p.read_bytes()) for p in sorted((root / "cert").iterdir())]
    return {"root": root, "bundle": bundle, "base": base, "body": cert.body, "files": files}


@pytest.fixture()
def canned(made, monkeypatch):
    """run_matrix with the base stage and the cells replaced by the canned certificate folder."""
    monkeypatch.setattr(matrix, "evaluate_base", lambda ctx, _item=None: {})
    monkeypatch.setattr(matrix, "run_cell", lambda ctx, cell: {"files": made["files"], "body": made["body"],
                                                              "record": {}})

    def run(out, **kwargs):
        return matrix.run_matrix(["ga", "npo"], (), (0,), out, base=made["base"], benchmark=made["bundle"],
                                 cache=NoCache(), progress=False, **kwargs)
    return run


def _siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def test_matrix_publishes_whole_and_replaces_an_earlier_run_whole(canned, tmp_path, monkeypatch):
    out = tmp_path / "grid"
    run = canned(out)
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "matrix.html", "matrix.json", "runs"]
    assert run.results_path == out / "matrix.json" and run.report_path == out / "index.html"
    assert _siblings(out) == []  # no staging folder left
    (out / "runs" / "old-method").mkdir()
    (out / "runs" / "old-method" / "certificate.json").write_text("{}")
    (out / "index.html").write_text("stale PASS")
    with pytest.raises(InputError, match=r"not empty \(pass --overwrite"):
        canned(out)
    assert (out / "index.html").read_text() == "stale PASS"  # refused before any work: untouched

    seen = []
    real_write = matrix.write_results

    def watching(results, path):  # while the new results are built, OUT still holds the earlier run, unmixed
        seen.append(((out / "index.html").read_text(), path.parent != out))
        return real_write(results, path)

    monkeypatch.setattr(matrix, "write_results", watching)
    canned(out, overwrite=True)
    assert seen == [("stale PASS", True)]
    assert not (out / "runs" / "old-method").exists() and "stale PASS" not in (out / "index.html").read_text()
    assert _siblings(out) == []


def test_matrix_results_survive_a_render_failure_without_stale_html(canned, tmp_path, monkeypatch):
    out = tmp_path / "grid"
    canned(out)
    (out / "index.html").write_text("stale PASS")

    def broken(*args, **kwargs):
        raise InputError("template broken")

    monkeypatch.setattr(matrix, "render_report", broken)
    with pytest.raises(InputError, match="template broken"):
        canned(out, overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["matrix.html", "matrix.json", "runs"]  # the new results are published; no old index.html
    assert json.loads((out / "matrix.json").read_text())["cells"][1]["folder"] == "runs/npo/seed-0"


def test_matrix_baseline_regressions_are_in_the_first_render(canned, tmp_path):
    out = tmp_path / "grid"
    first = canned(out)
    baseline = json.loads(json.dumps(first.results))
    baseline["cells"][0]["statistics"]["D_F"]["point"] += 0.5
    run = canned(out, overwrite=True, baseline=baseline, baseline_path="b.json",
                 tolerances=matrix.parse_tolerance(None))
    assert len(run.regressions) == 1 and run.regressions[0].startswith("ga seed 0: D_F moved")
    assert "regression(s)" in (out / "matrix.html").read_text()


@pytest.mark.parametrize("command", [["matrix", "--methods", "ga"], ["demo", "--methods", "ga"]])
def test_matrix_and_demo_refuse_a_non_empty_folder_in_one_line(command, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "matrix.json").write_text("{}")
    assert main([*command, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty (pass --overwrite" in err[0] and str(out) in err[0], err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    assert main([*command, "--out", str(foreign), "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no earlier mansu-audit output" in err[0], err
    under_file = tmp_path / "f.txt"
    under_file.write_text("x")
    assert main([*command, "--out", str(under_file / "sub"), "--quiet"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "user data" and sorted(p.name for p in out.iterdir()) == [
        "matrix.json"]


def test_demo_writes_through_the_matrix_publisher(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "run_matrix", lambda *a, **k: calls.append(k) or "run")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "matrix.json").write_text("{}")
    with pytest.raises(InputError, match="not empty"):
        demo.run_demo(out, methods=("ga",), quantizers=("int8",))
    assert calls == []  # refused before anything ran
    demo.run_demo(out, methods=("ga",), quantizers=("int8",), overwrite=True)
    assert calls[0]["overwrite"] is True


def test_report_out_file_is_refused_unless_overwrite(made, tmp_path, capsys):
    folder = made["root"] / "cert"
    target = tmp_path / "r.html"
    target.write_text("mine")
    assert main(["report", str(folder), "--out-file", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "file exists (pass --overwrite" in err[0], err
    assert target.read_text() == "mine"
    assert main(["report", str(folder), "--out-file", str(target), "--overwrite"]) == 0
    assert "<html" in target.read_text()
    assert main(["report", str(folder), "--out-file", str(tmp_path)]) == 2
    assert "must be a file (it is a folder)" in capsys.readouterr().err
    assert main(["report", str(folder), "--out-file", str(target / "x.html")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # nothing else written


def test_staged_dir_publishes_on_success_and_keeps_the_old_folder_on_error(tmp_path):
    out = tmp_path / "o"
    with staged_dir(out) as stage:
        (stage / "certificate.json").write_text("new")
        assert not out.exists()
    assert (out / "certificate.json").read_text() == "new"
    with pytest.raises(RuntimeError):
        with staged_dir(out, overwrite=True) as stage:
            (stage / "certificate.json").write_text("newer")
            raise RuntimeError("interrupted")
    assert (out / "certificate.json").read_text() == "new" and _siblings(out) == []
    with pytest.raises(InputError, match="file exists"):
        check_output_file(out / "certificate.json")
    assert check_output_file(out / "certificate.json", overwrite=True) == out / "certificate.json"
