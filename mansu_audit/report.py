"""The HTML audit report (SPEC §10), rendered from stored results only.

`render_report(DIR)` reads every certificate under DIR (DIR itself, or its
sub-folders holding a `certificate.json`), each with its `results.json` sidecar
(per-item margins, worst items, CAD details) and optional `details.json`
(`mansu_audit.details`: diagnostics, circuit mass per layer, the unlearning run),
and writes one self-contained `DIR/index.html`: inline CSS and SVG (`plots`), no
script, no external URL. Nothing is recomputed, so a reviewer can re-render a
report without models.

Dataset text is untrusted: the jinja2 environment autoescapes every template
(`autoescape=True`, not by file extension: the templates end in `.j2`), and the
SVG helpers escape their labels. Worst items from the forget set are hidden
behind a CSS-only redaction switch that is on by default (the text is still in
the file: use `include_forget_text=False` to leave it out entirely).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mansu_audit.cache import atomic_write_bytes
from mansu_audit.certificate import CERTIFICATE_FILE, RESULTS_FILE, Certificate, read_certificate
from mansu_audit.errors import InputError
from mansu_audit.resources import templates_dir

REPORT_FILE = "index.html"
TEMPLATE_DIR = templates_dir()
VERDICT_ORDER = ("F", "R", "Q", "S")
DESIDERATUM_TITLES = {"F": "meaningful forgetting", "R": "retain preservation",
                      "Q": "non-positive PTQ gap (worst quantizer)", "S": "structural erasure (CAD)"}
FORGET_LISTS = ("forget_still_known", "forget_recovered")


@dataclass
class Audit:
    """One certificate and the files beside it, as read from disk."""

    folder: Path
    label: str
    certificate: Certificate
    sidecar: dict | None
    sidecar_status: str  # "ok", "missing" or "edited"
    details: dict | None
    details_sha256: str | None


def environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    if not TEMPLATE_DIR.is_dir():
        raise InputError("report templates not found", TEMPLATE_DIR)
    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["num"] = format_number
    env.filters["pct"] = format_percent
    return env


def format_number(v, digits: int = 3, signed: bool = False) -> str:
    if v is None or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def format_percent(v, digits: int = 1) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{100 * v:.{digits}f}%"


def find_certificate_dirs(root: Path) -> list[Path]:
    """`root` if it holds a certificate, else every sub-folder (any depth) that does, sorted."""
    root = Path(root)
    if (root / CERTIFICATE_FILE).is_file():
        return [root]
    found = sorted(p.parent for p in root.rglob(CERTIFICATE_FILE)
                   if not any(s.startswith(".") for s in p.relative_to(root).parts))
    return sorted(found, key=lambda d: (_matrix_order(root).get(d.relative_to(root).as_posix(), len(found)), d))


def _matrix_order(root: Path) -> dict[str, int]:
    """A matrix run's cell order (methods as given, then seeds), so the report follows it."""
    import json

    path = root / "matrix.json"
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"] if path.is_file() else []
        return {str(c["folder"]): i for i, c in enumerate(cells)}
    except (ValueError, KeyError, TypeError):
        return {}


def load_audit(folder: Path, root: Path) -> Audit:
    import json

    from mansu_audit.data import sha256_file
    from mansu_audit.details import details_sha256, read_details

    cert = read_certificate(folder / CERTIFICATE_FILE)  # checks the body hash and the schema
    side_path = folder / RESULTS_FILE
    sidecar, status = None, "missing"
    if side_path.is_file():
        if sha256_file(side_path) != cert.body["sidecars"].get(RESULTS_FILE):
            status = "edited"
        else:
            sidecar, status = json.loads(side_path.read_text(encoding="utf-8")), "ok"
    details = read_details(folder)
    run = (details or {}).get("run") or {}
    if run.get("method"):
        label = f"{run['method']} (seed {run.get('seed', '?')})"
    else:
        rel = folder.relative_to(root) if folder != root else Path(cert.body["models"]["candidate"]["name"])
        label = str(rel)
    return Audit(folder, label, cert, sidecar, status, details, details_sha256(folder))


