"""The two-bases experiment (issues 6, 16, 18): the bundled methods, and MANSU's ablations, on
`reference` and `reference-nf4grid`, certified through nf4, gptq, int8 and gguf-q4_0 over 3 seeds.

Each (base, method or ablation) is one `run_matrix` call (seeds 0, 1, 2; default policy:
B = 10,000). With `--settings FILE` (one `mansu-audit tune` output per method) a method and
its ablations run at the tuned settings, otherwise at its documented defaults. The tuning
(issue 18 §5) is `mansu-audit tune --method M --budget 12 --seed 0 --base reference` for
every method: the same budget for all, scored on forget_train/retain_train only (the
version-3 `reference` knows those facts, so tuning can separate settings; version 1 could
not). The same tuned settings are used on both bases. Calls with one --work share one result
cache, so the base models are evaluated, attributed and attacked once. Every certificate
computes K (the relearning attack on `forget_attack`, `relearn="auto"`) and S (CAD,
`cad="auto"`); the permutation-consistency check is skipped (`consistency="skip"`: the
bases are checked in tests/test_reference_v3.py and it costs about a minute per cell).
Torch runs on one thread per cell.

The script collects, per seed: forget and retain accuracy unquantized and under every
quantizer, D_F, D_R, every PTQ gap G_Q, CAD, K's recovered fraction (95% CIs), the
verdicts and the unlearning wall time; and per (base, method) the pooled result over the
seeds and the certification rate ("PASS in k of 3 seeds" of F, R and Q[q], per quantizer
and for all quantizers) from `matrix.json`. It writes

    OUT/results.json   every number above (rewritten after each matrix call)
    OUT/README.md      the tables

Order of work (so a run cut short keeps the most important part): the methods in
priority order, each on every base, then MANSU's ablations on the first base
(`floor=none`, `circuit=random`, `projection=none`, `fisher_quantile=1.0`, and
`circuit_frac=0.1`: a circuit 20 times the tuned one; `forget_source=both`: ascent on the
forget corpus's sentences too, not only on forget_attr's answer letters), then
`LATE_METHODS` (lora-npo, simnpo). `--resume` skips the (base, label) pairs already in
OUT/results.json, so methods can also be added one call at a time.

Usage (2026-12-01, version 3): the bases ran side by side, one process per base on the
two cores, methods one call at a time as their tune files appeared (about 75 min of wall
time per process under a loaded machine), then merged and rendered:

    for m in ga graddiff npo rmu mansu lora-ga saf lora-npo simnpo; do
      mansu-audit tune --method $m --budget 12 --seed 0 --base reference --threads 1 \
          --out-file reports/experiments/two-bases/tuned/$m.json; done
    python scripts/experiment_two_bases.py --out A --work WA --bases reference --methods M \
        --settings reports/experiments/two-bases/tuned/M.json --ablations none --resume     # per method
    python scripts/experiment_two_bases.py --out A --work WA --bases reference --methods mansu \
        --settings reports/experiments/two-bases/tuned/mansu.json --resume             # the ablations
    python scripts/experiment_two_bases.py --out B --work WB --bases reference-nf4grid ...  # likewise
    cp A/results.json reports/experiments/two-bases/results.json
    python scripts/experiment_two_bases.py --out reports/experiments/two-bases --render-only \
        --merge B/results.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from mansu_audit.cache import ResultCache
from mansu_audit.certificate import read_certificate
from mansu_audit.matrix import pool_seeds, run_matrix
from mansu_audit.tune import tuned_overrides

BASES = ("reference", "reference-nf4grid")
METHODS = ("ga", "graddiff", "npo", "rmu", "mansu", "lora-ga", "saf", "lora-npo", "simnpo")  # priority order
LATE_METHODS = ("lora-npo", "simnpo")  # run after the ablations (if time)
ABLATIONS = {"mansu floor=none": ("mansu", ["floor=none"]), "mansu circuit=random": ("mansu", ["circuit=random"]),
             "mansu projection=none": ("mansu", ["projection=none"]),
             "mansu fisher_quantile=1.0": ("mansu", ["fisher_quantile=1.0"]),
             "mansu circuit_frac=0.1": ("mansu", ["circuit_frac=0.1"]),
             "mansu forget_source=both": ("mansu", ["forget_source=both"])}
ABLATION_BASE = 0  # MANSU's ablations run on the first of the bases
QUANTIZERS = ("nf4", "gptq", "int8", "gguf-q4_0")
SEEDS = (0, 1, 2)
THREADS = 1


def _estimate(e: dict | None) -> dict | None:
    return None if e is None else {k: e.get(k) for k in ("point", "low", "high", "n", "mde")}


def collect_seed(cell: dict, folder: Path, body: dict) -> dict:
    """One seed's numbers: the matrix cell, K from its certificate `body`, the unlearning time from details.json."""
    k = body["desiderata"].get("K")
    details = json.loads((folder / "details.json").read_text(encoding="utf-8"))
    fstats = body["statistics"]["forget_eval"]
    relearn = body["statistics"].get("relearn_heldout") or {}
    cross = body.get("cross_scoring") or {}
    cross_stats = cross.get("statistics") or {}
    return {"seed": cell["seed"], "verdict": cell["verdict"], "verdicts": cell["verdicts"],
            "statistics": cell["statistics"], "guard": cell["guard"],
            "recovery_fraction": {q: _estimate(fstats.get(f"recovery_fraction[{q}]")) for q in body["quantizers"]},
            "relearn_heldout": {k: _estimate(v) for k, v in relearn.items() if isinstance(v, dict)},
            "K": None if k is None else {"verdict": k["verdict"], "statistic": k.get("statistic"),
                                         "estimate": _estimate(k.get("estimate")), "threshold": k.get("threshold")},
            "cross": {"scoring": cross.get("scoring"), "verdict_F": cross.get("verdict_F"),
                      "D_F": _estimate(cross_stats.get("D_F")),
                      "acc_candidate": _estimate(cross_stats.get("acc[candidate/unquantized]"))},
            "unlearn_seconds": details["run"]["seconds"], "settings": details["run"]["settings"]}


