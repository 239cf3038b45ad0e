"""The regression matrix: pooling identities, baseline comparison, and a cached, resumable grid run on tiny models."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

import mansu_audit.matrix as matrix
from conftest import tiny_llama
from mansu_audit.cache import NoCache, ResultCache
from mansu_audit.certify import certify
from mansu_audit.cli import main
from mansu_audit.errors import InputError
from mansu_audit.loading import model_from_objects
from mansu_audit.policy import Policy
from conftest import small_bundle

FAST = Policy(bootstrap_replicates=200)


@pytest.fixture(scope="module")
def bodies(tmp_path_factory, ref_tokenizer):
    """Certificates of two tiny candidates against one tiny base (as two 'seeds' of a method)."""
    bundle = small_bundle(tmp_path_factory.mktemp("m") / "bundle", n=24)
    base = model_from_objects(tiny_llama(len(ref_tokenizer), seed=0, hidden=32, intermediate=64), ref_tokenizer, "b")
    out = []
    for seed in (1, 2):
        cand = model_from_objects(tiny_llama(len(ref_tokenizer), seed=seed, hidden=32, intermediate=64),
                                  ref_tokenizer, f"c{seed}")
        out.append(certify(base, cand, bundle, quantizers=("int8",), policy=FAST, cad=None, cache=NoCache()).body)
    return out


def test_pooling_one_seed_reproduces_the_certificate(bodies):
    pooled = matrix.pool_seeds(bodies[:1])
    d = bodies[0]["desiderata"]
    for stat, name in (("D_F", "F"), ("D_R", "R"), ("G_Q[int8]", "Q[int8]")):
        for k in ("point", "low", "high"):  # same vectors, same bootstrap seed and B: identical estimates
            assert pooled["statistics"][stat][k] == pytest.approx(d[name]["estimate"][k], abs=1e-9)
        assert pooled["verdicts"][name] == d[name]["verdict"]


def test_pooled_point_is_the_mean_of_seed_points(bodies):
    pooled = matrix.pool_seeds(bodies)
    for stat, name in (("D_F", "F"), ("D_R", "R"), ("G_Q[int8]", "Q[int8]")):
        mean = np.mean([b["desiderata"][name]["estimate"]["point"] for b in bodies])
        assert pooled["statistics"][stat]["point"] == pytest.approx(mean, abs=1e-9)  # linear in the per-item means
    assert pooled["n_seeds"] == 2
    assert pooled["verdicts"]["S"] == "NOT COMPUTED" and pooled["verdict"] != "PASS"
    # random tiny models trip the over-unlearning guard, so nothing pooled may PASS
    assert bodies[0]["guard"] and "PASS" not in pooled["verdicts"].values()


def test_certification_rate_counts_seeds_passing_f_r_and_q():
    seeds = [{"F": "PASS", "R": "PASS", "Q[nf4]": "PASS", "Q[int8]": "PASS", "S": "FAIL"},
             {"F": "PASS", "R": "PASS", "Q[nf4]": "FAIL", "Q[int8]": "PASS"},
             {"F": "PASS", "R": "INCONCLUSIVE", "Q[nf4]": "PASS", "Q[int8]": "PASS"}]
    rate = matrix.certification_rate(seeds, ["nf4", "int8"])
    assert rate["per_quantizer"] == {"nf4": {"k": 1, "n": 3, "rate": pytest.approx(1 / 3)},
                                     "int8": {"k": 2, "n": 3, "rate": pytest.approx(2 / 3)}}
    assert rate["all_quantizers"]["k"] == 1 and rate["requires"] == ["F", "R", "Q[q]"]
    assert matrix.cert_rate_text(rate) == "nf4 1/3 seeds, int8 2/3 seeds; every quantizer 1/3 seeds"


def test_pooled_result_carries_the_seeds_certification_rate(bodies):
    pooled = matrix.pool_seeds(bodies)
    expect = sum(all(b["desiderata"][d]["verdict"] == "PASS" for d in ("F", "R", "Q[int8]")) for b in bodies)
    assert pooled["cert_rate"]["per_quantizer"]["int8"] == {"k": expect, "n": 2, "rate": expect / 2}
    results = {**_results([]), "quantizers": ["int8"], "pooled": {"ga": pooled}}
    assert f"ga certified (F, R, Q[q] PASS) in int8 {expect}/2 seeds" in matrix.format_matrix_table(results)


def test_baseline_gate_names_a_fallen_certification_rate():
    def pooled(k):
        rate = {"k": k, "n": 3, "rate": k / 3}
        return {"ga": {"n_seeds": 3, "verdict": "FAIL", "verdicts": {}, "statistics": {}, "guard": [],
                       "cert_rate": {"requires": ["F", "R", "Q[q]"], "per_quantizer": {"nf4": rate},
                                     "all_quantizers": rate}}}

    assert matrix.compare_to_baseline(_results([], pooled(2)), _results([], pooled(2)), {"default": 0.02}) == []
    assert matrix.compare_to_baseline(_results([], pooled(3)), _results([], pooled(2)), {"default": 0.02}) == []
    assert matrix.compare_to_baseline(_results([], pooled(1)), _results([], pooled(2)), {"default": 0.02}) == [
        "ga pooled: certification rate at nf4 fell 2/3 -> 1/3 seeds"]


def _results(cells, pooled=None):
    return {"schema": matrix.MATRIX_SCHEMA, "schema_version": 1, "methods": ["ga"], "quantizers": ["nf4"],
            "seeds": [0], "cells": cells, "pooled": pooled or {}}


def _cell(verdicts, stats, seed=0, verdict="INCONCLUSIVE"):
    return {"method": "ga", "seed": seed, "folder": f"runs/ga/seed-{seed}", "verdict": verdict, "verdicts": verdicts,
            "statistics": {k: {"point": v, "low": v - 0.01, "high": v + 0.01} for k, v in stats.items()},
            "guard": []}


def test_baseline_comparison_names_each_regression():
    base = _results([_cell({"F": "PASS", "Q[nf4]": "INCONCLUSIVE"}, {"D_F": 0.30, "G_Q[nf4]": 0.00, "CAD": 0.6})])
    same = copy.deepcopy(base)
    assert matrix.compare_to_baseline(same, base, matrix.parse_tolerance(None)) == []
    within = _results([_cell({"F": "PASS", "Q[nf4]": "PASS"}, {"D_F": 0.31, "G_Q[nf4]": -0.015, "CAD": 0.6})])
    assert matrix.compare_to_baseline(within, base, matrix.parse_tolerance("0.02")) == []  # better verdict is fine
    worse = _results([_cell({"F": "FAIL", "Q[nf4]": "INCONCLUSIVE"}, {"D_F": 0.25, "G_Q[nf4]": 0.0, "CAD": 0.3},
                            verdict="FAIL")])
    problems = matrix.compare_to_baseline(worse, base, matrix.parse_tolerance("0.02,CAD=0.5"))
    assert any("ga seed 0: verdict F worsened PASS -> FAIL" in p for p in problems)
    assert any("overall verdict worsened INCONCLUSIVE -> FAIL" in p for p in problems)
    assert any(p.startswith("ga seed 0: D_F moved +0.3000 -> +0.2500") for p in problems)
    assert not any("CAD" in p for p in problems)  # its own tolerance 0.5 covers the 0.3 move
    assert len(problems) == 3
    # a family tolerance covers every quantizer's G_Q; a missing cell is a regression
    moved = _results([_cell({"F": "PASS", "Q[nf4]": "INCONCLUSIVE"}, {"D_F": 0.30, "G_Q[nf4]": 0.05, "CAD": 0.6})])
    assert matrix.compare_to_baseline(moved, base, matrix.parse_tolerance("G_Q=0.1")) == []
    assert len(matrix.compare_to_baseline(moved, base, matrix.parse_tolerance("G_Q=0.01"))) == 1
    assert matrix.compare_to_baseline(_results([]), base, {"default": 0.02}) == \
        ["ga seed 0: missing from this run (the baseline has it)"]


@pytest.mark.parametrize("text", ["abc", "D_F=x", "-0.1", "nan"])
def test_bad_tolerance_is_an_input_error(text):
    with pytest.raises(InputError):
        matrix.parse_tolerance(text)


def test_bad_baseline_file_is_an_input_error(tmp_path):
    path = tmp_path / "b.json"
    path.write_text('{"schema": "something-else"}')
    with pytest.raises(InputError, match="not a mansu-audit matrix"):
        matrix.read_results(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not a JSON"):
        matrix.read_results(path)


@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory, ref_tokenizer):
    """A tiny base model saved as a checkpoint folder (safetensors), usable by the CLI."""
    folder = tmp_path_factory.mktemp("base") / "tiny"
    model = tiny_llama(len(ref_tokenizer), seed=0, hidden=32, intermediate=64)
    model.save_pretrained(str(folder), safe_serialization=True)
    ref_tokenizer.save_pretrained(str(folder))
    return folder


def test_grid_runs_caches_resumes_and_gates_on_baseline(tiny_base_dir, tmp_path, monkeypatch, capsys):
    bundle_dir = tmp_path / "bundle"
    small_bundle(bundle_dir, n=16)
    cache_dir = tmp_path / "cache"
    out = tmp_path / "grid"
    policy = tmp_path / "policy.yaml"
    policy.write_text("bootstrap_replicates: 200\n")
    argv = ["matrix", "--methods", "ga,npo", "--quantizers", "nf4", "--seeds", "0,1", "--out", str(out),
            "--base", str(tiny_base_dir), "--benchmark", str(bundle_dir), "--policy", str(policy),
            "--set", "ga:steps=2", "--set", "npo:steps=2", "--set", "ga:batch_size=4", "--set", "npo:batch_size=4",
            "--cache-dir", str(cache_dir), "--quiet"]
    assert main(argv + ["--save-baseline", str(tmp_path / "baseline.json")]) == 0
    results = json.loads((out / "matrix.json").read_text())
    assert [(c["method"], c["seed"]) for c in results["cells"]] == [("ga", 0), ("ga", 1), ("npo", 0), ("npo", 1)]
    assert set(results["pooled"]) == {"ga", "npo"}
    for c in results["cells"]:
        folder = out / c["folder"]
        assert {"certificate.json", "results.json", "details.json"} <= {p.name for p in folder.iterdir()}
        assert json.loads((folder / "details.json").read_text())["run"]["seed"] == c["seed"]
    html = (out / "matrix.html").read_text()
    assert "ga pooled (2 seeds)" in html and "npo seed 1" in html
    rate = results["pooled"]["ga"]["cert_rate"]["per_quantizer"]["nf4"]
    assert rate["n"] == 2 and f"PASS in {rate['k']} of 2 seeds" in html
    assert (out / "index.html").read_text().count('class="audit"') == 4
    first = (out / "matrix.json").read_bytes()

    # candidate.json says where the checkpoint is and rebuilds it exactly: verify accepts the rebuilt weights
    import shlex

    folder = out / results["cells"][1]["folder"]
    record = json.loads((folder / "candidate.json").read_text())
    assert (Path(record["checkpoint"]) / "model.safetensors").is_file() and record["unlearn"]["seed"] == 1
    rebuilt = tmp_path / "rebuilt"
    command = shlex.split(record["rebuild"].replace("CANDIDATE_DIR", str(rebuilt)))
    assert command[:2] == ["mansu-audit", "unlearn"] and "batch_size=4" in command and "steps=2" in command
    assert main([*command[1:], "--quiet"]) == 0
    assert main(["verify", str(folder / "certificate.json"), "--candidate", str(rebuilt)]) == 0
    capsys.readouterr()

    # rerun: every checkpoint and evaluation comes from the cache (no training, no evaluation)
    import importlib

    certify_module = importlib.import_module("mansu_audit.certify")

    monkeypatch.setattr(matrix, "unlearn", lambda *a, **k: pytest.fail("retrained despite the cache"))
    monkeypatch.setattr(certify_module, "evaluate_mcq", lambda *a, **k: pytest.fail("re-evaluated despite the cache"))
    capsys.readouterr()
    assert main(argv + ["--baseline", str(tmp_path / "baseline.json")]) == 2  # OUT is not empty
    assert "pass --overwrite" in capsys.readouterr().err
    argv.append("--overwrite")
    assert main(argv + ["--baseline", str(tmp_path / "baseline.json")]) == 0
    assert "no regression" in capsys.readouterr().out
    assert (out / "matrix.json").read_bytes() == first  # deterministic

    # a baseline that was better: exit 1 and name the regression
    baseline = json.loads((tmp_path / "baseline.json").read_text())
    cell = baseline["cells"][0]
    cell["statistics"]["D_F"]["point"] += 0.5
    cell["verdicts"]["R"] = "PASS"
    (tmp_path / "better.json").write_text(json.dumps(baseline))
    results_now = json.loads(first)
    expect_r = results_now["cells"][0]["verdicts"]["R"] != "PASS"
    assert main(argv + ["--baseline", str(tmp_path / "better.json")]) == 1
    printed = capsys.readouterr().out
    assert "REGRESSION ga seed 0: D_F moved" in printed
    assert ("REGRESSION ga seed 0: verdict R worsened PASS" in printed) == expect_r
    assert "regression(s)" in (out / "matrix.html").read_text()


def test_matrix_refuses_bad_input_before_running(tmp_path, capsys):
    assert main(["matrix", "--methods", "nope", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["matrix", "--methods", "ga", "--quantizers", "fp99", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert main(["matrix", "--methods", "ga", "--seeds", "a,b", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert main(["matrix", "--methods", "ga", "--set", "npo:steps=1", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert main(["matrix", "--methods", "ga", "--baseline", str(tmp_path / "missing.json"),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert not (tmp_path / "o").exists()


def test_checkpoint_store_follows_the_cache(tmp_path):
    assert matrix.checkpoint_store(ResultCache(tmp_path / "c"), tmp_path / "o") == tmp_path / "c" / "checkpoints"
    assert matrix.checkpoint_store(NoCache(), tmp_path / "o") == tmp_path / ".o.checkpoints"  # OUT is replaced whole


@pytest.mark.slow
def test_demo_on_the_reference_model(reference, tmp_path, capsys):
    """`mansu-audit demo` end to end (two methods, one quantizer to keep it short): report, certificates, verdicts."""
    from mansu_audit.certificate import verify_certificate

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--methods", "ga,rmu", "--quantizers", "int8",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'index.html'}" in printed and "ga s0" in printed and "rmu s0" in printed
    results = json.loads((out / "matrix.json").read_text())
    assert [c["folder"] for c in results["cells"]] == ["ga", "rmu"]
    for cell in results["cells"]:
        assert verify_certificate(out / cell["folder"] / "certificate.json") == []
    ga = results["cells"][0]
    # The demo runs GA at its shipped tuned settings (lr 1.21e-4, 100 steps): D_F 0.071 [0.045, 0.100] on seed 0,
    # too little to certify (at its defaults it forgets 0.002 on version 3; reports/experiments/two-bases)
    settings = json.loads((out / "ga" / "details.json").read_text())["run"]["settings"]
    assert settings["steps"] == 100 and settings["lr"] == 1.21e-4, settings
    assert 0.03 < ga["statistics"]["D_F"]["point"] < 0.15 and ga["verdicts"]["F"] != "PASS"
    html = (out / "index.html").read_text()
    assert html.index("ga (seed 0)") < html.index("rmu (seed 0)") and html.count('class="audit"') == 2
    # a second demo into the same folder replaces the first (cached: no retraining)
    assert main(["demo", "--out", str(out), "--methods", "ga", "--quantizers", "int8", "--overwrite",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    assert not (out / "rmu").exists() and (out / "index.html").read_text().count('class="audit"') == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    assert main(["demo", "--out", str(tmp_path / "other"), "--quiet"]) == 2  # never writes into a foreign folder


@pytest.mark.parametrize("kwargs", [{"relearn": "sometimes"}, {"consistency": "on-demand"}, {"cad": "maybe"}])
def test_bad_stage_mode_is_refused_before_any_work(tmp_path, kwargs):
    with pytest.raises(InputError, match=next(iter(kwargs))):
        matrix.run_matrix(["ga"], ["int8"], [0], tmp_path / "out", base="no-such-model", **kwargs)
    assert not (tmp_path / "out").exists()


def _always_wrong(body: dict) -> dict:
    """A copy of `body` whose unquantized candidate answers every forget item wrongly, without its own guard."""
    body = copy.deepcopy(body)
    per = body["per_item"]["forget_eval"]
    per["predictions"]["candidate/unquantized"] = [(a + 1) % 4 for a in per["answers"]]
    body["guard"] = []
    return body


def test_pooling_rechecks_below_chance_on_the_pooled_interval(bodies):
    """The seeds' own below-chance findings are not the only ones: the pooled forget accuracy is checked too
    (here the seeds' findings were removed, so only the pooled check can FAIL F)."""
    pooled = matrix.pool_seeds([_always_wrong(b) for b in bodies])
    assert pooled["verdicts"]["F"] == "FAIL"
    assert any(m.startswith("pooled over 2 seeds: below chance (candidate/unquantized)") for m in pooled["guard"])


def test_pooling_refuses_seeds_scored_differently(bodies):
    other = copy.deepcopy(bodies[1])
    other.setdefault("prompting", {})["scoring"] = "choice-text"
    with pytest.raises(InputError, match="scored differently"):
        matrix.pool_seeds([bodies[0], other])


def _hiding(body: dict, cross_candidate_correct: bool) -> dict:
    """A copy of a seed's body whose candidate is at chance on forget_eval letters (base perfect, retain kept), and
    whose second formulation says the candidate still states every fact (or none of them)."""
    body = copy.deepcopy(body)
    for split in ("forget_eval", "retain_eval"):
        per = body["per_item"][split]
        for key in per["predictions"]:
            at_chance = split == "forget_eval" and key.startswith("candidate/")
            per["predictions"][key] = [a if (not at_chance or i % 4 == 0) else (a + 1) % 4
                                       for i, a in enumerate(per["answers"])]
    body["guard"] = []
    x = body["cross_scoring"]
    answers = body["per_item"]["forget_eval"]["answers"]
    x["per_item"] = {"ids": body["per_item"]["forget_eval"]["ids"], "answers": answers,
                     "predictions": {"base/unquantized": list(answers),
                                     "candidate/unquantized": [a if cross_candidate_correct else (a + 1) % 4
                                                               for a in answers]}}
    return body


def test_pooled_f_takes_the_second_formulation_too(bodies):
    assert all(b["cross_scoring"]["scoring"] == "choice-text" for b in bodies)  # small_bundle items carry cloze
    stating = matrix.pool_seeds([_hiding(b, True) for b in bodies])
    assert stating["verdicts"]["F"] == "FAIL"  # at chance in letters, still states the facts: not forgotten
    letters_only = [_hiding(b, True) for b in bodies]
    for b in letters_only:
        b["cross_scoring"] = {"requested": "skip", "scoring": None, "reason": "skipped"}
    assert matrix.pool_seeds(letters_only)["verdicts"]["F"] == "PASS"  # what the letter formulation alone says
    with pytest.raises(InputError, match="differ in F's second formulation"):
        matrix.pool_seeds([_hiding(bodies[0], True), letters_only[1]])


def _with_relearn(body: dict, after_correct: bool, ids=None) -> dict:
    """A copy of `body` with a relearning record: the base knows every held-out item, the candidate none before the
    attack and all (or none) after it."""
    body = copy.deepcopy(body)
    answers = list(body["per_item"]["forget_eval"]["answers"])
    wrong = [(a + 1) % 4 for a in answers]
    body["per_item"]["relearn_heldout"] = {
        "ids": ids or list(body["per_item"]["forget_eval"]["ids"]), "answers": answers,
        "num_choices": [4] * len(answers),
        "predictions": {"base": answers, "candidate": wrong, "candidate/relearned": answers if after_correct else wrong}}
    return body


def test_pooling_gates_on_k_when_every_seed_ran_the_attack(bodies):
    """A pooled verdict is decided with K like a certificate's: here every seed's forgetting comes back (recovered
    fraction 1), so pooled K FAILs; with one seed lacking the attack there is no pooled K."""
    pooled = matrix.pool_seeds([_with_relearn(b, True) for b in bodies])
    assert pooled["verdicts"]["K"] == "FAIL" and pooled["verdict"] == "FAIL"
    assert pooled["statistics"]["K"]["point"] == pytest.approx(1.0) and pooled["statistics"]["K"]["low"] > 0.25
    kept = matrix.pool_seeds([_with_relearn(b, False) for b in bodies])  # nothing came back: the statistic says 0
    assert kept["statistics"]["K"]["point"] == pytest.approx(0.0) and kept["statistics"]["K"]["high"] <= 0.25
    assert kept["verdicts"]["K"] != "PASS"  # still capped: these random tiny models trip the over-unlearning guard
    assert "K" not in matrix.pool_seeds([_with_relearn(bodies[0], True), bodies[1]])["verdicts"]
    other = _with_relearn(bodies[1], True, ids=[f"x{i}" for i in range(len(bodies[1]["per_item"]["forget_eval"]["ids"]))])
    with pytest.raises(InputError, match="different held-out items"):
        matrix.pool_seeds([_with_relearn(bodies[0], True), other])
