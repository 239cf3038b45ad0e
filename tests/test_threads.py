"""The thread policy (`mansu_audit.threads`): cgroup/affinity parsing, precedence, restoring torch, bad values."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import REFERENCE_DIR, tiny_llama
from mansu_audit import threads as th
from mansu_audit.cli import main
from mansu_audit.errors import InputError


@pytest.mark.parametrize("text, cpus", [
    ("max 100000\n", None), ("200000 100000\n", 2.0), ("150000 100000", 1.5), ("50000", 0.5),
    ("", None), (None, None), ("garbage here", None), ("0 100000", None), ("-1 100000", None), ("100 0", None)])
def test_cgroup_v2_cpu_max(text, cpus):
    assert th.parse_cpu_max(text) == cpus


@pytest.mark.parametrize("quota, period, cpus", [
    ("-1\n", "100000\n", None), ("50000\n", "100000\n", 0.5), ("400000", "100000", 4.0), (None, "100000", None),
    ("400000", None, None), ("abc", "100000", None), ("100000", "0", None)])
def test_cgroup_v1_cfs_quota(quota, period, cpus):
    assert th.parse_cfs_quota(quota, period) == cpus


def test_proc_self_cgroup_paths():
    v1 = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n"
    assert th.cgroup_paths(v1) == {"cpu": "/docker/abc", "cpu_dir": "cpu,cpuacct"}
    assert th.cgroup_paths("0::/user.slice/job.scope\n") == {"v2": "/user.slice/job.scope"}
    assert th.cgroup_paths("") == {} and th.cgroup_paths(None) == {} and th.cgroup_paths("not a line") == {}


def test_cgroup_quota_read_from_the_process_cgroup_then_the_root(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "job.scope").mkdir(parents=True)
    (v2 / "job.scope" / "cpu.max").write_text("300000 100000\n")
    assert th.cgroup_cpu_quota(v2, "0::/job.scope\n") == 3.0
    (v2 / "cpu.max").write_text("max 100000\n")
    assert th.cgroup_cpu_quota(v2, "0::/elsewhere\n") is None  # the root has no quota
    v1 = tmp_path / "v1" / "cpu,cpuacct" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert th.cgroup_cpu_quota(tmp_path / "v1", "3:cpu,cpuacct:/docker/abc\n") == 1.5
    root_only = tmp_path / "v1root" / "cpu"  # a cgroup namespace: the process sees its cgroup as the root
    root_only.mkdir(parents=True)
    (root_only / "cpu.cfs_quota_us").write_text("200000\n")
    (root_only / "cpu.cfs_period_us").write_text("100000\n")
    assert th.cgroup_cpu_quota(tmp_path / "v1root", "3:cpu,cpuacct:/\n") == 2.0
    assert th.cgroup_cpu_quota(tmp_path / "missing", "garbage") is None


@pytest.mark.parametrize("affinity, quota, available", [(8, None, 8), (8, 2.5, 2), (8, 0.5, 1), (2, 16.0, 2),
                                                         (0, None, 1)])
def test_available_cpus_is_the_smaller_of_affinity_and_quota_rounded_down(affinity, quota, available):
    assert th.available_cpus(affinity, quota) == available


def test_default_leaves_one_core_free():
    assert [th.default_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]


def test_precedence_option_then_env_then_detected():
    env = {th.ENV_VAR: "5"}
    assert th.choose_threads(3, env, affinity=8, quota=None) == th.ThreadChoice(3, "option", 8, 8, None)
    assert th.choose_threads(None, env, affinity=8, quota=None).threads == 5
    assert th.choose_threads(None, env, affinity=8, quota=None).source == th.ENV_VAR
    detected = th.choose_threads(None, {th.ENV_VAR: " "}, affinity=8, quota=4.0)
    assert detected == th.ThreadChoice(3, "detected", 4, 8, 4.0)
    assert th.ThreadChoice.from_dict(json.loads(json.dumps(detected.to_dict()))) == detected
    live = th.choose_threads(None, {})  # this machine: the affinity mask and whatever quota there is
    assert 1 <= live.threads <= live.available <= live.affinity


@pytest.mark.parametrize("explicit, env, source", [
    ("0", {}, "--threads"), ("two", {}, "--threads"), (-1, {}, "--threads"), (1.5, {}, "--threads"),
    (True, {}, "--threads"), (None, {th.ENV_VAR: "abc"}, th.ENV_VAR), (None, {th.ENV_VAR: "0"}, th.ENV_VAR)])
def test_bad_values_are_one_line_input_errors_naming_their_source(explicit, env, source):
    with pytest.raises(InputError) as info:
        th.choose_threads(explicit, env, affinity=2, quota=None)
    message = str(info.value)
    assert message.startswith(f"{source}: expected a positive whole number") and "\n" not in message


def test_context_manager_sets_and_restores_torch_threads():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with th.torch_threads(other) as choice:
        assert torch.get_num_threads() == other == choice.threads
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), th.torch_threads(other):
        raise RuntimeError("work failed")
    assert torch.get_num_threads() == before  # restored on error too
    with pytest.raises(InputError), th.torch_threads("0"):
        pass
    assert torch.get_num_threads() == before


def test_decorated_function_runs_under_its_threads_argument(monkeypatch):
    seen = []

    @th.with_thread_policy
    def work(*, threads=None):
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    work(threads=1)
    monkeypatch.setenv(th.ENV_VAR, "2")
    work()
    assert seen == [1, 2] and torch.get_num_threads() == before


@pytest.mark.parametrize("threads, env", [("0", None), ("many", None), (None, "-3")])
def test_cli_bad_threads_exit_2_one_line(threads, env, capsys, monkeypatch, tmp_path):
    if env is not None:
        monkeypatch.setenv(th.ENV_VAR, env)
    argv = ["evaluate", "--model", str(tmp_path / "no-such-model"), *(["--threads", threads] if threads else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("--threads" in err if threads else th.ENV_VAR in err)
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_certify_records_the_thread_choice_and_stage_times_in_run_json(tmp_path):
    from transformers import AutoTokenizer

    from mansu_audit.cache import NoCache
    from mansu_audit.certify import RUN_FILE, certify
    from mansu_audit.loading import model_from_objects
    from mansu_audit.policy import Policy
    from conftest import small_bundle

    tok = AutoTokenizer.from_pretrained(str(REFERENCE_DIR))
    base, cand = (model_from_objects(tiny_llama(len(tok), seed=s, hidden=32, intermediate=64), tok, n)
                  for s, n in ((0, "b"), (1, "c")))
    before = torch.get_num_threads()
    cert = certify(base, cand, small_bundle(tmp_path / "bundle", n=8), quantizers=("int8",),
                   policy=Policy(bootstrap_replicates=200), cad=None, cache=NoCache(), out=tmp_path / "out",
                   relearn=None, consistency=None, threads=1)
    assert torch.get_num_threads() == before
    run = json.loads((tmp_path / "out" / RUN_FILE).read_text())
    assert run["threads"]["threads"] == 1 and run["threads"]["source"] == "option"
    assert "threads" not in json.dumps(cert.body)  # outside the hashed body
    assert {"load", "evaluate", "assess", "total"} <= set(run["wall_seconds"])
    assert set(run["evaluate_seconds"]) == {f"{stage}:{role}/{variant}" for role in ("base", "candidate")
                                            for stage, variant in (("evaluate", "unquantized"), ("evaluate", "int8"),
                                                                   ("quantize", "int8"))}
    assert all(v >= 0 for v in run["evaluate_seconds"].values())