def job_folder(work: Path, base: str, label: str) -> Path:
    return work / base / label.replace(" ", "_").replace("=", "-")


def collect_row(work: Path, base: str, label: str, method: str, seconds: float) -> dict:
    """One (base, label) row from its matrix folder: every seed's numbers and the pooled result."""
    folder = job_folder(work, base, label)
    matrix = json.loads((folder / "matrix.json").read_text(encoding="utf-8"))
    bodies = [read_certificate(folder / c["folder"] / "certificate.json").body for c in matrix["cells"]]
    seeds = [collect_seed(c, folder / c["folder"], b) for c, b in zip(matrix["cells"], bodies)]
    # pooled again from the seeds' certificates with this suite's `pool_seeds` (from 0.4.0 it pools K too)
    pooled = pool_seeds(bodies)
    return {"base": base, "method": label, "seeds": seeds,
            "pooled": {k: pooled[k] for k in ("n_seeds", "verdict", "verdicts", "statistics", "cert_rate", "guard")},
            "seconds": seconds}


def jobs(bases, methods, ablations, tuned: dict[str, list[str]]):
    """(base, label, method, settings) in the order of work: methods, ablations, then LATE_METHODS.
    A method's settings are its tuned ones (`tuned`, from `tune` files), then the ablation's override."""
    out = [(base, m, m, tuned.get(m, [])) for m in methods if m not in LATE_METHODS for base in bases]
    out += [(bases[ABLATION_BASE], label, m, tuned.get(m, []) + sets) for label, (m, sets) in ablations.items()]
    out += [(base, m, m, tuned.get(m, [])) for m in methods if m in LATE_METHODS for base in bases]
    return out