def _interval(est: dict | None):
    from mansu_audit.plots import Interval

    if est is None:
        return Interval(None)
    return Interval(est.get("point"), est.get("low"), est.get("high"))


def _quantizers(body: dict) -> list[str]:
    return list(body["quantizers"])


def _short_layer(name: str) -> str:
    m = re.search(r"layers\.(\d+)\.(?:[a-z_]+\.)?([a-z_]+)$", name)
    return f"L{m.group(1)}.{m.group(2)}" if m else name


def accuracy_chart(body: dict):
    from mansu_audit.plots import interval_chart

    variants = ["fp32", *_quantizers(body)]
    stats = body["statistics"]
    series = {}
    for split, short in (("forget_eval", "forget"), ("retain_eval", "retain")):
        for role in ("base", "candidate"):
            series[f"{short} · {role}"] = [_interval(stats[split].get(f"acc[{role}/{v}]")) for v in variants]
    return interval_chart(variants, series, title="Accuracy per quantizer (95% CI)", y_label="accuracy",
                          reference_lines=[(body["chance"], "chance")])


def ptq_chart(body: dict):
    from mansu_audit.plots import interval_chart

    qs = _quantizers(body)
    f = body["statistics"]["forget_eval"]
    series = {"G_Q candidate": [_interval(f.get(f"G_Q[{q}]")) for q in qs],
              "base gap": [_interval(f.get(f"base_gap[{q}]")) for q in qs],
              "diff-in-diff": [_interval(f.get(f"diff_in_diff[{q}]")) for q in qs]}
    limit = body["policy"]["values"]["max_ptq_gap"]
    return interval_chart(qs, series, title="PTQ gap on the forget set (95% CI)", y_label="Δ accuracy",
                          reference_lines=[(0.0, "0"), (limit, f"max gap {limit:g}")])


def ptq_rows(body: dict) -> list[dict]:
    f, r = body["statistics"]["forget_eval"], body["statistics"]["retain_eval"]
    rows = []
    for q in _quantizers(body):
        verdict = body["desiderata"].get(f"Q[{q}]", {})
        rows.append({"quantizer": q, "verdict": verdict.get("verdict", "–"), "reason": verdict.get("reason", ""),
                     "gap": f.get(f"G_Q[{q}]"), "quantized_forget_drop": f.get(f"quantized_forget_drop[{q}]"),
                     "recovery": f.get(f"recovery_fraction[{q}]"), "base_gap": f.get(f"base_gap[{q}]"),
                     "did": f.get(f"diff_in_diff[{q}]"), "retain_drop": r.get(f"retain_drop[{q}]")})
    return rows


def desiderata_rows(body: dict) -> list[dict]:
    d = body["desiderata"]
    names = ["F", "R", *sorted(k for k in d if k.startswith("Q[")), "Q", "S"]
    rows = []
    for name in names:
        v = d[name]
        rows.append({"name": name, "title": DESIDERATUM_TITLES.get(name, f"PTQ gap under {name[2:-1]}"),
                     "verdict": v["verdict"], "statistic": v["statistic"], "estimate": v["estimate"],
                     "threshold": v["threshold"], "reason": v["reason"], "sub": name.startswith("Q[")})
    return rows


def diagnostics_view(details: dict | None) -> dict | None:
    from mansu_audit.plots import bar_chart

    diag = (details or {}).get("diagnosis")
    if not diag or not diag.get("quantizers"):
        return None
    edges = diag["histogram_edges"]
    bins = [f"{edges[i]}–{edges[i + 1]}" for i in range(len(edges) - 1)]
    qs = diag["quantizers"]
    hist = {q: [c / max(sum(d["overall"]["histogram"]), 1) for c in d["overall"]["histogram"]] for q, d in qs.items()}
    first = next(iter(qs.values()))
    layers = [_short_layer(s["name"]) for s in first["layers"]]
    flips = {q: [s["frac_code_changed"] for s in d["layers"]] for q, d in qs.items()}
    return {
        "histogram": bar_chart(bins, hist, title="|update| / local bin width (fraction of weights)",
                               y_label="fraction", width=700),
        "flips": bar_chart(layers, flips, title="Fraction of quantization codes flipped, per layer",
                           y_label="fraction", width=900, height=300, rotate_labels=True),
        "overall": [{"quantizer": q, "mode": d["mode"], **d["overall"]} for q, d in qs.items()],
        "histogram_of": diag.get("histogram_of", ""),
    }


