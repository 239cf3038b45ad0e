"""Executors and the cross-process lock (issue 15).

Fast: the file lock (exclusion between processes, a dead or stale holder is broken,
a live one is waited for), the missing-Ray error, and the in-process executor's
error contract. Slow (need `ray`, installed by scripts/ci_slow_setup.sh; skipped
without it): a local Ray cluster (2 CPUs) runs a 2-method x 2-seed matrix on the
reference model (synthhazard cut to 12 items per split, int8, 2 unlearning steps) with results byte-identical to the
in-process executor; a worker killed mid-cell (one cell of that matrix) is retried
and the cell's result is unchanged. On a tiny random base model (failure paths,
not numbers): a bad input fails with the in-process error line; two drivers sharing one cache
folder compute each entry once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mansu_audit.cache import FileLock, ResultCache
from mansu_audit.cli import main
from mansu_audit.errors import InputError
from mansu_audit.executors import InProcessExecutor, make_executor

REPO = Path(__file__).resolve().parents[1]
METHODS, SEEDS, QUANTIZERS = ("ga", "npo"), (0, 1), ("int8",)
OVERRIDES = {m: ["steps=2"] for m in METHODS}


# ---- the lock ----------------------------------------------------------------------------------------------------

def test_file_lock_excludes_other_processes(tmp_path):
    """Two processes doing read-modify-write under the lock lose no increment."""
    counter, lock = tmp_path / "n", tmp_path / "locks" / "x.lock"
    counter.write_text("0")
    code = textwrap.dedent(f"""
        from pathlib import Path
        import time
        from mansu_audit.cache import FileLock
        for _ in range(15):
            with FileLock({str(lock)!r}, poll=0.01):
                n = int(Path({str(counter)!r}).read_text()); time.sleep(0.002)
                Path({str(counter)!r}).write_text(str(n + 1))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert counter.read_text() == "30" and not lock.exists()


def test_file_lock_breaks_a_dead_or_stale_holder_and_waits_for_a_live_one(tmp_path):
    import socket

    path = tmp_path / "a.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "t1"}))
    start = time.monotonic()
    with FileLock(path, timeout=5):  # holder on this host is gone: broken at once
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert time.monotonic() - start < 5 and not path.exists()

    path.write_text(json.dumps({"host": "another-machine", "pid": 1, "token": "t2"}))
    with pytest.raises(TimeoutError):  # a fresh lock of another machine: waited for
        FileLock(path, timeout=0.5, stale_after=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))  # no heartbeat for 2 minutes: stale
    with FileLock(path, timeout=5, stale_after=60):
        assert json.loads(path.read_text())["token"] != "t2"


def test_file_lock_heartbeat_keeps_a_long_holder_fresh(tmp_path):
    path = tmp_path / "h.lock"
    with FileLock(path, heartbeat=0.1):
        old = time.time() - 100
        os.utime(path, (old, old))
        time.sleep(0.5)
        assert time.time() - path.stat().st_mtime < 5  # refreshed by the holder's heartbeat
        with pytest.raises(TimeoutError):
            FileLock(path, timeout=0.3, stale_after=50).acquire()


# ---- executors without Ray -----------------------------------------------------------------------------------------

def _double_or_fail(ctx, x):
    if x < 0:
        raise InputError(f"bad item {x}", "items.txt", -x)
    return ctx * x


def test_inprocess_executor_keeps_order_and_raises_the_first_input_error():
    ex = InProcessExecutor()
    assert ex.map(_double_or_fail, 2, [3, 1, 2], ["a", "b", "c"]) == [6, 2, 4]
    with pytest.raises(InputError) as info:
        ex.map(_double_or_fail, 2, [1, -2, -3], ["a", "b", "c"])
    assert str(info.value) == "items.txt:2: bad item -2"


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(InputError, match=r"--executor ray needs the optional dependency 'ray': "
                                         r"pip install 'mansu-audit\[ray\]'"):
        make_executor("ray")
    assert main(["matrix", "--methods", "ga", "--quantizers", "int8", "--executor", "ray",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'mansu-audit[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ---- on a local Ray cluster (slow) ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'mansu-audit[ray]'; "
                                            "CI installs it in scripts/ci_slow_setup.sh)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _policy():
    from mansu_audit.policy import Policy

    return Policy(bootstrap_replicates=200)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """synthhazard cut to 12 items per split (CAD and diagnostics dominate a cell; they scale with the items)."""
    from conftest import small_bundle

    root = tmp_path_factory.mktemp("bundle") / "small"
    small_bundle(root, n=12)
    return root


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, ref_tokenizer):
    """A tiny random model saved as a checkpoint folder: the failure-path tests need cells, not a real model."""
    from conftest import tiny_llama

    folder = tmp_path_factory.mktemp("base") / "tiny"
    tiny_llama(len(ref_tokenizer), seed=0, hidden=32, intermediate=64).save_pretrained(str(folder),
                                                                                      safe_serialization=True)
    ref_tokenizer.save_pretrained(str(folder))
    return folder


def _run(folder: Path, executor, bundle: Path, methods=METHODS, seeds=SEEDS, cache: Path | None = None,
         overrides=None, base="reference"):
    from mansu_audit.matrix import run_matrix

    return run_matrix(methods, QUANTIZERS, seeds, folder / "out", base=str(base), benchmark=str(bundle),
                      cache=ResultCache(cache or folder / "cache"), overrides=overrides or OVERRIDES,
                      policy=_policy(), executor=executor, progress=False)


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory, small):
    """The 2 x 2 matrix on the reference model, in-process."""
    folder = tmp_path_factory.mktemp("inprocess")
    return _run(folder, InProcessExecutor(threads_per_cell=1), small)  # 1 thread per cell, as on Ray below