def run(out: Path, work: Path, bases, methods, ablations, resume: bool, settings_files=()) -> dict:
    cache = ResultCache(work / "cache")
    path = out / "results.json"
    tuned = tuned_overrides(settings_files, methods)
    results = {"bases": list(bases), "quantizers": list(QUANTIZERS), "seeds": list(SEEDS), "threads": THREADS,
               "consistency": "skip", "cad": "auto", "relearn": "auto", "rows": [], "failures": [],
               "wall_seconds": 0.0, "tuned": {m: tuned[m] for m in sorted(tuned)},
               "settings_files": [str(f) for f in settings_files]}
    if resume and path.exists():
        results = json.loads(path.read_text(encoding="utf-8"))
        results["failures"] = []
        results.setdefault("tuned", {}).update({m: tuned[m] for m in sorted(tuned)})
        results["settings_files"] = sorted(set(results.get("settings_files", [])) | {str(f) for f in settings_files})
    done = {(r["base"], r["method"]) for r in results["rows"]}
    for base, label, method, sets in jobs(bases, methods, ablations, tuned):
        if (base, label) in done:
            continue
        folder = job_folder(work, base, label)
        start = time.perf_counter()
        print(f"[experiment] {time.strftime('%H:%M:%S')} start {base} {label}", file=sys.stderr, flush=True)
        try:
            result = run_matrix((method,), QUANTIZERS, SEEDS, folder, base=base, cache=cache,
                                overrides={method: sets} if sets else {}, progress=True,
                                title=f"{base}: {label}", overwrite=True, threads=THREADS,
                                cad="auto", relearn="auto", consistency="skip")
            del result
            results["rows"].append(collect_row(work, base, label, method, round(time.perf_counter() - start, 1)))
        except Exception as exc:  # record it and go on with the rest
            traceback.print_exc()
            results["failures"].append({"base": base, "method": label, "error": f"{type(exc).__name__}: {exc}"})
        seconds = time.perf_counter() - start
        results["wall_seconds"] = round(results["wall_seconds"] + seconds, 1)
        print(f"[experiment] {time.strftime('%H:%M:%S')} done {base} {label}: {seconds:.0f} s", file=sys.stderr,
              flush=True)
        path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        try:
            (out / "README.md").write_text(markdown(results), encoding="utf-8")
        except Exception:  # the tables can be rendered again with --render-only
            traceback.print_exc()
    return results


def fmt(e: dict | None, signed: bool = False, digits: int = 3) -> str:
    if e is None or e.get("point") is None:
        return "–"
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f"{f.format(e['point'])} [{f.format(e['low'])}, {f.format(e['high'])}]"


def letter(v: str | None) -> str:
    return {"PASS": "P", "FAIL": "F", "INCONCLUSIVE": "I"}.get(v or "", "-")


def verdict_string(v: dict, qs) -> str:
    """F R · Q[each quantizer] · S K, one letter each."""
    return (f"{letter(v.get('F'))}{letter(v.get('R'))} {''.join(letter(v.get(f'Q[{q}]')) for q in qs)} "
            f"{letter(v.get('S'))}{letter(v.get('K'))}")


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def short(q: str) -> str:
    return q.replace("gguf-", "")


def reversal(row: dict, q: str) -> str | None:
    """The reversal evidence for quantizer q: pooled G_Q lower bound > 0, and/or Q[q] FAIL (pooled or in seeds)."""
    g = row["pooled"]["statistics"].get(f"G_Q[{q}]")
    fails = sum(s["verdicts"].get(f"Q[{q}]") == "FAIL" for s in row["seeds"])
    bits = []
    if g is not None and g["low"] > 0:
        bits.append(f"G_Q {fmt(g, True)}")
    if row["pooled"]["verdicts"].get(f"Q[{q}]") == "FAIL":
        bits.append("pooled Q FAIL")
    if fails:
        bits.append(f"Q FAIL in {fails}/{len(row['seeds'])} seeds")
    return ", ".join(bits) or None