def circuit_view(body: dict, sidecar: dict | None, details: dict | None) -> dict | None:
    from mansu_audit.plots import bar_chart

    cad = (sidecar or {}).get("cad")
    layers = (details or {}).get("circuit_layers")
    if cad is None and layers is None:
        return None
    view = {"cad": cad, "chart": None, "mlp_chart": None, "layers": layers}
    if layers:
        names = [f"layer {i}" for i in layers["layers"]]
        view["chart"] = bar_chart(names, {"θ0 (base)": layers["circuit_mass_base"],
                                          "θu (candidate)": layers["circuit_mass_candidate"]},
                                  title="Circuit attribution mass per layer, before/after", y_label="Σ s·a over C")
        view["mlp_chart"] = bar_chart(names, {"θ0 (base)": layers["mlp_mass_base"],
                                              "θu (candidate)": layers["mlp_mass_candidate"]},
                                      title="All-MLP attribution mass per layer (Σ|a|)", y_label="Σ |a|")
        view["rows"] = [{"layer": i, "neurons": layers["circuit_neurons"][i], "base": layers["circuit_mass_base"][i],
                         "candidate": layers["circuit_mass_candidate"][i],
                         "cad": (1 - layers["circuit_mass_candidate"][i] / layers["circuit_mass_base"][i])
                         if layers["circuit_mass_base"][i] > 0 else None} for i in layers["layers"]]
    return view


def worst_item_lists(body: dict, sidecar: dict | None, include_forget_text: bool) -> list[dict]:
    if not sidecar:
        return []
    out = []
    for name, items in sidecar.get("worst_items", {}).items():
        forget = name.startswith(FORGET_LISTS)
        rows = []
        for it in items:
            preds = it.get("predictions", {})
            margins = it.get("margins", {})
            rows.append({"id": it["id"], "question": it["question"] if include_forget_text or not forget else None,
                         "choices": [{"letter": chr(ord("A") + j), "text": c if include_forget_text or not forget
                                      else None, "answer": j == it["answer"]} for j, c in enumerate(it["choices"])],
                         "answer": chr(ord("A") + it["answer"]),
                         "predictions": [{"model": k, "letter": chr(ord("A") + p), "correct": p == it["answer"],
                                          "margin": margins.get(k)} for k, p in sorted(preds.items())]})
        out.append({"name": name, "forget": forget, "redact_default": forget, "items": rows})
    return out


def provenance(audit: Audit) -> dict:
    b = audit.certificate.body
    return {"suite": b["suite"], "models": b["models"], "benchmark": b["benchmark"], "policy": b["policy"],
            "quantizers": b["quantizers"], "environment": b["environment"], "seeds": b["seeds"],
            "sidecars": b["sidecars"], "sidecar_status": audit.sidecar_status,
            "body_sha256": audit.certificate.body_sha256, "created_utc": audit.certificate.created_utc,
            "details_sha256": audit.details_sha256, "run": (audit.details or {}).get("run")}


def audit_context(audit: Audit, index: int, include_forget_text: bool) -> dict:
    body = audit.certificate.body
    return {"id": f"a{index}", "label": audit.label, "folder": str(audit.folder), "verdict": body["verdict"],
            "card": [{"name": k, "title": DESIDERATUM_TITLES[k], "verdict": body["desiderata"][k]["verdict"],
                      "statistic": body["desiderata"][k]["statistic"], "estimate": body["desiderata"][k]["estimate"],
                      "reason": body["desiderata"][k]["reason"]} for k in VERDICT_ORDER],
            "guard": body["guard"], "desiderata": desiderata_rows(body), "accuracy_chart": accuracy_chart(body),
            "ptq_chart": ptq_chart(body), "ptq_rows": ptq_rows(body), "quantizers": _quantizers(body),
            "accuracy_rows": accuracy_rows(body), "diagnostics": diagnostics_view(audit.details),
            "circuit": circuit_view(body, audit.sidecar, audit.details),
            "worst": worst_item_lists(body, audit.sidecar, include_forget_text),
            "sidecar_status": audit.sidecar_status, "provenance": provenance(audit),
            "policy": body["policy"]["values"], "splits": body["benchmark"]["splits"]}


