"""Small inline-SVG charts for the HTML report (no JavaScript, no network, no plotting library).

Every function returns a `markupsafe.Markup` SVG string. All text that ends up in
the SVG (labels, titles, tooltips) goes through `html.escape` here, so the
templates can insert the charts unescaped while dataset- or user-supplied names
stay inert. Non-finite values are skipped (drawn as a gap), never plotted as 0.

One colour per meaning, in every chart of a report (`COLOURS`): the base model θ0
is slate grey, the candidate θu blue, an oracle (never saw the facts) ochre, a
policy threshold a red dashed line, chance and zero grey dotted lines; quantizers and methods, when they are the series, take
fixed colours from their own palettes (`series_colour`), so "nf4" is the same teal
in every chart. Every chart carries its legend, including its reference lines.

Charts: `interval_chart` (points with CI whiskers, clustered by group),
`slope_chart` (a fan of lines from the first group, the unquantized model, to each
other group, per series, with CIs; the y axis is zoomed to the data), `line_chart`
(y against a numeric x, e.g. accuracy per attack step or per layer; a missing point
breaks the line), and `bar_chart` (grouped bars, optionally on a log10 axis with a
vertical marker).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Mapping, Sequence

from markupsafe import Markup

FONT = 'font-family="system-ui, sans-serif" font-size="11"'
COLOURS = {"base": "#64748b", "candidate": "#2563eb", "oracle": "#a16207", "diff": "#9333ea", "threshold": "#dc2626",
           "reference": "#6b7280", "frame": "#9ca3af", "grid": "#e5e7eb"}
# Fixed colours for named series (quantizers, methods); anything else takes the next free palette colour.
NAMED = {"nf4": "#0d9488", "gptq": "#d97706", "int8": "#db2777", "rtn": "#7c3aed", "hqq": "#65a30d",
         "mansu": "#16a34a", "ga": "#ea580c", "npo": "#0891b2", "rmu": "#c026d3"}
PALETTE = ("#0d9488", "#d97706", "#db2777", "#7c3aed", "#65a30d", "#0891b2", "#ea580c", "#c026d3", "#475569")
# Reference-line styles: (colour, dash pattern).
LINE_STYLES = {"threshold": (COLOURS["threshold"], "6 3"), "chance": (COLOURS["reference"], "2 3"),
               "zero": (COLOURS["reference"], "2 3")}


@dataclass(frozen=True)
class Interval:
    """A point estimate with its CI (either bound may be None: no whisker)."""

    point: float | None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class RefLine:
    """A horizontal reference line: `kind` is "threshold" (red dashed), "chance" or "zero" (grey dotted)."""

    value: float
    label: str
    kind: str = "threshold"


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


def series_colours(names: Sequence[str], fixed: Mapping[str, str] | None = None) -> dict[str, str]:
    """A colour per series name: `fixed` first, then the role/quantizer/method colours, then the palette."""
    fixed = dict(fixed or {})
    out, used = {}, set()
    for name in names:
        key = name.lower()
        c = fixed.get(name) or COLOURS.get(key) or NAMED.get(key) or NAMED.get(key.split(" ")[0])
        if c:
            out[name] = c
            used.add(c)
    free = [c for c in PALETTE if c not in used]
    for i, name in enumerate(n for n in names if n not in out):
        out[name] = free[i % len(free)] if free else PALETTE[i % len(PALETTE)]
    return out


def _lines(reference_lines) -> list[RefLine]:
    """RefLine objects from RefLines or (value, label) pairs (a label "0" or "chance" gets the dotted style)."""
    out = []
    for r in reference_lines:
        if isinstance(r, RefLine):
            out.append(r)
        else:
            value, label = r
            out.append(RefLine(value, label, "zero" if label == "0" else "chance" if label == "chance" else
                               "threshold"))
    return [r for r in out if _finite(r.value)]


def _svg(width: int, height: int, body: list[str], title: str) -> Markup:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {FONT}><title>{escape(title)}</title>')
    return Markup(head + "".join(body) + "</svg>")


def _legend(entries: Sequence[tuple[str, str, str]], x: float, y: float) -> list[str]:
    """Legend rows (label, colour, shape) with shape "box", "dot" or a dash pattern for a line."""
    out = []
    for i, (name, colour, shape) in enumerate(entries):
        yy = y + 15 * i
        if shape == "box":
            mark = f'<rect x="{x:.1f}" y="{yy - 8:.1f}" width="10" height="10" fill="{colour}"/>'
        elif shape == "dot":
            mark = (f'<line x1="{x - 2:.1f}" x2="{x + 12:.1f}" y1="{yy - 3:.1f}" y2="{yy - 3:.1f}" stroke="{colour}" '
                    f'stroke-width="1.5"/><circle cx="{x + 5:.1f}" cy="{yy - 3:.1f}" r="3.5" fill="{colour}"/>')
        else:
            mark = (f'<line x1="{x - 2:.1f}" x2="{x + 12:.1f}" y1="{yy - 3:.1f}" y2="{yy - 3:.1f}" stroke="{colour}" '
                    f'stroke-width="1.5" stroke-dasharray="{shape}"/>')
        out.append(f'{mark}<text x="{x + 16:.1f}" y="{yy + 1:.1f}">{escape(name)}</text>')
    return out


def _ref_legend(lines: Sequence[RefLine]) -> list[tuple[str, str, str]]:
    seen, out = set(), []
    for r in lines:
        colour, dash = LINE_STYLES.get(r.kind, LINE_STYLES["threshold"])
        if r.label not in seen:
            seen.add(r.label)
            out.append((r.label, colour, dash))
    return out


def _frame(title: str, gridlines: Sequence[tuple[float, str]], left: float, top: float, pw: float, ph: float,
           y_label: str) -> list[str]:
    """Title, horizontal gridlines with tick labels (pixel y, text) and the rotated y-axis label."""
    body = [f'<text x="{left}" y="14" font-weight="bold">{escape(title)}</text>']
    for py, label in gridlines:
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{py:.1f}" y2="{py:.1f}" stroke="{COLOURS["grid"]}"/>'
                    f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{label}</text>')
    if y_label:
        body.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
                    f'{escape(y_label)}</text>')
    return body


def _draw_lines(lines: Sequence[RefLine], y, left: float, pw: float, lo: float, hi: float) -> list[str]:
    out = []
    for r in lines:
        if not lo <= r.value <= hi:
            continue
        colour, dash = LINE_STYLES.get(r.kind, LINE_STYLES["threshold"])
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(r.value):.1f}" y2="{y(r.value):.1f}" '
                   f'stroke="{colour}" stroke-width="1.3" stroke-dasharray="{dash}"><title>{escape(r.label)}</title>'
                   f'</line>')
    return out


def _y_range(values: list[float], y_range, min_span: float = 0.02) -> tuple[float, float]:
    if y_range is not None:
        return y_range
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < min_span:
        mid = (hi + lo) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    pad = (hi - lo) * 0.08
    return lo - pad, hi + pad


def _whisker(x: float, y, iv: Interval, colour: str, tip: str) -> list[str]:
    out = []
    if _finite(iv.low) and _finite(iv.high):
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y(iv.low):.1f}" y2="{y(iv.high):.1f}" '
                   f'stroke="{colour}" stroke-width="1.5"/>'
                   f'<line x1="{x - 3:.1f}" x2="{x + 3:.1f}" y1="{y(iv.low):.1f}" y2="{y(iv.low):.1f}" '
                   f'stroke="{colour}"/><line x1="{x - 3:.1f}" x2="{x + 3:.1f}" y1="{y(iv.high):.1f}" '
                   f'y2="{y(iv.high):.1f}" stroke="{colour}"/>')
    if _finite(iv.point):
        out.append(f'<circle cx="{x:.1f}" cy="{y(iv.point):.1f}" r="3.5" fill="{colour}">'
                   f'<title>{escape(tip)}</title></circle>')
    return out


def _tip(sname: str, group: str, iv: Interval) -> str:
    return (f"{sname} · {group}: " + (_fmt(iv.point) if _finite(iv.point) else "n/a")
            + (f" [{_fmt(iv.low)}, {_fmt(iv.high)}]" if _finite(iv.low) and _finite(iv.high) else ""))


def _plot_area(y_range: tuple[float, float], lines: Sequence[RefLine], title: str, y_label: str,
               left: float, top: float, pw: float, ph: float):
    """(y, body): the value -> pixel map of a `pw` x `ph` plot at (left, top), its y range widened to
    the outer ticks, and the SVG frame, gridlines and reference lines drawn so far."""
    lo, hi = y_range
    ticks = _ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])

    def y(v: float) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    body = _frame(title, [(y(t), _fmt(t)) for t in ticks], left, top, pw, ph, y_label)
    body += _draw_lines(lines, y, left, pw, lo, hi)
    return y, body


def interval_chart(groups: Sequence[str], series: dict[str, Sequence[Interval]], *, title: str,
                   y_label: str = "", y_range: tuple[float, float] | None = None,
                   reference_lines: Sequence = (), colours: Mapping[str, str] | None = None,
                   width: int = 640, height: int = 260) -> Markup:
    """Points with CI whiskers: one cluster per group (e.g. quantizer), one colour per series.

    `reference_lines`: `RefLine`s or (value, label) pairs, drawn and listed in the legend.
    """
    lines = _lines(reference_lines)
    values = [v for ivs in series.values() for iv in ivs for v in (iv.point, iv.low, iv.high) if _finite(v)]
    values += [r.value for r in lines]
    left, top = 56, 24
    pw, ph = width - left - 170, height - top - 36
    y, body = _plot_area(_y_range(values, y_range), lines, title, y_label, left, top, pw, ph)
    cmap = series_colours(list(series), colours)
    n_series = max(len(series), 1)
    slot = pw / max(len(groups), 1)
    for g, name in enumerate(groups):
        cx = left + slot * (g + 0.5)
        body.append(f'<text x="{cx:.1f}" y="{top + ph + 16}" text-anchor="middle">{escape(name)}</text>')
        for s, (sname, ivs) in enumerate(series.items()):
            if g >= len(ivs):
                continue
            x = cx + (s - (n_series - 1) / 2) * min(14.0, slot / (n_series + 1))
            body += _whisker(x, y, ivs[g], cmap[sname], _tip(sname, name, ivs[g]))
    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="{COLOURS["frame"]}"/>')
    body += _legend([(s, cmap[s], "dot") for s in series] + _ref_legend(lines), left + pw + 12, top + 10)
    return _svg(width, height, body, title)


def slope_chart(groups: Sequence[str], series: dict[str, Sequence[Interval]], *, title: str, y_label: str = "",
                reference_lines: Sequence = (), colours: Mapping[str, str] | None = None,
                width: int = 420, height: int = 250) -> Markup:
    """A fan per series from the first group (the unquantized model) to every other group, with CIs.

    The y axis is zoomed to the data (intervals and reference lines that lie within
    the data's span plus a margin): a 2-point change is visible, not flattened on 0-1.
    """
    lines = _lines(reference_lines)
    values = [v for ivs in series.values() for iv in ivs for v in (iv.point, iv.low, iv.high) if _finite(v)]
    if values:
        span = max(values) - min(values)
        near = [r for r in lines if min(values) - max(span, 0.05) <= r.value <= max(values) + max(span, 0.05)]
    else:
        near = lines
    left, top = 50, 24
    pw, ph = width - left - 150, height - top - 36
    y, body = _plot_area(_y_range(values + [r.value for r in near], None), near, title, y_label, left, top, pw, ph)
    cmap = series_colours(list(series), colours)
    n_series = max(len(series), 1)
    slot = pw / max(len(groups), 1)
    offset = {s: (i - (n_series - 1) / 2) * min(10.0, slot / (n_series + 2)) for i, s in enumerate(series)}
    for g, name in enumerate(groups):
        cx = left + slot * (g + 0.5)
        body.append(f'<text x="{cx:.1f}" y="{top + ph + 16}" text-anchor="middle">{escape(name)}</text>')
    for sname, ivs in series.items():
        colour, dx = cmap[sname], offset[sname]
        x0 = left + slot * 0.5 + dx
        if ivs and _finite(ivs[0].point):
            for g in range(1, min(len(groups), len(ivs))):
                if _finite(ivs[g].point):
                    body.append(f'<line x1="{x0:.1f}" y1="{y(ivs[0].point):.1f}" x2="{left + slot * (g + 0.5) + dx:.1f}"'
                                f' y2="{y(ivs[g].point):.1f}" stroke="{colour}" stroke-width="1.5" '
                                f'stroke-opacity="0.8"/>')
        for g in range(min(len(groups), len(ivs))):
            body += _whisker(left + slot * (g + 0.5) + dx, y, ivs[g], colour, _tip(sname, groups[g], ivs[g]))
    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="{COLOURS["frame"]}"/>')
    body += _legend([(s, cmap[s], "dot") for s in series] + _ref_legend(near), left + pw + 12, top + 10)
    return _svg(width, height, body, title)


def line_chart(series: dict[str, Sequence[tuple[float, float | None]]], *, title: str, x_label: str = "",
               y_label: str = "", reference_lines: Sequence = (), colours: Mapping[str, str] | None = None,
               width: int = 420, height: int = 250) -> Markup:
    """Lines through (x, y) points, one colour per series, a dot (with tooltip) per point.

    The y axis is zoomed to the points and reference lines; x ticks are the points'
    x values when there are at most 12 distinct ones (steps, layers), else round ticks.
    """
    lines = _lines(reference_lines)
    xs = sorted({x for ps in series.values() for x, v in ps if _finite(x) and _finite(v)}) or [0.0, 1.0]
    values = [v for ps in series.values() for x, v in ps if _finite(x) and _finite(v)] + [r.value for r in lines]
    left, top = 50, 24
    pw, ph = width - left - 150, height - top - 40
    y, body = _plot_area(_y_range(values, None), lines, title, y_label, left, top, pw, ph)
    x_lo, x_hi = xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + 1.0

    def x(v: float) -> float:
        return left + 8 + (pw - 16) * (v - x_lo) / (x_hi - x_lo)

    for t in (xs if len(xs) <= 12 else [t for t in _ticks(x_lo, x_hi) if x_lo <= t <= x_hi]):
        body.append(f'<text x="{x(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{_fmt(t)}</text>')
    if x_label:
        body.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 30}" text-anchor="middle">{escape(x_label)}</text>')
    cmap = series_colours(list(series), colours)
    for sname, ps in series.items():
        runs, run = [], []
        for xv, v in [*ps, (None, None)]:  # a missing point ends a run
            if _finite(xv) and _finite(v):
                run.append((x(xv), y(v), xv, v))
            elif run:
                runs.append(run)
                run = []
        for run in runs:
            if len(run) > 1:
                path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in run)
                body.append(f'<polyline points="{path}" fill="none" stroke="{cmap[sname]}" stroke-width="1.5"/>')
            body += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{cmap[sname]}"><title>'
                     f'{escape(f"{sname} · {_fmt(xv)}: {_fmt(v)}")}</title></circle>' for px, py, xv, v in run]
    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="{COLOURS["frame"]}"/>')
    body += _legend([(s, cmap[s], "dot") for s in series] + _ref_legend(lines), left + pw + 12, top + 10)
    return _svg(width, height, body, title)


def bar_chart(categories: Sequence[str], series: dict[str, Sequence[float | None]], *, title: str,
              y_label: str = "", log_y: bool = False, width: int = 640, height: int = 260,
              rotate_labels: bool = False, colours: Mapping[str, str] | None = None,
              marker: tuple[float, str] | None = None) -> Markup:
    """Grouped bars (one colour per series). `log_y` plots log10(value) for positive values (zeros: no bar).

    `marker` (position in category units, label) draws a vertical red dashed line between
    categories, e.g. at the "half a bin" edge of a histogram.
    """
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
    left, right, top = 56, 170, 24
    pw, ph = width - left - right, height - top - bottom

    def y(v: float) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    def tick_label(t):
        return (f"{10.0 ** t:g}" if -4 <= t <= 4 else f"1e{t}") if log_y else _fmt(t)

    body = _frame(title, [(y(t), tick_label(t)) for t in ticks], left, top, pw, ph, y_label)
    cmap = series_colours(list(series), colours)
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
                        f'height="{max(y_bot - y_top, 0.5):.1f}" fill="{cmap[sname]}">'
                        f'<title>{tip}</title></rect>')
    legend = [(s, cmap[s], "box") for s in series]
    if marker is not None:
        mx = left + slot * marker[0]
        body.append(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{top}" y2="{top + ph}" stroke="{COLOURS["threshold"]}" '
                    f'stroke-width="1.3" stroke-dasharray="6 3"><title>{escape(marker[1])}</title></line>')
        legend.append((marker[1], COLOURS["threshold"], "6 3"))
    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="{COLOURS["frame"]}"/>')
    body += _legend(legend, left + pw + 12, top + 10)
    return _svg(width, height, body, title)


__all__ = ["Interval", "RefLine", "COLOURS", "interval_chart", "slope_chart", "line_chart", "bar_chart",
           "series_colours"]
