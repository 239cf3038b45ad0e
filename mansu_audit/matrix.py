"""Regression matrix: methods × quantizers × seeds, compared against a stored baseline (SPEC §1.2).

For every (method, seed) cell: unlearn the base model (the checkpoint is stored
under the cache folder, keyed by method, resolved settings, seed, base and
benchmark file hashes and the methods' code, so a rerun reuses it), certify it
through every quantizer (`certify`; each evaluation and the CAD are cached by
content, so the base model is evaluated once for the whole grid), and write the
pair's `details.json` (diagnostics, per-layer circuit mass). An interrupted run
resumes from the cache.

Outputs in OUT: one certificate folder per cell (`runs/<method>/seed-<k>/`),
`matrix.json` (every cell's verdicts and headline statistics, and per method the
result pooled over seeds), `matrix.html` (comparison) and `index.html` (the full
audit report of every cell).

Pooling over seeds (our choice): the candidate's per-item correctness is averaged
over seeds (items stay paired with the base model), and D_F, D_R and each G_Q are
bootstrapped over items from those averages with the certificate's policy; S uses
the envelope of the seeds' CAD intervals (mean point, lowest low, highest high),
since per-item CAD values are not stored. A pooled verdict is never PASS when a
seed tripped the over-unlearning guard.

Baseline comparison: every cell and pooled result in the baseline must exist,
no verdict may become more severe (PASS < INCONCLUSIVE/NOT COMPUTED < FAIL), and
the point estimate of no gated statistic (D_F, D_R, every G_Q[q], CAD) may move by
more than its tolerance, either way: a baseline that no longer describes the
method must be re-saved. Each violation is named. The per-variant accuracies
are stored for the report but not gated (with a fixed base they move with D_F/D_R).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from mansu_audit.cache import (NoCache, ResultCache, atomic_write_bytes, files_sha256, read_json_object,
                               sha256_json)
from mansu_audit.data import Bundle, load_bundle
from mansu_audit.errors import InputError
from mansu_audit.resources import methods_dir
from mansu_audit.models import LoadedModel, load_model

MATRIX_SCHEMA = "mansu-audit-matrix"
MATRIX_SCHEMA_VERSION = 1
MATRIX_FILE = "matrix.json"
MATRIX_HTML = "matrix.html"
DEFAULT_TOLERANCE = 0.02
GATED_STATISTICS = ("D_F", "D_R", "G_Q", "CAD")  # families the baseline gate checks (accuracies are reported only)
SEVERITY = {"PASS": 0, "NOT COMPUTED": 1, "INCONCLUSIVE": 1, "FAIL": 2}


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[matrix] {message}", file=sys.stderr, flush=True)


def methods_code_sha256() -> str:
    """Hash of the bundled methods and the code they call (a change retrains)."""
    pkg = Path(__file__).resolve().parent
    paths = [*sorted(methods_dir().glob("*.py")), *sorted((pkg / "circuits").glob("*.py")), pkg / "unlearn.py",
             *sorted((pkg / "quantizers").glob("*.py"))]
    return files_sha256(p for p in paths if p.is_file())


def default_cell_dir(method: str, seed: int) -> str:
    return f"runs/{method}/seed-{seed}"


def checkpoint_store(cache: ResultCache, out: Path) -> Path:
    """Where unlearned checkpoints live: beside the result cache, or in OUT when caching is off."""
    if isinstance(cache, NoCache):
        return out / ".checkpoints"
    return cache.root / "checkpoints"


def unlearned_checkpoint(method: str, seed: int, overrides: Sequence[str], base: LoadedModel, bundle: Bundle,
                         store: Path, *, device: str = "cpu", progress: bool = False) -> tuple[Path, dict]:
    """The unlearned checkpoint of (method, settings, seed) on `base`; trained only if not stored yet."""
    from mansu_audit.methods.base import parse_overrides, settings_dict

    from mansu_audit.cache import state_dict_sha256
    from mansu_audit.unlearn import RECORD_NAME, resolve_method, unlearn

    instance = resolve_method(method)
    settings = parse_overrides(instance.Settings, list(overrides))
    key = sha256_json({"method": instance.name, "settings": settings_dict(settings), "seed": seed,
                       "base": base.file_hashes() or state_dict_sha256(base.model), "benchmark": bundle.file_hashes(),
                       "code": methods_code_sha256()})
    path = store / f"{instance.name}-seed{seed}-{key[:20]}"
    record_path = path / RECORD_NAME
    if record_path.is_file():
        _log(progress, f"{instance.name} seed {seed}: checkpoint cached ({path})")
        return path, json.loads(record_path.read_text(encoding="utf-8"))
    if path.exists():  # an empty or foreign folder from an interrupted run (unlearn writes atomically)
        import shutil

        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _log(progress, f"{instance.name} seed {seed}: unlearning")
    unlearn(instance, base, bundle, seed=seed, overrides=list(overrides), out=path, device=device, progress=progress)
    return path, json.loads(record_path.read_text(encoding="utf-8"))


def run_record(record: Mapping) -> dict:
    """The part of `unlearn.json` the report shows."""
    return {k: record.get(k) for k in ("method", "settings", "seed", "steps", "seconds", "device", "versions")}


def _estimate(d: Mapping | None) -> dict | None:
    return None if d is None else {k: d.get(k) for k in ("point", "low", "high", "n", "B", "seed", "mde")}


def cell_summary(method: str, seed: int, body: Mapping, folder: str) -> dict:
    """Verdicts and headline statistics of one certificate."""
    d = body["desiderata"]
    f, r = body["statistics"]["forget_eval"], body["statistics"]["retain_eval"]
    quantizers = list(body["quantizers"])
    stats = {"D_F": _estimate(d["F"]["estimate"]), "D_R": _estimate(d["R"]["estimate"]),
             **{f"G_Q[{q}]": _estimate(d[f"Q[{q}]"]["estimate"]) for q in quantizers},
             "CAD": _estimate(d["S"]["estimate"]), "KR": _estimate(f.get("KR")),
             **{f"acc_forget[{v}]": _estimate(f.get(f"acc[candidate/{v}]")) for v in ("fp32", *quantizers)},
             **{f"acc_retain[{v}]": _estimate(r.get(f"acc[candidate/{v}]")) for v in ("fp32", *quantizers)}}
    return {"method": method, "seed": seed, "folder": folder, "verdict": body["verdict"],
            "verdicts": {k: v["verdict"] for k, v in sorted(d.items())}, "statistics": stats,
            "guard": list(body["guard"])}


def _correct(body: Mapping, split: str, key: str) -> np.ndarray:
    per = body["per_item"][split]
    return np.asarray(per["predictions"][key]) == np.asarray(per["answers"])


def pool_seeds(bodies: Sequence[Mapping]) -> dict:
    """One method's result pooled over its seeds (see the module docstring)."""
    from mansu_audit.desiderata import (Verdict, overall_verdict, verdict_at_least, verdict_at_most, verdict_ptq_gap,
                                        worst)
    from mansu_audit.policy import Policy
    from mansu_audit.stats import Estimate, paired_bootstrap

    first = bodies[0]
    for b in bodies[1:]:
        for split in ("forget_eval", "retain_eval"):
            if b["per_item"][split]["ids"] != first["per_item"][split]["ids"]:
                raise InputError(f"{split}: the seeds were certified on different items; cannot pool them")
    policy = Policy(**first["policy"]["values"])
    quantizers = list(first["quantizers"])
    boot = dict(B=policy.bootstrap_replicates, seed=policy.seed, level=policy.level, method=policy.ci_method,
                power=policy.mde_power)
    fv = {"b": _correct(first, "forget_eval", "base/fp32"),
          "c": np.mean([_correct(b, "forget_eval", "candidate/fp32") for b in bodies], axis=0)}
    fs = {"D_F": lambda m: m["b"] - m["c"]}
    for q in quantizers:
        fv[f"c_{q}"] = np.mean([_correct(b, "forget_eval", f"candidate/{q}") for b in bodies], axis=0)
        fs[f"G_Q[{q}]"] = lambda m, q=q: m[f"c_{q}"] - m["c"]
    rv = {"b": _correct(first, "retain_eval", "base/fp32"),
          "c": np.mean([_correct(b, "retain_eval", "candidate/fp32") for b in bodies], axis=0)}
    f_est = paired_bootstrap(fv, fs, **boot)
    r_est = paired_bootstrap(rv, {"D_R": lambda m: m["b"] - m["c"]}, **boot)

    verdicts = {"F": Verdict("F", verdict_at_least(f_est["D_F"], policy.min_forget_drop), "D_F", f_est["D_F"],
                             policy.min_forget_drop),
                "R": Verdict("R", verdict_at_most(r_est["D_R"], policy.max_retain_drop), "D_R", r_est["D_R"],
                             policy.max_retain_drop)}
    per_q = []
    for q in quantizers:
        g = f_est[f"G_Q[{q}]"]
        per_q.append(Verdict(f"Q[{q}]", verdict_ptq_gap(g, policy.max_ptq_gap), f"G_Q[{q}]", g, policy.max_ptq_gap))
        verdicts[f"Q[{q}]"] = per_q[-1]
    if per_q:
        w = worst(per_q)
        verdicts["Q"] = Verdict("Q", w.verdict, w.statistic, w.estimate, w.threshold, f"worst: {w.name[2:-1]}")
    else:
        verdicts["Q"] = Verdict("Q", "NOT COMPUTED", "G_Q", None, policy.max_ptq_gap)
    cads = [b["desiderata"]["S"]["estimate"] for b in bodies]
    if any(c is None for c in cads):
        verdicts["S"] = Verdict("S", "NOT COMPUTED", "CAD", None, policy.min_cad, "CAD missing for a seed")
        cad = None
    else:
        cad = Estimate(float(np.mean([c["point"] for c in cads])), min(c["low"] for c in cads),
                       max(c["high"] for c in cads), cads[0]["n"], cads[0]["B"], cads[0]["seed"], policy.level,
                       "seed envelope")
        verdicts["S"] = Verdict("S", verdict_at_least(cad, policy.min_cad), "CAD", cad, policy.min_cad,
                                "envelope of the seeds' CIs")
    guard = [f"seed run {i + 1} of {len(bodies)}: {g}" for i, b in enumerate(bodies) for g in b["guard"]]
    verdicts = _apply_guard(verdicts, [g for b in bodies for g in b["guard"]], quantizers)
    overall = overall_verdict([verdicts[k].verdict for k in ("F", "R", "Q", "S")])
    stats = {"D_F": f_est["D_F"], "D_R": r_est["D_R"], **{f"G_Q[{q}]": f_est[f"G_Q[{q}]"] for q in quantizers}}
    if cad is not None:
        stats["CAD"] = cad
    return {"n_seeds": len(bodies), "verdict": overall, "verdicts": {k: v.verdict for k, v in sorted(verdicts.items())},
            "statistics": {k: _estimate(e.to_dict()) for k, e in stats.items()}, "guard": guard}