def tables(rows: list[dict], qs) -> list[str]:
    """The tables of one group of rows (one base's methods, or the ablations)."""
    n = max((len(r["seeds"]) for r in rows), default=0)
    lines = ["#### Desiderata pooled over the seeds (point [95% CI])", "",
             "| method | D_F | D_R | " + " | ".join(f"G_Q {short(q)}" for q in qs) + " | CAD (seed envelope) |",
             "|---" * (4 + len(qs)) + "|"]
    for r in rows:
        st = r["pooled"]["statistics"]
        lines.append(f"| {r['method']} | {fmt(st.get('D_F'), True)} | {fmt(st.get('D_R'), True)} | "
                     + " | ".join(fmt(st.get(f"G_Q[{q}]"), True) for q in qs) + f" | {fmt(st.get('CAD'), True)} |")
    lines += ["", "#### Verdicts (F R · Q " + " ".join(short(q) for q in qs) + " · S K) and certification rate", "",
              "| method | pooled | " + " | ".join(f"seed {s['seed']}" for s in rows[0]["seeds"])
              + " | overall per seed | " + " | ".join(f"cert {short(q)}" for q in qs) + " | cert all |",
              "|---" * (3 + n + len(qs) + 1) + "|"]
    for r in rows:
        cr = r["pooled"]["cert_rate"]
        lines.append(f"| {r['method']} | {verdict_string(r['pooled']['verdicts'], qs)} | "
                     + " | ".join(verdict_string(s["verdicts"], qs) for s in r["seeds"])
                     + f" | {' '.join(letter(s['verdict']) for s in r['seeds'])} | "
                     + " | ".join(f"{cr['per_quantizer'][q]['k']}/{cr['per_quantizer'][q]['n']}" for q in qs)
                     + f" | {cr['all_quantizers']['k']}/{cr['all_quantizers']['n']} |")
    lines += ["", "#### K: relearning attack (recovered fraction of the held-out forget items, "
              "per seed point [95% CI])",
              "", "| method | " + " | ".join(f"seed {s['seed']}" for s in rows[0]["seeds"])
              + " | mean | held-out acc candidate → after attack (mean) |", "|---" * (3 + n) + "|"]
    for r in rows:
        ks = [s.get("K") or {} for s in r["seeds"]]
        rh = [s.get("relearn_heldout") or {} for s in r["seeds"]]
        before = mean([(h.get("acc_before") or {}).get("point") for h in rh])
        after = mean([(h.get("acc_after") or {}).get("point") for h in rh])
        m = mean([(k.get("estimate") or {}).get("point") for k in ks])
        acc = f"{before:.3f} → {after:.3f}" if before is not None and after is not None else (
            f"→ {after:.3f}" if after is not None else "–")
        lines.append(f"| {r['method']} | " + " | ".join(fmt(k.get("estimate"), True, 2) for k in ks)
                     + f" | {'–' if m is None else f'{m:+.2f}'} | {acc} |")
    lines += ["", "#### Accuracy (mean over the seeds) and D_F per seed", "",
              "| method | forget fp32 | " + " | ".join(f"forget {short(q)}" for q in qs) + " | retain fp32 | "
              + " | ".join(f"retain {short(q)}" for q in qs) + " | forget, cloze (second formulation) | D_F per seed "
              "| unlearn s (mean) |",
              "|---" * (6 + 2 * len(qs)) + "|"]
    for r in rows:
        acc = lambda key: mean([(s["statistics"].get(key) or {}).get("point") for s in r["seeds"]])
        show = lambda x: "–" if x is None else f"{x:.3f}"
        lines.append(f"| {r['method']} | {show(acc('acc_forget[unquantized]'))} | "
                     + " | ".join(show(acc(f"acc_forget[{q}]")) for q in qs)
                     + f" | {show(acc('acc_retain[unquantized]'))} | "
                     + " | ".join(show(acc(f"acc_retain[{q}]")) for q in qs) + " | "
                     + show(mean([((s.get("cross") or {}).get("acc_candidate") or {}).get("point") for s in r["seeds"]]))
                     + " | " + " ".join(f"{s['statistics']['D_F']['point']:+.3f}" for s in r["seeds"])
                     + f" | {mean([s['unlearn_seconds'] for s in r['seeds']]):.0f} |")
    return lines + [""]