def accuracy_rows(body: dict) -> list[dict]:
    rows = []
    for v in ["fp32", *_quantizers(body)]:
        row = {"variant": v}
        for split, short in (("forget_eval", "forget"), ("retain_eval", "retain")):
            for role in ("base", "candidate"):
                row[f"{short}_{role}"] = body["statistics"][split].get(f"acc[{role}/{v}]")
        rows.append(row)
    return rows


def overview(audits: Sequence[Audit]) -> dict | None:
    """Cross-candidate comparison (only when the folder holds more than one certificate)."""
    if len(audits) < 2:
        return None
    from mansu_audit.plots import interval_chart

    variants = ["fp32", *_quantizers(audits[0].certificate.body)]
    rows, forget, retain = [], {}, {}
    first = audits[0].certificate.body["statistics"]
    forget["base"] = [_interval(first["forget_eval"].get(f"acc[base/{v}]")) for v in variants]
    retain["base"] = [_interval(first["retain_eval"].get(f"acc[base/{v}]")) for v in variants]
    for i, a in enumerate(audits):
        b = a.certificate.body
        d = b["desiderata"]
        rows.append({"id": f"a{i}", "label": a.label, "verdict": b["verdict"],
                     "verdicts": {k: d[k]["verdict"] for k in VERDICT_ORDER},
                     "D_F": d["F"]["estimate"], "D_R": d["R"]["estimate"], "Q": d["Q"]["estimate"],
                     "Q_reason": d["Q"]["reason"], "CAD": d["S"]["estimate"]})
        forget[a.label] = [_interval(b["statistics"]["forget_eval"].get(f"acc[candidate/{v}]")) for v in variants]
        retain[a.label] = [_interval(b["statistics"]["retain_eval"].get(f"acc[candidate/{v}]")) for v in variants]
    chance = audits[0].certificate.body["chance"]
    return {"rows": rows,
            "forget_chart": interval_chart(variants, forget, title="Forget accuracy by candidate (95% CI)",
                                           y_label="accuracy", reference_lines=[(chance, "chance")], width=720),
            "retain_chart": interval_chart(variants, retain, title="Retain accuracy by candidate (95% CI)",
                                           y_label="accuracy", reference_lines=[(chance, "chance")], width=720)}


def render_html(audits: Sequence[Audit], *, title: str, include_forget_text: bool = True,
                extra_note: str | None = None) -> str:
    env = environment()
    return env.get_template("report.html.j2").render(
        title=title, audits=[audit_context(a, i, include_forget_text) for i, a in enumerate(audits)],
        overview=overview(audits), note=extra_note, include_forget_text=include_forget_text)


def render_report(folder: str | Path, *, out: str | Path | None = None, title: str | None = None,
                  include_forget_text: bool = True, note: str | None = None) -> Path:
    """Render `folder`'s certificates into one HTML file (default `folder/index.html`); returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("report folder not found", folder)
    dirs = find_certificate_dirs(folder)
    if not dirs:
        raise InputError(f"no {CERTIFICATE_FILE} in this folder or below it", folder)
    audits = [load_audit(d, folder) for d in dirs]
    if title is None:
        title = ("mansu-audit report: " + audits[0].label) if len(audits) == 1 else \
            f"mansu-audit report: {len(audits)} candidates"
    html = render_html(audits, title=title, include_forget_text=include_forget_text, extra_note=note)
    path = Path(out) if out is not None else folder / REPORT_FILE
    write_html(path, html)
    return path


def write_html(path: Path, html: str) -> None:
    """Atomic write with ordinary file permissions (a report is meant to be shared, unlike a temp file's 0600)."""
    import os

    atomic_write_bytes(path, html.encode("utf-8"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