def _apply_guard(verdicts: dict, findings: Sequence[str], quantizers: Sequence[str]) -> dict:
    """The certificate's over-unlearning rule on pooled verdicts: a seed's finding on the unquantized
    candidate fails F and caps every PASS; one under quantizer q fails Q[q] (and so Q)."""
    from mansu_audit.desiderata import Verdict, worst

    def cap(v, reason, force=False):
        if force or v.verdict == "PASS":
            return Verdict(v.name, "FAIL", v.statistic, v.estimate, v.threshold, reason)
        return v

    out = dict(verdicts)
    for finding in findings:
        key = finding.split("(", 1)[1].split(")", 1)[0] if "(" in finding else "candidate/fp32"
        reason = f"a seed tripped the over-unlearning guard ({key})"
        variant = key.split("/", 1)[-1]
        if variant == "fp32":
            out["F"] = cap(out["F"], reason, force=True)
            for name in out:
                if name != "F":
                    out[name] = cap(out[name], reason)
        elif f"Q[{variant}]" in out:
            out[f"Q[{variant}]"] = cap(out[f"Q[{variant}]"], reason, force=True)
    if findings and quantizers:
        w = worst([out[f"Q[{q}]"] for q in quantizers])
        out["Q"] = Verdict("Q", w.verdict, w.statistic, w.estimate, w.threshold, f"worst: {w.name[2:-1]}")
    return out


