"""Where the matrix's cells run: in this process (default) or as Ray tasks on a cluster.

Contract. An executor has one method, `map(fn, context, items, names, *, progress)`:
it calls `fn(context, item)` once per item and returns the results in the order of
`items`, whatever order they finished in. `fn` and `context` must be picklable
(module-level function, plain objects) for a remote executor; `fn` must be
idempotent, since a cell whose worker died is run again. Errors:

* an `InputError` raised by a call reaches the caller as the same `InputError`
  (message, path, line): a remote call catches it and returns it as a value, so it
  crosses the process boundary intact and is never retried. When several calls fail,
  the one first in `items` order wins, exactly as in a sequential loop: calls after a
  failure are cancelled, calls before it are awaited.
* any other exception of a call is a bug or an infrastructure failure: `CellFailed`
  naming the cell, chained to the cause.
* a worker process that dies mid-call (killed, out of memory, node lost) is retried
  by Ray up to `max_retries` times; after that, `CellFailed`.

Choices.
* `InProcessExecutor` runs the calls one after another here and never imports Ray;
  the context object is shared by every call (so a loaded model is reused).
* `RayExecutor` runs each call as one Ray task with declared resources
  (`num_cpus=cpus_per_cell`, `num_gpus=gpus_per_cell`; default 1 GPU per cell when the
  cluster has GPUs, else 0) and `max_retries`; the context is put once in Ray's object
  store and shared by all tasks. It connects to `address` ("auto": a running
  cluster; "ray://host:10001": a remote one through Ray Client; None: the cluster
  this process is already connected to, or a new local one).
* A cell runs with `threads_per_cell` torch CPU threads (Ray: `int(cpus_per_cell)`;
  in-process: as given, else torch's count). Float reductions depend on the thread
  count, so results are byte-identical across executors and worker counts for equal
  threads per cell (`--cpus-per-cell` sets it for both).
  Every node needs mansu-audit installed (same version) and, for a shared cache,
  the same `--cache-dir` mounted at the same path.
* Progress (stderr, `[matrix]` lines): each finished cell with its elapsed time
  (measured inside the worker) and the counts done / running / queued / failed;
  "running" comes from Ray's state API when the dashboard runs, else cells in
  flight are reported as "in flight". The dashboard URL is printed at connection.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mansu_audit.errors import InputError, first_line, require_extra
from mansu_audit.io import progress_logger

EXECUTORS = ("inprocess", "ray")


class CellFailed(RuntimeError):
    """A cell failed for a reason other than bad input (a bug, or its worker died too often)."""


_log = progress_logger("matrix")


def _status(done: int, running: int | None, queued: int, failed: int) -> str:
    run = f"{running} running, {queued} queued" if running is not None else f"{queued} in flight"
    return f"{done} done, {run}, {failed} failed"


@dataclass
class _Outcome:
    """What a call sends back: its value, or the fields of the InputError it raised; where and how long it ran."""

    value: Any = None
    error: tuple | None = None  # (message, path, line)
    seconds: float = 0.0
    host: str = ""
    pid: int = 0


def _call(fn: Callable, context: Any, item: Any) -> _Outcome:
    start = time.perf_counter()
    where = dict(host=socket.gethostname(), pid=os.getpid())
    try:
        value = fn(context, item)
    except InputError as exc:
        return _Outcome(error=(exc.message, exc.path, exc.line), seconds=time.perf_counter() - start, **where)
    return _Outcome(value=value, seconds=time.perf_counter() - start, **where)


def _raise_input_error(error: tuple) -> None:
    message, path, line = error
    raise InputError(message, path, line)


class InProcessExecutor:
    """Run every call here, in order (the default; no Ray). `threads_per_cell`: None keeps torch's count."""

    name = "inprocess"

    def __init__(self, threads_per_cell: int | None = None):
        self.threads_per_cell = threads_per_cell

    def map(self, fn: Callable, context: Any, items: Sequence, names: Sequence[str], *,
            progress: bool = False) -> list:
        out = []
        for i, (item, name) in enumerate(zip(items, names)):
            outcome = _call(fn, context, item)
            if outcome.error is not None:
                _raise_input_error(outcome.error)
            out.append(outcome.value)
            if len(items) > 1:
                _log(progress, f"{name}: done in {outcome.seconds:.1f} s ({_status(i + 1, 0, len(items) - i - 1, 0)})")
        return out