def survival_lines(d: dict) -> list[str]:
    g, sg = d["gradient"], d["sign_gradient"]
    lines = ["## Which MANSU step removes the forget signal (`scripts/mansu_step_survival.py`)", "",
             f"On `{d['model']}` at the settings MANSU ran with here (circuit_frac {d['settings']['circuit_frac']}, "
             f"fisher_quantile {d['settings']['fisher_quantile']}, null_rtol {d['settings']['null_rtol']}, "
             f"forget_source {d['settings']['forget_source']}): the gradient g of MANSU's forget loss over its "
             f"{d['forget_sequences']} forget sequences, measured with the method's own circuit, Fisher mask and "
             f"projectors. Circuit: {d['circuit_neurons']} neurons, {d['circuit_coordinates']} coordinates, "
             f"{d['free_coordinates']} free after the Fisher mask and the absmax freeze.", "",
             f"- share of |g| on MLP weights: {d['mlp_share_of_gradient']:.3f}; share of the MLP gradient's norm on "
             f"the circuit: EAP-IG {d['circuit_share_of_mlp_gradient']['eap-ig']:.3f}, same-size random circuit "
             f"{d['circuit_share_of_mlp_gradient']['random']:.3f}", "",
             "| kept fraction of the circuit's norm | gradient g_C | sign(g_C) (AdamW-like) |", "|---|---|---|"]
    for key, label in (("fisher_mask", "Fisher mask only"), ("fisher_mask_and_absmax", "Fisher mask + absmax freeze"),
                       ("null_space", "null-space projection only"),
                       ("null_space_mask_absmax", "both (the method's projector)")):
        lines.append(f"| {label} | {g[key]:.3f} | {sg[key]:.3f} |")
    lines += ["", "Per circuit slice (norms of g; the kept column is after the method's projector):", "",
              "| slice | rows × features | retain rank | Fisher-free | free (with absmax) | |g| | after mask | "
              "after null space | kept |", "|---" * 9 + "|"]
    for sl in d["slices"]:
        lines.append(f"| {sl['name'].replace('model.layers.', 'L').replace('.weight', '')} | "
                     f"{sl['rows_x_features'][0]} × {sl['rows_x_features'][1]} | {sl['retain_rank']} | "
                     f"{sl.get('fisher_free_fraction', float('nan')):.3f} | {sl['free_fraction']:.3f} | "
                     f"{sl['grad']:.4f} | {sl.get('grad_fisher_mask', float('nan')):.4f} | "
                     f"{sl.get('grad_null_space', float('nan')):.4f} | {sl['grad_kept']:.4f} |")
    return lines + [""]


def tuned_text(results: dict) -> str:
    """'ga lr=..., steps=...; ...' from the tuned overrides, with where the files are."""
    files = results.get("settings_files") or []
    where = f"files: {', '.join(sorted({str(Path(f).parent) for f in files}))}" if files else ""
    per = "; ".join(f"{m} {', '.join(v)}" for m, v in sorted(results["tuned"].items()))
    return f"{per}{'; ' + where if where else ''}"