@dataclass
class MatrixRun:
    """What `run_matrix` wrote: the results document and the paths of its files."""

    results: dict
    out: Path
    results_path: Path
    html_path: Path
    report_path: Path


def check_inputs(methods: Sequence[str], quantizers: Sequence[str], seeds: Sequence[int]) -> None:
    """Refuse unknown methods/quantizers and bad seeds before any long stage."""
    from mansu_audit.methods import get_method

    from mansu_audit.certify import check_quantizers

    if not methods:
        raise InputError("no methods given")
    if not seeds:
        raise InputError("no seeds given")
    if len(set(methods)) != len(methods) or len(set(seeds)) != len(seeds):
        raise InputError("methods and seeds must not repeat")
    for m in methods:
        get_method(m)
    if any(s < 0 for s in seeds):
        raise InputError("seeds must be non-negative")
    check_quantizers(quantizers)


def run_matrix(methods: Sequence[str], quantizers: Sequence[str], seeds: Sequence[int], out: str | Path, *,
               base: str | Path | LoadedModel = "reference", benchmark: str | Path | Bundle = "synthhazard",
               policy=None, cache: ResultCache | None = None, overrides: Mapping[str, Sequence[str]] | None = None,
               device: str = "cpu", cell_dir: Callable[[str, int], str] = default_cell_dir,
               progress: bool = True, title: str | None = None) -> MatrixRun:
    """Run the grid into `out` (see the module docstring); returns the results and file paths."""
    from tqdm.auto import tqdm

    from mansu_audit.certify import certify
    from mansu_audit.details import BaseAttributions, compute_details, write_details
    from mansu_audit.report import render_report

    quantizers = tuple(dict.fromkeys(q for q in quantizers if q != "fp32"))
    seeds = tuple(int(s) for s in seeds)
    check_inputs(methods, quantizers, seeds)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("output must be a folder", out)
    overrides = dict(overrides or {})
    cache = cache if cache is not None else ResultCache()
    base_m = base if isinstance(base, LoadedModel) else load_model(base)
    bundle = benchmark if isinstance(benchmark, Bundle) else load_bundle(benchmark)
    store = checkpoint_store(cache, out)
    attributions = BaseAttributions()
    cells, bodies = [], {}
    grid = [(m, s) for m in methods for s in seeds]
    bar = tqdm(grid, desc="matrix cells", unit="cell", disable=not progress, file=sys.stderr)
    for method, seed in bar:
        bar.set_postfix_str(f"{method} seed {seed}")
        ckpt, record = unlearned_checkpoint(method, seed, overrides.get(method, ()), base_m, bundle, store,
                                            device=device, progress=progress)
        candidate = load_model(ckpt)
        folder = out / cell_dir(method, seed)
        _log(progress, f"{method} seed {seed}: certifying through {', '.join(quantizers)}")
        cert = certify(base_m, candidate, bundle, quantizers=quantizers, policy=policy, out=folder, cache=cache,
                       progress=progress)
        _log(progress, f"{method} seed {seed}: diagnostics and per-layer circuit mass")
        details = compute_details(base_m, candidate, bundle, quantizers, cache, base_attributions=attributions,
                                  progress=progress)
        write_details(folder, details, run_record(record))
        cells.append(cell_summary(method, seed, cert.body, str(folder.relative_to(out))))
        bodies.setdefault(method, []).append(cert.body)
        del candidate
    pooled = {m: pool_seeds(b) for m, b in bodies.items()} if len(seeds) > 1 else {}
    first = next(iter(bodies.values()))[0]
    results = {"schema": MATRIX_SCHEMA, "schema_version": MATRIX_SCHEMA_VERSION,
               "methods": list(methods), "quantizers": list(quantizers), "seeds": list(seeds),
               "overrides": {m: list(v) for m, v in sorted(overrides.items())},
               "base": first["models"]["base"], "benchmark": {k: first["benchmark"][k] for k in ("name", "files")},
               "policy": first["policy"], "suite": first["suite"], "title": title, "cells": cells, "pooled": pooled}
    results_path = write_results(out, results)
    html_path = write_matrix_html(out, results, title=title)
    report_path = render_report(out, title=title)
    return MatrixRun(results, out, results_path, html_path, report_path)


