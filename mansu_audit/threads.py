"""How many CPU threads torch uses while a command evaluates a model (the thread policy).

Contract
--------
`choose_threads(explicit)` returns a `ThreadChoice`: the intra-op thread count and
where it came from. Precedence: an explicit value (`--threads N`, the API's
`threads=`) beats the `MANSU_THREADS` environment variable, which beats the
detected default. `torch_threads(explicit)` is a context manager that sets
`torch.set_num_threads` to the choice for the block and restores torch's previous
count after it (also on error), so the library changes no process-wide state;
`with_thread_policy` applies it around a function taking a `threads=` keyword
(`certify`, `api.evaluate`). A value that is not a positive integer (option,
argument or environment) is an `InputError` naming its source, raised before any
work starts.

Cores actually available (`available_cpus`)
-------------------------------------------
The smaller of
* the CPUs this process may run on: `os.sched_getaffinity(0)` (taskset, cpuset,
  `docker --cpuset-cpus`); `os.cpu_count()` where the call does not exist;
* the cgroup CPU quota, rounded down, at least 1: cgroup v2 `cpu.max`
  ("QUOTA PERIOD", "max" = none), else cgroup v1 `cpu.cfs_quota_us` /
  `cpu.cfs_period_us` (-1 = none) — `docker --cpus`, Kubernetes CPU limits, CI
  runners. Rounded *down*: threads beyond the quota are throttled, and a
  throttled thread stalls every OpenMP barrier of the others. The files are
  looked up for this process's own cgroup (`/proc/self/cgroup`), then at the
  cgroup root; anything missing or unparsable means "no quota" (the parsers are
  pure functions of the file texts, `parse_cpu_max` / `parse_cfs_quota`).

The default (`default_threads`): available cores minus one, at least 1
----------------------------------------------------------------------
Measured with `perf/eval_throughput.py --threads-only` on the bundled reference
model (200 forget_eval items, batch 32, best of 3-5 runs; predictions identical at
1 and 2 threads in every run) on a 2-core VM without
GPU shared with other agents (load average 0.9-7.9 during the runs); items/s with
1 and 2 torch threads, 2-thread rate as a ratio of the 1-thread rate in the same
process and condition:

    condition                        run 1 (load ~1-4)   run 2 (load ~5)     run 3 (load ~4.5-8)
    no neighbour of ours             225 vs 43 (0.19x)   178 vs 458 (2.57x)  271 vs 283 (1.04x)
    busy neighbour (1 core spinning) 153 vs 31 (0.20x)   285 vs 151 (0.53x)  115 vs 23 (0.20x)

With a busy neighbour, every run lost 2-5x with 2 threads (OpenMP threads spin at
each barrier waiting for the thread the scheduler took off its core; the issue saw
14x); without one the gain was 1.0-2.6x, when the other agents happened to leave
both cores free. With `OMP_WAIT_POLICY=PASSIVE` (set before torch loads; not
something a library may set for its caller) 2 threads with a busy neighbour were
no slower than 1 in one run, so the loss is the spinning.

Using every core gains up to 2.6x when the other processes happen to leave the
cores free and loses 2-5x (the issue: 14x) as soon as one other process wants a
core, and on shared servers and CI runners one usually does. Leaving one core free
keeps one busy neighbour from preempting our threads, and costs at most 1/N of the
idle-machine throughput on N cores; so the default is `max(1, available - 1)` (1
on one or two cores). Only the 2-core case was measured here (no larger machine
was at hand); `--threads` / `MANSU_THREADS` override the default, e.g. all cores
on a dedicated machine.

Thread count and results: the count is recorded (certify's `run.json`, outside
the hashed body); CPU matmuls may reduce in a different order with another
count, so bit-identical reruns need the same count, which the recorded choice
gives.
"""
from __future__ import annotations

import functools
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from mansu_audit.errors import InputError

ENV_VAR = "MANSU_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count used, its source (`option`, `MANSU_THREADS` or `detected`) and what was detected."""

    threads: int
    source: str
    available: int  # cores available to this process (affinity and quota)
    affinity: int  # CPUs in the affinity mask
    quota: float | None  # cgroup CPU quota in CPUs, None = no quota

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ThreadChoice":
        return cls(int(d["threads"]), str(d["source"]), int(d["available"]), int(d["affinity"]),
                   None if d.get("quota") is None else float(d["quota"]))


