"""Small inline-SVG charts for the HTML report (no JavaScript, no network, no plotting library).

Every function returns a `markupsafe.Markup` SVG string. All text that ends up in
the SVG (labels, titles, tooltips) goes through `html.escape` here, so the
templates can insert the charts unescaped while dataset- or user-supplied names
stay inert. Non-finite values are skipped (drawn as a gap), never plotted as 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

from markupsafe import Markup

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Interval:
    """A point estimate with its CI (either bound may be None: no whisker)."""

    point: float | None
    low: float | None = None
    high: float | None = None


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    out, v = [], start
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def _svg(width: int, height: int, body: list[str], title: str) -> Markup:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {FONT}><title>{escape(title)}</title>')
    return Markup(head + "".join(body) + "</svg>")


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    out = []
    for i, name in enumerate(names):
        yy = y + 14 * i
        out.append(f'<rect x="{x:.1f}" y="{yy - 8:.1f}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
                   f'<text x="{x + 14:.1f}" y="{yy + 1:.1f}">{escape(name)}</text>')
    return out


def _frame(title: str, gridlines: Sequence[tuple[float, str]], left: float, top: float, pw: float, ph: float,
           y_label: str) -> list[str]:
    """Title, horizontal gridlines with tick labels (pixel y, text) and the rotated y-axis label."""
    body = [f'<text x="{left}" y="14" font-weight="bold">{escape(title)}</text>']
    for py, label in gridlines:
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{py:.1f}" y2="{py:.1f}" stroke="#e5e5e5"/>'
                    f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{label}</text>')
    if y_label:
        body.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
                    f'{escape(y_label)}</text>')
    return body


def interval_chart(groups: Sequence[str], series: dict[str, Sequence[Interval]], *, title: str,
                   y_label: str = "", y_range: tuple[float, float] | None = None,
                   reference_lines: Sequence[tuple[float, str]] = (), width: int = 640, height: int = 260) -> Markup:
    """Points with CI whiskers: one cluster per group (e.g. quantizer), one colour per series."""
    values = [v for ivs in series.values() for iv in ivs for v in (iv.point, iv.low, iv.high) if _finite(v)]
    values += [v for v, _ in reference_lines]
    if y_range is None:
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        pad = (hi - lo) * 0.08 or 0.05
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = y_range
    ticks = _ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    left, right, top, bottom = 56, 150, 24, 36
    pw, ph = width - left - right, height - top - bottom

    def y(v: float) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    body = _frame(title, [(y(t), _fmt(t)) for t in ticks], left, top, pw, ph, y_label)
    for v, label in reference_lines:
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#555" '
                    f'stroke-dasharray="4 3"/><text x="{left + pw + 4}" y="{y(v) + 4:.1f}" fill="#555">'
                    f'{escape(label)}</text>')
    n_groups, n_series = max(len(groups), 1), max(len(series), 1)
    slot = pw / n_groups
    for g, name in enumerate(groups):
        cx = left + slot * (g + 0.5)
        body.append(f'<text x="{cx:.1f}" y="{top + ph + 16}" text-anchor="middle">{escape(name)}</text>')
        for s, (sname, ivs) in enumerate(series.items()):
            if g >= len(ivs):
                continue
            iv = ivs[g]
            x = cx + (s - (n_series - 1) / 2) * min(14.0, slot / (n_series + 1))
            colour = PALETTE[s % len(PALETTE)]
            tip = escape(f"{sname} · {name}: " + (_fmt(iv.point) if _finite(iv.point) else "n/a")
                         + (f" [{_fmt(iv.low)}, {_fmt(iv.high)}]" if _finite(iv.low) and _finite(iv.high) else ""))
            if _finite(iv.low) and _finite(iv.high):
                body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y(iv.low):.1f}" y2="{y(iv.high):.1f}" '
                            f'stroke="{colour}" stroke-width="1.5"/>'
                            f'<line x1="{x - 3:.1f}" x2="{x + 3:.1f}" y1="{y(iv.low):.1f}" y2="{y(iv.low):.1f}" '
                            f'stroke="{colour}"/><line x1="{x - 3:.1f}" x2="{x + 3:.1f}" y1="{y(iv.high):.1f}" '
                            f'y2="{y(iv.high):.1f}" stroke="{colour}"/>')
            if _finite(iv.point):
                body.append(f'<circle cx="{x:.1f}" cy="{y(iv.point):.1f}" r="3.5" fill="{colour}">'
                            f'<title>{tip}</title></circle>')
    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    body += _legend(list(series), left + pw + 10, top + 10 + 14 * len(reference_lines) + (8 if reference_lines else 0))
    return _svg(width, height, body, title)


def bar_chart(categories: Sequence[str], series: dict[str, Sequence[float | None]], *, title: str,
              y_label: str = "", log_y: bool = False, width: int = 640, height: int = 260,
              rotate_labels: bool = False) -> Markup:
    """Grouped bars (one colour per series). `log_y` plots log10(value) for positive values."""
    def tr(v):
        if not _finite(v):
            return None
        if log_y:
            return math.log10(v) if v > 0 else None
        return float(v)

    vals = [tr(v) for vs in series.values() for v in vs]
    vals = [v for v in vals if v is not None]
    if log_y:
        lo = math.floor(min(vals)) if vals else 0.0
        hi = math.ceil(max(vals)) if vals else 1.0
        if hi <= lo:
            hi = lo + 1
        ticks = list(range(int(lo), int(hi) + 1))
    else:
        lo = min(0.0, min(vals) if vals else 0.0)
        hi = max(vals) if vals else 1.0
        hi = hi if hi > lo else lo + 1.0
        ticks = _ticks(lo, hi)
        lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    bottom = 70 if rotate_labels else 36
    left, right, top = 56, 150, 24
    pw, ph = width - left - right, height - top - bottom

    def y(v: float) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    body = _frame(title, [(y(t), f"1e{t}" if log_y else _fmt(t)) for t in ticks], left, top, pw, ph, y_label)
    n_cat, n_series = max(len(categories), 1), max(len(series), 1)
    slot = pw / n_cat
    bar = slot * 0.8 / n_series
    base_v = lo if log_y else max(lo, 0.0)
    for c, cat in enumerate(categories):
        x0 = left + slot * c + slot * 0.1
        lx = left + slot * (c + 0.5)
        if rotate_labels:
            body.append(f'<text transform="translate({lx:.1f} {top + ph + 8}) rotate(45)" font-size="9">'
                        f'{escape(cat)}</text>')
        else:
            body.append(f'<text x="{lx:.1f}" y="{top + ph + 16}" text-anchor="middle">{escape(cat)}</text>')
        for s, (sname, vs) in enumerate(series.items()):
            raw = vs[c] if c < len(vs) else None
            v = tr(raw)
            if v is None:
                continue
            y_top, y_bot = y(max(v, base_v)), y(min(v, base_v))
            tip = escape(f"{sname} · {cat}: {_fmt(raw)}")
            body.append(f'<rect x="{x0 + s * bar:.1f}" y="{y_top:.1f}" width="{max(bar - 1, 1):.1f}" '
                        f'height="{max(y_bot - y_top, 0.5):.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                        f'<title>{tip}</title></rect>')
    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    body += _legend(list(series), left + pw + 10, top + 10)
    return _svg(width, height, body, title)