class RayExecutor:
    """Run each call as a Ray task (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, cpus_per_cell: float = 1, gpus_per_cell: float | None = None,
                 max_retries: int = 3, poll_seconds: float = 5.0, init_kwargs: dict | None = None):
        if cpus_per_cell < 0 or (gpus_per_cell is not None and gpus_per_cell < 0) or max_retries < 0:
            raise InputError("--cpus-per-cell, --gpus-per-cell and --max-retries must be non-negative")
        self.address = address
        self.cpus_per_cell = cpus_per_cell
        self.threads_per_cell = max(1, int(cpus_per_cell))
        self.gpus_per_cell = gpus_per_cell
        self.max_retries = int(max_retries)
        self.poll_seconds = poll_seconds
        self.init_kwargs = dict(init_kwargs or {})
        self.dashboard_url: str | None = None
        self._announced = False
        self._ray = require_extra("ray", "ray", "--executor ray")

    def connect(self, progress: bool = False):
        """Connect to (or start) the cluster once; returns the `ray` module."""
        ray = self._ray
        if not ray.is_initialized():
            kwargs = {"log_to_driver": False, **self.init_kwargs}
            try:
                ctx = ray.init(address=self.address, **kwargs)
            except ConnectionError as exc:
                raise InputError(f"--ray-address {self.address}: cannot connect to a Ray cluster "
                                 f"({first_line(exc)})") from None
            url = getattr(ctx, "dashboard_url", None)
            self.dashboard_url = f"http://{url}" if url and "://" not in url else (url or None)
        if self.gpus_per_cell is None:
            self.gpus_per_cell = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        if self._announced:
            return ray
        self._announced = True
        resources = ray.cluster_resources()
        _log(progress, f"Ray cluster: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; "
                       f"per cell {self.cpus_per_cell:g} CPU, {self.gpus_per_cell:g} GPU, max_retries "
                       f"{self.max_retries}" + (f"; dashboard {self.dashboard_url}" if self.dashboard_url else ""))
        return ray

    def _running(self, refs: dict) -> int | None:
        """Tasks of ours in state RUNNING (Ray's state API), or None when it is not available."""
        try:
            from ray.util.state import list_tasks

            ids = {r.task_id().hex() for r in refs}
            states = list_tasks(filters=[("state", "=", "RUNNING")], limit=10_000, raise_on_missing_output=False,
                                timeout=5)
            return sum(1 for t in states if t.task_id in ids)
        except Exception:
            return None

    def map(self, fn: Callable, context: Any, items: Sequence, names: Sequence[str], *,
            progress: bool = False) -> list:
        ray = self.connect(progress)
        remote = ray.remote(_call)
        options = dict(num_cpus=self.cpus_per_cell, num_gpus=self.gpus_per_cell, max_retries=self.max_retries,
                       retry_exceptions=False)
        ctx_ref = ray.put(context)
        refs = {remote.options(name=f"mansu {name}", **options).remote(fn, ctx_ref, item): i
                for i, (item, name) in enumerate(zip(items, names))}
        results: dict[int, _Outcome] = {}
        failures: dict[int, BaseException | tuple] = {}
        pending = dict(refs)
        last_status = 0.0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_seconds)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # task error (not InputError) or worker died max_retries + 1 times
                    failures[i] = exc
                    _log(progress, f"{names[i]}: FAILED ({first_line(exc)})")
                    continue
                if outcome.error is not None:
                    failures[i] = outcome.error
                    _log(progress, f"{names[i]}: bad input ({outcome.error[0]})")
                else:
                    results[i] = outcome
                    running = self._running(pending) if progress else None
                    _log(progress, f"{names[i]}: done in {outcome.seconds:.1f} s on {outcome.host} "
                                   f"({_status(len(results), running, len(pending) - (running or 0), len(failures))})")
            if failures:  # the first failing call in item order wins: cancel later calls, await earlier ones
                first = min(failures)
                for ref, i in list(pending.items()):
                    if i > first:
                        ray.cancel(ref, force=False)
                        del pending[ref]
                if not any(i < first for i in pending.values()):
                    break
            elif progress and not ready and time.monotonic() - last_status > 60:
                last_status = time.monotonic()
                running = self._running(pending)
                _log(progress, f"cells: {_status(len(results), running, len(pending) - (running or 0), 0)}")
        if failures:
            i = min(failures)
            failure = failures[i]
            if isinstance(failure, tuple):
                _raise_input_error(failure)
            raise CellFailed(f"{names[i]} failed on the Ray cluster: {first_line(failure)}") from failure
        return [results[i].value for i in range(len(items))]


def make_executor(name: str = "inprocess", *, address: str | None = None, cpus_per_cell: float | None = None,
                  gpus_per_cell: float | None = None, max_retries: int = 3):
    """The executor named on the command line (`--executor`); `cpus_per_cell` None: 1 on Ray, torch's count here."""
    if cpus_per_cell is not None and cpus_per_cell < 1:
        raise InputError("--cpus-per-cell must be at least 1")
    if name == "inprocess":
        if address is not None:
            raise InputError("--ray-address needs --executor ray")
        return InProcessExecutor(None if cpus_per_cell is None else int(cpus_per_cell))
    if name == "ray":
        return RayExecutor(address, cpus_per_cell=cpus_per_cell or 1, gpus_per_cell=gpus_per_cell,
                           max_retries=max_retries)
    raise InputError(f"unknown executor '{name}' (use one of: {', '.join(EXECUTORS)})")


__all__ = ["EXECUTORS", "CellFailed", "InProcessExecutor", "RayExecutor", "make_executor"]
