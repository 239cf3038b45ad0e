"""The end-to-end demo (`mansu-audit demo`, the README's first command).

On the bundled benchmark (`synthhazard`) and reference model (`reference`):
unlearn with MANSU, Global GA, NPO and RMU (seed 0, each method's default
settings), certify each through nf4, gptq and int8, and write
`reports/demo/index.html` (the audit report of every method), `matrix.html`,
`matrix.json` and one certificate folder per method (`reports/demo/<method>/`).
It is `matrix.run_matrix` with one seed and a flat folder layout.

Demo settings: nothing is reduced. The policy is the default (B = 10,000
bootstrap replicates, seed 0); every method runs its documented default
(60 optimiser steps of 16 sequences); GPTQ calibrates on its default slice of the
benchmark's retain corpus; CAD uses EAP-IG with 5 steps on all 120 forget_attr
items. Measured on 2 shared CPU cores with an empty cache: 225 s (MANSU 96 s
including the base model's evaluations, GA 36 s, NPO 48 s, RMU 40 s of
unlearning + certification + diagnostics); a rerun reuses the cached
checkpoints and evaluations. The base model is evaluated once for all methods
(the evaluation cache is keyed by content).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mansu_audit.cache import ResultCache
from mansu_audit.errors import InputError
from mansu_audit.matrix import MATRIX_FILE, check_inputs, read_results, run_matrix

DEMO_METHODS = ("mansu", "ga", "npo", "rmu")
DEMO_QUANTIZERS = ("nf4", "gptq", "int8")
DEMO_SEED = 0
DEMO_OUT = Path("reports") / "demo"


@dataclass
class DemoResult:
    run: object  # matrix.MatrixRun
    seconds: float

    @property
    def report_path(self) -> Path:
        return self.run.report_path


def _clear_previous(out: Path) -> None:
    """Remove the certificate folders of a previous demo run in `out` (only what that run listed)."""

    if not out.exists():
        return
    if not out.is_dir():
        raise InputError("demo output must be a folder", out)
    if not any(out.iterdir()):
        return
    if not (out / MATRIX_FILE).is_file():
        raise InputError("demo output folder is not empty and holds no previous demo (matrix.json); "
                         "refusing to write into it", out)
    previous = read_results(out / MATRIX_FILE)
    for cell in previous["cells"]:
        folder = (out / cell["folder"]).resolve()
        if folder.is_dir() and out.resolve() in folder.parents:
            shutil.rmtree(folder)


def run_demo(out: str | Path = DEMO_OUT, *, methods: Sequence[str] = DEMO_METHODS,
             quantizers: Sequence[str] = DEMO_QUANTIZERS, cache: ResultCache | None = None, device: str = "cpu",
             progress: bool = True, include_forget_text: bool = False) -> DemoResult:
    """Run the demo into `out`; returns the matrix run and the wall time (forget-set item text is left out
    of the report unless `include_forget_text`)."""

    out = Path(out)
    check_inputs(methods, quantizers, (DEMO_SEED,))
    _clear_previous(out)
    start = time.perf_counter()
    run = run_matrix(methods, quantizers, (DEMO_SEED,), out, base="reference", benchmark="synthhazard",
                     cache=cache, device=device, cell_dir=lambda method, seed: method, progress=progress,
                     title="mansu-audit demo: MANSU vs baselines on synthhazard / reference",
                     include_forget_text=include_forget_text)
    return DemoResult(run, time.perf_counter() - start)