def parse_cpu_max(text: str | None) -> float | None:
    """cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD") -> CPUs, or None (no quota / unparsable)."""
    if not text:
        return None
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    return _ratio(parts[0], parts[1] if len(parts) > 1 else "100000")


def parse_cfs_quota(quota_text: str | None, period_text: str | None) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` -> CPUs, or None (-1 = no quota / unparsable)."""
    if not quota_text or not period_text:
        return None
    return _ratio(quota_text.strip(), period_text.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_paths(proc_cgroup_text: str | None) -> dict[str, str]:
    """`/proc/self/cgroup` text -> {"v2": path, "cpu": path} (v1 controller lists containing `cpu`)."""
    out: dict[str, str] = {}
    for line in (proc_cgroup_text or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            out["v2"] = path
        elif "cpu" in controllers.split(","):
            out["cpu"] = path
            out["cpu_dir"] = controllers
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup_text: str | None = None) -> float | None:
    """The CPU quota (in CPUs) of this process's cgroup, v2 then v1; None when there is none or it can't be read."""
    if proc_cgroup_text is None:
        proc_cgroup_text = _read(Path("/proc/self/cgroup"))
    paths = cgroup_paths(proc_cgroup_text)
    v2_dirs = [root / paths["v2"].lstrip("/")] if "v2" in paths else []
    for folder in (*v2_dirs, root):
        quota = parse_cpu_max(_read(folder / "cpu.max"))
        if quota is not None:
            return quota
    v1_names = [paths["cpu_dir"], "cpu", "cpu,cpuacct"] if "cpu_dir" in paths else ["cpu", "cpu,cpuacct"]
    for name in dict.fromkeys(v1_names):
        base = root / name
        for folder in ([base / paths["cpu"].lstrip("/")] if "cpu" in paths else []) + [base]:
            quota = parse_cfs_quota(_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us"))
            if quota is not None:
                return quota
    return None


def affinity_cpus() -> int:
    """CPUs this process may run on (`os.sched_getaffinity`; `os.cpu_count()` where it does not exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_cpus(affinity: int, quota: float | None) -> int:
    """min(affinity, floor(quota)), at least 1 (see the module doc)."""
    n = max(1, int(affinity))
    if quota is not None and quota > 0:
        n = min(n, max(1, math.floor(quota)))
    return n


def default_threads(available: int) -> int:
    """The detected default: one core left free (module doc: measured), at least 1."""
    return max(1, available - 1)


def parse_threads(value, source: str) -> int:
    """A positive thread count from an int or text, or a one-line `InputError` naming `source`."""
    text = str(value).strip()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise InputError(f"{source}: expected a positive whole number of threads, not {value!r}")
    return n


def choose_threads(explicit: int | str | None = None, env: Mapping[str, str] | None = None, *,
                   affinity: int | None = None, quota: float | None | str = "detect") -> ThreadChoice:
    """The thread policy (module doc). `env`, `affinity` and `quota` default to this process's."""
    env = os.environ if env is None else env
    affinity = affinity_cpus() if affinity is None else affinity
    quota = cgroup_cpu_quota() if quota == "detect" else quota
    available = available_cpus(affinity, quota)
    if explicit is not None:
        n, source = parse_threads(explicit, "--threads"), "option"
    elif env.get(ENV_VAR, "").strip():
        n, source = parse_threads(env[ENV_VAR], ENV_VAR), ENV_VAR
    else:
        n, source = default_threads(available), "detected"
    return ThreadChoice(n, source, available, affinity, quota)


@contextmanager
def torch_threads(explicit: int | str | None = None, env: Mapping[str, str] | None = None) -> Iterator[ThreadChoice]:
    """Set torch's intra-op threads to `choose_threads(explicit, env)` for the block; restore the old count after."""
    import torch

    choice = choose_threads(explicit, env)  # validates before anything changes
    previous = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    try:
        yield choice
    finally:
        torch.set_num_threads(previous)


def with_thread_policy(func: Callable) -> Callable:
    """Run `func` under `torch_threads(threads)`, `threads` being its keyword argument of that name."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with torch_threads(kwargs.get("threads")):
            return func(*args, **kwargs)

    return wrapper