def markdown(results: dict) -> str:
    qs = results["quantizers"]
    seeds = ", ".join(str(s) for s in results["seeds"])
    main_rows = [r for r in results["rows"] if r["method"] in METHODS]
    ablation_rows = [r for r in results["rows"] if r["method"] not in METHODS]
    lines = [f"# Two bases: the bundled methods through {', '.join(qs)}, seeds {seeds}", "",
             "Generated by `scripts/experiment_two_bases.py`: default policy (B = 10,000), "
             + (f"every method at the settings `mansu-audit tune` chose for it ({tuned_text(results)}), "
                if results.get("tuned") else "every method at its **documented defaults**, ")
             + "K computed (relearning attack on `forget_attack`), CAD computed, permutation-consistency check "
             "skipped, torch on 1 thread per cell. 95% CIs are paired item bootstraps. Pooled statistics and "
             "verdicts come from `matrix.pool_seeds` over the seeds' certificates (seed-averaged per-item "
             "correctness, paired with the base; CAD: the seeds' envelope; K pooled like the splits). "
             "The certification rate counts the seeds whose own certificate PASSes F, R and Q[q]. "
             "What the numbers say: `findings.md`.", ""]
    if results.get("wall_seconds"):
        lines += [f"Sum of the matrix runs' wall times: {results['wall_seconds'] / 60:.1f} min (1 torch thread each; "
                  f"with several bases, one process per base ran side by side).", ""]
    for base in results["bases"]:
        rows = [r for r in main_rows if r["base"] == base]
        if rows:
            lines += [f"## Base `{base}`", ""] + tables(rows, qs)
    lines += ["## Reversal per quantizer and base", "",
              "A method counts when its pooled G_Q lower bound is above 0 or Q[q] FAILs (pooled or in a seed).", "",
              "| quantizer | " + " | ".join(f"`{b}`" for b in results["bases"]) + " |",
              "|---" * (1 + len(results["bases"])) + "|"]
    for q in qs:
        cells = []
        for base in results["bases"]:
            found = [f"{r['method']} ({reversal(r, q)})" for r in main_rows if r["base"] == base and reversal(r, q)]
            cells.append("; ".join(found) or "none")
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    lines.append("")
    if ablation_rows:
        for base in results["bases"]:
            rows = [r for r in ablation_rows if r["base"] == base]
            if rows:
                default = [r for r in main_rows if r["base"] == base and r["method"] == "mansu"]
                lines += [f"## MANSU ablations on `{base}` (first row: the defaults)", ""] + tables(default + rows, qs)
    if results.get("mansu_step_survival"):
        lines += survival_lines(results["mansu_step_survival"])
    if results.get("failures"):
        lines += ["## Failures", ""]
        lines += [f"- {f['base']} {f['method']}: {f['error']}" for f in results["failures"]] + [""]
    lines += ["Verdict letters: P PASS, F FAIL, I INCONCLUSIVE, - not computed.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("reports/experiments/two-bases"))
    p.add_argument("--work", type=Path, default=Path("/tmp/two-bases-v2"), help="matrix outputs and the result cache")
    p.add_argument("--bases", default=",".join(BASES))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--ablations", default=",".join(ABLATIONS), help="comma list of ablation labels (or none)")
    p.add_argument("--settings", action="append", default=[], type=Path, metavar="FILE",
                   help="a `mansu-audit tune` output: run that method (and its ablations) at the chosen settings "
                        "(repeatable, one file per method; methods without a file run at their defaults)")
    p.add_argument("--merge", nargs="+", type=Path, default=[], metavar="RESULTS",
                   help="with --render-only: results.json files of runs over other bases (run side by side, one "
                        "process per base) whose rows join OUT/results.json's")
    p.add_argument("--resume", action="store_true", help="skip the (base, label) pairs already in OUT/results.json")
    p.add_argument("--render-only", action="store_true", help="rewrite README.md from OUT/results.json")
    p.add_argument("--recollect", action="store_true",
                   help="with --render-only: re-read every row from its matrix folder under --work first")
    p.add_argument("--diagnostic", type=Path, default=None,
                   help="with --render-only: add scripts/mansu_step_survival.py's JSON output to the results")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    if args.render_only:
        results = json.loads(results_path.read_text(encoding="utf-8"))
        if args.recollect:
            labels = {**{m: m for m in METHODS}, **{k: v[0] for k, v in ABLATIONS.items()}}
            results["rows"] = [collect_row(args.work, r["base"], r["method"], labels[r["method"]], r["seconds"])
                               for r in results["rows"]]
        for other in args.merge:
            more = json.loads(other.read_text(encoding="utf-8"))
            results["bases"] += [b for b in more["bases"] if b not in results["bases"]]
            results["rows"] += more["rows"]
            results["failures"] = results.get("failures", []) + more.get("failures", [])
            results["wall_seconds"] = round(results["wall_seconds"] + more["wall_seconds"], 1)
        if args.diagnostic:
            results["mansu_step_survival"] = json.loads(args.diagnostic.read_text(encoding="utf-8"))
        results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    else:
        chosen = [a for a in args.ablations.split(",") if a and a != "none"]
        results = run(args.out, args.work, tuple(args.bases.split(",")),
                      tuple(m for m in args.methods.split(",") if m), {a: ABLATIONS[a] for a in chosen},
                      args.resume, args.settings)
    (args.out / "README.md").write_text(markdown(results), encoding="utf-8")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
