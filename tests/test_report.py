"""The HTML audit report: untrusted text stays inert, numbers match the certificate, edits are refused, Chromium renders it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_llama
from mansu_audit.cache import NoCache
from mansu_audit.certify import certify
from mansu_audit.cli import main
from mansu_audit.data import BUNDLED_DATA, load_bundle
from mansu_audit.details import circuit_mass_per_layer, compute_details, write_details
from mansu_audit.errors import InputError
from mansu_audit.models import model_from_objects
from mansu_audit.plots import Interval, bar_chart, interval_chart
from mansu_audit.policy import Policy
from mansu_audit.report import render_report

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "<script>alert('pwned')</script>"
ATTR = '"onerror="alert(1)" <img src=x onerror=alert(2)>'
QUANTIZERS = ("nf4", "int8")


def hostile_bundle(root: Path, n: int = 16):
    """synthhazard cut to n items per split, every eval question and first choice carrying HTML payloads."""
    src = BUNDLED_DATA / "synthhazard"
    root.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((src / "manifest.json").read_text())
    for name, spec in manifest["splits"].items():
        lines = (src / spec["path"]).read_text().splitlines()[:n]
        if name in ("forget_eval", "retain_eval"):
            items = [json.loads(line) for line in lines]
            for it in items:
                it["question"] = f"{SCRIPT} {it['question']}"
                it["choices"][0] = f"{it['choices'][0]} {ATTR}"
            lines = [json.dumps(it) for it in items]
        (root / spec["path"]).write_text("\n".join(lines) + "\n")
        spec["n"] = len(lines)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return load_bundle(root)


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory, ref_tokenizer):
    """A certificate + sidecar + details.json of two tiny random models on the hostile bundle."""
    tmp = tmp_path_factory.mktemp("report")
    bundle = hostile_bundle(tmp / "bundle")
    base = model_from_objects(tiny_llama(len(ref_tokenizer), seed=0, hidden=32, intermediate=64), ref_tokenizer, "b")
    cand = model_from_objects(tiny_llama(len(ref_tokenizer), seed=1, hidden=32, intermediate=64), ref_tokenizer, "c")
    out = tmp / "audit"
    cert = certify(base, cand, bundle, quantizers=QUANTIZERS, policy=Policy(bootstrap_replicates=200), out=out,
                   cache=NoCache())
    details = compute_details(base, cand, bundle, QUANTIZERS, NoCache())
    write_details(out, details, {"method": "tiny<b>", "seed": 7, "steps": 1, "seconds": 0.5, "device": "cpu",
                                 "settings": {"lr": 0.1}})
    return out, cert, details


class Elements(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(html: str) -> list[tuple[str, dict]]:
    p = Elements()
    p.feed(html)
    return p.tags


def test_untrusted_item_text_renders_inert(audit_dir):
    out, cert, _ = audit_dir
    sidecar = json.loads((out / "results.json").read_text())
    assert any(SCRIPT in it["question"] for lst in sidecar["worst_items"].values() for it in lst)  # payload reached it
    html = render_report(out).read_text()
    tags = parse(html)
    assert not [t for t, _ in tags if t in ("script", "img", "iframe", "object", "embed", "link")]
    assert not [(t, a) for t, a in tags for k in a if k.startswith("on")]  # no event-handler attribute anywhere
    assert SCRIPT not in html and "<img" not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert "&#34;onerror=&#34;alert(1)&#34; &lt;img src=x onerror=alert(2)&gt;" in html
    assert "tiny&lt;b&gt;" in html  # run metadata is escaped too, not only dataset text


def test_report_is_self_contained(audit_dir):
    out, _, _ = audit_dir
    html = render_report(out).read_text()
    tags = parse(html)
    for tag, attrs in tags:
        for key in ("src", "href", "action", "data", "poster"):
            value = attrs.get(key)
            assert value is None or value.startswith("#") or "://" not in value, (tag, key, value)
    assert "default-src 'none'" in html  # CSP: even a mistake cannot fetch anything
    # the only URL in the file is the SVG namespace, which is an identifier, not a request
    urls = {u for u in __import__("re").findall(r"https?://[^\s\"'<>]+", html)}
    assert urls <= {"http://www.w3.org/2000/svg"}


def test_report_numbers_and_sections_match_certificate(audit_dir):
    out, cert, details = audit_dir
    html = render_report(out).read_text()
    body = cert.body
    d_f = body["desiderata"]["F"]["estimate"]
    assert f"{d_f['point']:+.3f}" in html and f"[{d_f['low']:+.3f}, {d_f['high']:+.3f}]" in html
    for q in QUANTIZERS:
        g = body["statistics"]["forget_eval"][f"G_Q[{q}]"]
        assert f"{g['point']:+.3f}" in html
    assert cert.body_sha256 in html
    for section in ("-verdict", "-desiderata", "-accuracy", "-ptq", "-diag", "-circuit", "-prov", "-items"):
        assert f'id="a0{section}"' in html
    assert html.count("<svg") == 2 + 2 + 2  # accuracy + PTQ, histogram + flips, circuit mass + MLP mass
    # redaction switch: on for the forget lists, off for retain_lost
    boxes = [a for t, a in parse(html) if t == "input" and a.get("class") == "redact"]
    names = json.loads((out / "results.json").read_text())["worst_items"]
    listed = [n for n, items in names.items() if items]
    assert len(boxes) == len(listed)
    for box, name in zip(boxes, listed):
        assert ("checked" in box) == name.startswith("forget_"), name
    # per-layer circuit mass sums to the certificate's totals (same circuit, same attributions)
    cad = json.loads((out / "results.json").read_text())["cad"]
    assert sum(details["circuit_layers"]["circuit_mass_base"]) == pytest.approx(cad["circuit_mass_base"], rel=1e-5)
    assert sum(details["circuit_layers"]["circuit_mass_candidate"]) == pytest.approx(cad["circuit_mass_candidate"],
                                                                                   rel=1e-5, abs=1e-7)


def test_omit_forget_text(audit_dir, tmp_path):
    out, _, _ = audit_dir
    html = render_report(out, out=tmp_path / "r.html", include_forget_text=False).read_text()
    sidecar = json.loads((out / "results.json").read_text())
    for name, items in sidecar["worst_items"].items():
        for it in items:
            plain = it["question"].replace(SCRIPT, "").strip()
            if name.startswith("forget_"):
                assert plain not in html
    assert "[omitted from this report]" in html


def test_edited_certificate_is_refused_and_edited_sidecar_not_shown(audit_dir, tmp_path):
    out, _, _ = audit_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "index.html").unlink(missing_ok=True)
    side = json.loads((copy / "results.json").read_text())
    side["worst_items"]["retain_lost"] = [{"id": "fake", "question": "INJECTED", "choices": ["a", "b"], "answer": 0,
                                           "predictions": {}, "margins": {}}]
    (copy / "results.json").write_text(json.dumps(side))
    html = render_report(copy).read_text()
    assert "INJECTED" not in html and "EDITED" in html
    doc = json.loads((copy / "certificate.json").read_text())
    doc["body"]["verdict"] = "PASS"
    (copy / "certificate.json").write_text(json.dumps(doc))
    (copy / "index.html").unlink()
    with pytest.raises(InputError, match="edited"):
        render_report(copy)
    assert not (copy / "index.html").exists()  # nothing half-written


def test_report_command(audit_dir, tmp_path, capsys):
    out, _, _ = audit_dir
    assert main(["report", str(out), "--out", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "nothing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no certificate.json" in capsys.readouterr().err


def test_circuit_mass_per_layer_sums_to_cad_statistic():
    from mansu_audit.circuits.cad import signed_circuit_sums

    rng = np.random.default_rng(0)
    base_items, cand_items = rng.normal(size=(30, 3, 8)), rng.normal(size=(30, 3, 8))
    mask = rng.random((3, 8)) < 0.3
    out = circuit_mass_per_layer(base_items.mean(0), cand_items.mean(0), mask)
    signs = np.sign(base_items.mean(0))
    # CAD's per-item sums (certify) averaged over items = the per-layer masses summed over layers
    assert sum(out["circuit_mass_base"]) == pytest.approx(signed_circuit_sums(base_items, mask, signs).mean())
    assert sum(out["circuit_mass_candidate"]) == pytest.approx(signed_circuit_sums(cand_items, mask, signs).mean())
    assert out["cad_point"] == pytest.approx(1 - out["total_candidate"] / out["total_base"])
    assert out["circuit_neurons"] == mask.sum(1).tolist()
    assert all(m >= 0 for m in out["circuit_mass_base"])  # |a| on θ0's own circuit


def test_plots_escape_labels_and_skip_missing_values():
    svg = interval_chart(["<b>g</b>"], {"s<script>": [Interval(0.5, 0.4, float("nan"))]}, title='t"x')
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "<b>" not in svg
    assert svg.count("<circle") == 1 and "<line x1" in svg  # the point is drawn, the half-missing CI is not
    bars = bar_chart(["a", "b"], {"s": [0.2, None]}, title="bars")
    assert bars.count("<rect x=") == 1 + 1 + 1  # one bar, the frame, one legend swatch


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_headless_chromium_renders_report_without_console_errors(audit_dir, tmp_path):
    out, _, _ = audit_dir
    html = render_report(out)
    png = tmp_path / "report.png"
    script = ROOT / "scripts" / "screenshot_report.py"
    proc = subprocess.run([sys.executable, str(script), str(html), str(png), "--height", "1200"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the checker itself catches a page that logs an error
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>throw new Error('boom')</script></body></html>")
    proc = subprocess.run([sys.executable, str(script), str(bad), str(tmp_path / "bad.png"), "--height", "300"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1 and "boom" in proc.stderr