@pytest.fixture(scope="module")
def inprocess_tiny(tmp_path_factory, small, tiny_base):
    """One cell (ga, seed 0) on the tiny base, in-process."""
    folder = tmp_path_factory.mktemp("inprocess_tiny")
    return _run(folder, InProcessExecutor(threads_per_cell=1), small, methods=("ga",), seeds=(0,), base=tiny_base)


def _cell_files(run, cell) -> dict:
    folder = run.out / cell["folder"]
    cert = json.loads((folder / "certificate.json").read_text())
    details = json.loads((folder / "details.json").read_text())
    details["run"].pop("seconds")  # the unlearning wall time
    # the candidate's name is its checkpoint's path, inside each run's own cache folder
    cert["body"]["models"]["candidate"].pop("name")
    cert["body"]["models"]["candidate"].pop("path", None)
    details["diagnosis"].pop("candidate")
    return {"body": cert["body"], "results.json": (folder / "results.json").read_bytes(), "details": details}


@pytest.mark.slow
def test_ray_matrix_is_identical_to_inprocess(ray_cluster, inprocess, small, tmp_path):
    from mansu_audit.executors import RayExecutor

    ray_run = _run(tmp_path, RayExecutor(cpus_per_cell=1), small)  # its own empty cache: everything recomputed on Ray
    assert (ray_run.out / "matrix.json").read_bytes() == (inprocess.out / "matrix.json").read_bytes()
    assert len(ray_run.results["cells"]) == 4 and set(ray_run.results["pooled"]) == set(METHODS)
    for mine, theirs in zip(ray_run.results["cells"], inprocess.results["cells"]):
        assert _cell_files(ray_run, mine) == _cell_files(inprocess, theirs)
    assert (ray_run.out / "index.html").read_text().count('class="audit"') == 4
    assert (ray_run.out / "matrix.html").is_file()


def _worker_running(label: str):
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::") and label in cmd:
            return p
    return None


@pytest.mark.slow
def test_a_worker_killed_mid_cell_is_retried(ray_cluster, inprocess, small, tmp_path):
    from mansu_audit.executors import RayExecutor

    outcome = {}

    def driver():
        try:
            outcome["run"] = _run(tmp_path, RayExecutor(cpus_per_cell=1, max_retries=2), small, methods=("ga",),
                                  seeds=(0,))
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=driver)
    thread.start()
    victim, deadline = None, time.monotonic() + 600
    while victim is None and thread.is_alive() and time.monotonic() < deadline:
        victim = _worker_running("mansu ga seed 0")
        time.sleep(0.2)
    assert victim is not None, "the cell's worker process was never seen"
    assert "mansu ga seed 0" in " ".join(victim.cmdline())  # still inside the cell
    victim.kill()
    victim.wait(timeout=30)
    thread.join(timeout=1200)
    assert "error" not in outcome, outcome.get("error")
    run = outcome["run"]
    cell = run.results["cells"][0]
    assert (cell["method"], cell["seed"]) == ("ga", 0)
    assert _cell_files(run, cell) == _cell_files(inprocess, inprocess.results["cells"][0])


@pytest.mark.slow
def test_bad_input_fails_with_the_inprocess_line(ray_cluster, inprocess_tiny, small, tiny_base, tmp_path):
    from mansu_audit.executors import RayExecutor

    bad = {"ga": ["steps=2"], "npo": ["steps=lots"]}
    errors = []
    for executor in (InProcessExecutor(), RayExecutor(cpus_per_cell=1, max_retries=0)):
        with pytest.raises(InputError) as info:  # the base stage is cached (shared cache of the in-process run)
            _run(tmp_path / executor.name, executor, small, cache=inprocess_tiny.out.parent / "cache",
                 overrides=bad, base=tiny_base)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "steps=lots" in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "ray" / "out" / "matrix.json").exists()


@pytest.mark.slow
def test_two_drivers_share_one_cache_folder(small, tiny_base, tmp_path):
    """Two `matrix` processes on one --cache-dir: each entry computed once, identical results."""
    cache = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    policy = tmp_path / "policy.yaml"
    policy.write_text("bootstrap_replicates: 200\n")

    def start(name):
        return subprocess.Popen([sys.executable, "-m", "mansu_audit", "matrix", "--methods", "ga", "--seeds", "0",
                                 "--quantizers", "int8", "--set", "ga:steps=2", "--policy", str(policy),
                                 "--base", str(tiny_base),
                                 "--benchmark", str(small), "--cache-dir", str(cache), "--out", str(tmp_path / name)],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [start("a"), start("b")]
    outs = [p.communicate(timeout=1500) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    logs = "".join(o[1] for o in outs)
    assert logs.count("ga seed 0: unlearning") == 1  # the checkpoint was trained once
    evaluations = [line for line in logs.splitlines() if "evaluating base/" in line or "evaluating candidate/" in line]
    assert any("base/" in e for e in evaluations) and any("candidate/" in e for e in evaluations)
    assert len(evaluations) == len(set(evaluations))  # no (model, variant, split) evaluated by both drivers
    assert (tmp_path / "a" / "matrix.json").read_bytes() == (tmp_path / "b" / "matrix.json").read_bytes()
    assert not list((cache / "locks").glob("*.lock")) and not list((cache / "checkpoints").glob(".*.lock"))
