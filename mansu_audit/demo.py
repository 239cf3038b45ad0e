"""The end-to-end demo (`mansu-audit demo`, the README's first command).

On the bundled benchmark (`synthhazard`) and reference model (`reference`):
unlearn with MANSU, Global GA, NPO and RMU (seed 0, each method at the settings
`mansu-audit tune` chose for it on the reference's training splits, shipped with the
model in `tuned/`; `settings="defaults"` runs the documented defaults instead, which
forget next to nothing on the version-3 reference: GA D_F 0.002 at seed 0, measured
with this demo on 2026-12-01), certify each through nf4, gptq and int8, and write
`reports/demo/index.html` (the audit report of every method), `matrix.html`,
`matrix.json` and one certificate folder per method (`reports/demo/<method>/`).
It is `matrix.run_matrix` with one seed and a flat folder layout.

Demo settings: nothing is reduced. The policy is the default (B = 10,000
bootstrap replicates, seed 0); every method runs at its tuned settings (MANSU lr
5.24e-3, 120 steps, circuit_frac 0.005, floor_margin 0.05; GA lr 1.21e-4, 100 steps;
NPO lr 2.8e-4, 60 steps, beta 0.05; RMU lr 8.73e-4, 60 steps, steering_scale 1.0; batches
of 16 sequences); GPTQ calibrates on its default slice of the
benchmark's retain corpus; CAD uses EAP-IG with 5 steps on all 120 forget_attr
items. Measured on 2 CPU cores (one busy with another job) from a fresh clone, with an empty
cache and the tuned settings: 166 s (MANSU 54 s, GA 34 s, NPO 36 s, RMU 32 s of unlearning +
certification + diagnostics, after the base model's evaluations); a rerun (`--overwrite` replaces
the earlier demo folder whole) reuses the cached checkpoints and evaluations. The base model is
evaluated once for all methods (the evaluation cache is keyed by content).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mansu_audit.cache import ResultCache
from mansu_audit.errors import InputError
from mansu_audit.matrix import check_inputs, run_matrix
from mansu_audit.outdir import check_output_dir
from mansu_audit.tune import bundled_settings_files, tuned_overrides

DEMO_METHODS = ("mansu", "ga", "npo", "rmu")
DEMO_QUANTIZERS = ("nf4", "gptq", "int8")
DEMO_SEED = 0
DEMO_OUT = Path("reports") / "demo"
DEMO_BASE = "reference"
DEMO_SETTINGS = ("tuned", "defaults")


@dataclass
class DemoResult:
    run: object  # matrix.MatrixRun
    seconds: float

    @property
    def report_path(self) -> Path:
        return self.run.report_path


def run_demo(out: str | Path = DEMO_OUT, *, methods: Sequence[str] = DEMO_METHODS,
             quantizers: Sequence[str] = DEMO_QUANTIZERS, cache: ResultCache | None = None, device: str = "cpu",
             progress: bool = True, include_forget_text: bool = False, overwrite: bool = False,
             cad: str = "auto", relearn: str | None = "auto", consistency: str | None = "auto",
             cross_scoring: str | None = "auto", settings: str = "tuned") -> DemoResult:
    """Run the demo into `out`; returns the matrix run and the wall time (forget-set item text is left out
    of the report unless `include_forget_text`; `cad="skip"` leaves S not computed in every certificate;
    `relearn`/`consistency`/`cross_scoring` as `certify`'s; `settings` "tuned" (the shipped tune outputs,
    for the methods that have one) or "defaults").
    `out` is written as `run_matrix` writes it: checked first
    (an earlier output there is replaced only with `overwrite`), published whole at the end."""

    out = Path(out)
    if settings not in DEMO_SETTINGS:
        raise InputError(f"demo settings must be one of {', '.join(DEMO_SETTINGS)}, not {settings!r}")
    check_inputs(methods, quantizers, (DEMO_SEED,))
    check_output_dir(out, overwrite)
    files = bundled_settings_files(DEMO_BASE, methods) if settings == "tuned" else []
    overrides = tuned_overrides(files, methods)
    untuned = [m for m in methods if m not in overrides]
    which = ("default settings" if not files else "tuned settings" if not untuned
             else f"tuned settings; {', '.join(untuned)} at defaults")
    start = time.perf_counter()
    run = run_matrix(methods, quantizers, (DEMO_SEED,), out, base=DEMO_BASE, benchmark="synthhazard",
                     cache=cache, device=device, cell_dir=lambda method, seed: method, progress=progress,
                     overrides=overrides,
                     title=f"mansu-audit demo: MANSU vs baselines on synthhazard / reference ({which})",
                     include_forget_text=include_forget_text, overwrite=overwrite, cad=cad,
                     relearn=relearn, consistency=consistency, cross_scoring=cross_scoring)
    return DemoResult(run, time.perf_counter() - start)