def write_results(out: Path, results: Mapping) -> Path:
    from mansu_audit.certify import json_safe

    path = Path(out) / MATRIX_FILE
    text = json.dumps(json_safe(dict(results)), indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def read_results(path: str | Path) -> dict:
    """A matrix results (or baseline) file; `InputError` if it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / MATRIX_FILE
    data = read_json_object(path, "matrix results file")
    if data.get("schema") != MATRIX_SCHEMA:
        raise InputError(f"not a mansu-audit matrix file (schema {data.get('schema')!r})", path)
    if data.get("schema_version") != MATRIX_SCHEMA_VERSION:
        raise InputError(f"unsupported matrix schema version {data.get('schema_version')!r}", path)
    if not isinstance(data.get("cells"), list) or not isinstance(data.get("pooled"), dict):
        raise InputError("matrix file has no 'cells' list or 'pooled' mapping", path)
    return data


def save_baseline(results: Mapping, path: str | Path) -> Path:
    """Write `results` as a baseline file (the same format as matrix.json)."""
    from mansu_audit.certify import json_safe

    path = Path(path)
    text = json.dumps(json_safe(dict(results)), indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def parse_tolerance(text: str | None) -> dict[str, float]:
    """`0.02` or `0.02,CAD=0.1,G_Q=0.01` (a bare number is the default; `G_Q` covers every `G_Q[q]`)."""
    out = {"default": DEFAULT_TOLERANCE}
    if text is None:
        return out
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        name, sep, value = part.rpartition("=")
        name = name.strip() if sep else "default"
        try:
            tol = float(value)
        except ValueError:
            raise InputError(f"tolerance '{part}': expected a number or NAME=number") from None
        if not math.isfinite(tol) or tol < 0:
            raise InputError(f"tolerance '{part}': must be a non-negative number")
        out[name] = tol
    return out


def tolerance_for(name: str, tolerances: Mapping[str, float]) -> float:
    if name in tolerances:
        return tolerances[name]
    family = name.split("[", 1)[0]
    return tolerances.get(family, tolerances["default"])


def _entries(results: Mapping) -> dict[str, dict]:
    out = {f"{c['method']} seed {c['seed']}": c for c in results["cells"]}
    out.update({f"{m} pooled": p for m, p in results["pooled"].items()})
    return out


def compare_to_baseline(results: Mapping, baseline: Mapping, tolerances: Mapping[str, float]) -> list[str]:
    """Every regression of `results` against `baseline`, one line each (empty: none)."""
    current, previous = _entries(results), _entries(baseline)
    problems = []
    for name, old in previous.items():
        new = current.get(name)
        if new is None:
            problems.append(f"{name}: missing from this run (the baseline has it)")
            continue
        for d, old_v in sorted(old["verdicts"].items()):
            new_v = new["verdicts"].get(d)
            if new_v is None:
                problems.append(f"{name}: verdict {d} missing (baseline {old_v})")
            elif SEVERITY.get(new_v, 2) > SEVERITY.get(old_v, 2):
                problems.append(f"{name}: verdict {d} worsened {old_v} -> {new_v}")
        if SEVERITY.get(new["verdict"], 2) > SEVERITY.get(old["verdict"], 2):
            problems.append(f"{name}: overall verdict worsened {old['verdict']} -> {new['verdict']}")
        for stat, old_e in sorted(old["statistics"].items()):
            if stat.split("[", 1)[0] not in GATED_STATISTICS:
                continue
            new_e = new["statistics"].get(stat)
            old_p = None if old_e is None else old_e.get("point")
            new_p = None if new_e is None else new_e.get("point")
            if old_p is None and new_p is None:
                continue
            if old_p is None or new_p is None:
                problems.append(f"{name}: {stat} {'appeared' if old_p is None else 'disappeared'} "
                                f"(baseline {old_p}, now {new_p})")
                continue
            tol = tolerance_for(stat, tolerances)
            if abs(new_p - old_p) > tol + 1e-12:
                problems.append(f"{name}: {stat} moved {old_p:+.4f} -> {new_p:+.4f} "
                                f"(|change| {abs(new_p - old_p):.4f} > tolerance {tol:g})")
    return problems


def _stat_names(results: Mapping) -> list[str]:
    return ["D_F", "D_R", *[f"G_Q[{q}]" for q in results["quantizers"]], "CAD"]


def write_matrix_html(out: Path, results: Mapping, *, regressions: Sequence[str] | None = None,
                      baseline_path: str | None = None, title: str | None = None) -> Path:
    """The comparison page: verdicts and statistics per cell and pooled, one chart per statistic."""
    from mansu_audit.plots import Interval, interval_chart
    from mansu_audit.report import environment, write_html

    stats = _stat_names(results)
    verdict_names = ["F", "R", *[f"Q[{q}]" for q in results["quantizers"]], "S"]
    charts = []
    for stat in stats:
        series = {}
        for s in results["seeds"]:
            by_method = {c["method"]: c for c in results["cells"] if c["seed"] == s}
            series[f"seed {s}"] = [_interval(by_method.get(m, {}).get("statistics", {}).get(stat))
                                   for m in results["methods"]]
        if results["pooled"]:
            series["pooled"] = [_interval(results["pooled"].get(m, {}).get("statistics", {}).get(stat))
                                for m in results["methods"]]
        charts.append(interval_chart(results["methods"], series, title=f"{stat} by method (95% CI)", width=560,
                                     height=230, reference_lines=[(0.0, "0")]))
    rows = []
    for m in results["methods"]:
        for c in results["cells"]:
            if c["method"] == m:
                rows.append({"label": f"{m} seed {c['seed']}", "pooled": False, **c})
        if m in results["pooled"]:
            rows.append({"label": f"{m} pooled ({results['pooled'][m]['n_seeds']} seeds)", "pooled": True,
                         "folder": None, **results["pooled"][m]})
    html = environment().get_template("matrix.html.j2").render(
        title=title or "mansu-audit regression matrix", results=results, rows=rows, stats=stats,
        verdict_names=verdict_names, charts=charts, regressions=regressions, baseline_path=baseline_path,
        Interval=Interval)
    path = Path(out) / MATRIX_HTML
    write_html(path, html)
    return path


def _interval(e: Mapping | None):
    from mansu_audit.plots import Interval

    return Interval(None) if not e else Interval(e.get("point"), e.get("low"), e.get("high"))


def format_matrix_table(results: Mapping) -> str:
    """Plain-text summary: one line per cell and pooled result."""
    qs = results["quantizers"]
    head = f"{'candidate':<22}{'overall':<14}{'F':<6}{'R':<6}" + "".join(f"{'Q[' + q + ']':<10}" for q in qs) + \
        f"{'S':<6}{'D_F':>8}{'D_R':>8}" + "".join(f"{'G_Q[' + q + ']':>11}" for q in qs) + f"{'CAD':>8}"
    lines = [head]

    def short(v):
        return {"PASS": "PASS", "FAIL": "FAIL", "INCONCLUSIVE": "INC", "NOT COMPUTED": "n/c"}.get(v, v or "-")

    def pt(e):
        return "-" if not e or e.get("point") is None else f"{e['point']:+.3f}"

    entries = [(f"{c['method']} s{c['seed']}", c) for c in results["cells"]]
    entries += [(f"{m} pooled", p) for m, p in results["pooled"].items()]
    for label, e in entries:
        v, s = e["verdicts"], e["statistics"]
        lines.append(f"{label:<22}{e['verdict']:<14}{short(v.get('F')):<6}{short(v.get('R')):<6}"
                     + "".join(f"{short(v.get(f'Q[{q}]')):<10}" for q in qs) + f"{short(v.get('S')):<6}"
                     + f"{pt(s.get('D_F')):>8}{pt(s.get('D_R')):>8}" + "".join(f"{pt(s.get(f'G_Q[{q}]')):>11}" for q in qs)
                     + f"{pt(s.get('CAD')):>8}")
    return "\n".join(lines)
