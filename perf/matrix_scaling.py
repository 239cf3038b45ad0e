"""Wall time of one regression matrix: in-process vs Ray with 1 and 2 workers (issue 15).

Runs the same matrix (default: ga,npo x seeds 0,1 x int8 on the reference model,
methods shortened with `--steps`) three times, each with an empty cache so every
stage is computed: (a) the in-process executor, (b) a local Ray cluster with one
CPU (one cell at a time), (c) a local Ray cluster with two CPUs (two cells at a
time, one CPU thread each). Prints each wall time, the per-cell times measured
inside the workers, the speed-up of (c) over (a) and the Ray overhead per cell,
((b) - (a)) / cells, and checks that the three matrix.json files are identical.

Every cell runs with one CPU thread in all three (equal threads per cell are what
makes the results byte-identical); numbers depend on the machine's load.

`--items N` cuts every split of synthhazard to its first N items (a copy in the
temporary folder) to keep the run short on a small machine; 0 uses the full benchmark.

    python perf/matrix_scaling.py [--methods ga,npo] [--seeds 0,1] [--quantizers int8] [--steps 4] [--items 0]
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path


def small_benchmark(root: Path, n: int) -> str:
    """synthhazard with the first `n` lines of every split."""
    import json

    from mansu_audit.resources import bundled_data_dir

    src = bundled_data_dir() / "synthhazard"
    root.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((src / "manifest.json").read_text())
    for spec in manifest["splits"].values():
        lines = (src / spec["path"]).read_text().splitlines()[:n]
        (root / spec["path"]).write_text("\n".join(lines) + "\n")
        spec["n"] = len(lines)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return str(root)


def run(executor, args, folder: Path, log: Path) -> float:
    from contextlib import redirect_stderr

    from mansu_audit.cache import ResultCache
    from mansu_audit.matrix import run_matrix
    from mansu_audit.policy import Policy

    methods = args.methods.split(",")
    overrides = {m: [f"steps={args.steps}"] for m in methods}
    start = time.perf_counter()
    with open(log, "w") as fh, redirect_stderr(fh):
        run_matrix(methods, args.quantizers.split(","), [int(s) for s in args.seeds.split(",")], folder / "out",
                   benchmark=args.benchmark, cache=ResultCache(folder / "cache"), overrides=overrides,
                   policy=Policy(bootstrap_replicates=args.bootstrap), executor=executor, progress=True)
    return time.perf_counter() - start


def cell_seconds(log: Path) -> list[float]:
    return [float(s) for s in re.findall(r"seed \d+: done in ([0-9.]+) s", log.read_text())]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="ga,npo")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--quantizers", default="int8")
    p.add_argument("--steps", type=int, default=4, help="unlearning steps per method (default %(default)s)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default %(default)s)")
    p.add_argument("--items", type=int, default=0, help="items per split (default: the full benchmark)")
    args = p.parse_args()

    import ray

    from mansu_audit.executors import InProcessExecutor, RayExecutor

    n_cells = len(args.methods.split(",")) * len(args.seeds.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="matrix-scaling-"))
    args.benchmark = small_benchmark(tmp / "bundle", args.items) if args.items else "synthhazard"
    walls, cells, bodies = {}, {}, {}
    for label, workers in (("in-process", 0), ("ray, 1 worker", 1), ("ray, 2 workers", 2)):
        if workers:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        executor = RayExecutor(cpus_per_cell=1) if workers else InProcessExecutor(threads_per_cell=1)
        folder = tmp / f"w{workers}"
        walls[label] = run(executor, args, folder, folder.with_suffix(".log"))
        cells[label] = cell_seconds(folder.with_suffix(".log"))
        bodies[label] = (folder / "out" / "matrix.json").read_bytes()
        if workers:
            ray.shutdown()
        print(f"{label:<16} wall {walls[label]:7.1f} s   cells (inside the worker): "
              f"{', '.join(f'{s:.1f}' for s in cells[label])} s", flush=True)
    a, b, c = walls["in-process"], walls["ray, 1 worker"], walls["ray, 2 workers"]
    print(f"speed-up, ray 2 workers over in-process: {a / c:.2f}x; ray 2 over ray 1: {b / c:.2f}x")
    print(f"Ray overhead per cell (ray 1 worker - in-process) / {n_cells} cells: {(b - a) / n_cells:+.1f} s")
    same = len(set(bodies.values())) == 1
    print(f"matrix.json identical across the three runs: {same}")
    print(f"(outputs kept in {tmp})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
