#!/usr/bin/env python3
"""Full-page screenshots of HTML reports with headless Chromium; fail on console messages or network requests.

    python scripts/screenshot_report.py REPORT.html OUT.png [--width 1400]
    python scripts/screenshot_report.py --gallery reports/screenshots [--demo-dir DIR]

The report has no script and a Content-Security-Policy of `default-src 'none'`, so
a clean page logs nothing and requests nothing: any console message (an uncaught
error, a CSP refusal of a script, a stylesheet or an external URL) or any request
other than the file itself is a defect. Chromium is driven over the DevTools
protocol on a pipe (`--remote-debugging-pipe`: fd 3 in, fd 4 out, NUL-terminated
JSON; no websocket library, no open port), with a throw-away profile: the page is
loaded at the given width, its full layout height is measured and captured in one
screenshot (`captureBeyondViewport`), and console/log/exception events and
network requests are collected.

`--gallery DIR` writes the screenshots the README and CI keep (each at 1400 and
800 px wide): the demo report (`demo-<w>.png`), its `matrix.html` (`matrix-<w>.png`)
and one method's certificate rendered alone (`certificate-<w>.png`, the GA cell).
The demo folder is `--demo-dir` when given, else a reduced `mansu-audit demo` (ga,npo; nf4,int8) is run into a
temporary folder (cached evaluations make a rerun fast).
Debian: `apt-get update && apt-get install -y chromium`.
Exit codes: 0 clean, 1 console messages, requests or no screenshot, 2 chromium or the file missing.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
         "--remote-debugging-pipe")
WIDTHS = (1400, 800)
MAX_HEIGHT = 30000  # a page taller than this is a defect of its own (the issue: 41,000 px)


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, chromium: str, profile: str, timeout: float):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds():  # runs in the child: the protocol's fixed descriptors 3 (in) and 4 (out), inheritable
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)  # above every pipe end, so no clash below
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=fds, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.deadline = time.monotonic() + timeout

    def _read_message(self) -> dict:
        while b"\0" not in self._buf:
            if time.monotonic() > self.deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise ConnectionError("chromium closed the debugging pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            e = self._read_message()
            if e.get("method") == method:
                return e
            self.events.append(e)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, ConnectionError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


def _problems(events: list[dict], page_url: str) -> list[str]:
    """Console messages, log entries, exceptions and requests other than the page itself."""
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled":
            out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + str((d.get("exception") or {}).get("description") or d.get("text")))
        elif m == "Log.entryAdded":
            entry = p.get("entry", {})
            out.append(f"log ({entry.get('source')}, {entry.get('level')}): {entry.get('text')}")
        elif m == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if url != page_url and not url.startswith(("data:", "about:")):
                out.append(f"request: {url}")
    return out


def screenshot(html: Path, png: Path, *, width: int = 1400, height: int | None = None, timeout: float = 120.0,
               chromium: str | None = None) -> tuple[bool, list[str], int]:
    """(screenshot written, problems, page height in CSS px) for `html`; full page unless `height` is given."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium binary on PATH (Debian: apt-get install -y chromium)")
    png = png.resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    url = html.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="mansu-chromium-") as profile:
        dt = DevTools(chromium, profile, timeout)
        try:
            target = dt.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = dt.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                dt.send(f"{domain}.enable", session=session)
            dt.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height or 900,
                                                           "deviceScaleFactor": 1, "mobile": False}, session)
            dt.events.clear()
            dt.send("Page.navigate", {"url": url}, session)
            dt.wait_for("Page.loadEventFired")
            metrics = dt.send("Page.getLayoutMetrics", session=session)
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            page_h = int(size["height"] + 0.5)
            shot_h = height or min(page_h, MAX_HEIGHT)
            dt.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": shot_h,
                                                           "deviceScaleFactor": 1, "mobile": False}, session)
            shot = dt.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                      "clip": {"x": 0, "y": 0, "width": width, "height": shot_h,
                                                               "scale": 1}}, session)
            png.write_bytes(base64.b64decode(shot["data"]))
            time.sleep(0.2)
            dt.send("Runtime.evaluate", {"expression": "1"}, session)  # flush pending events
            problems = _problems(dt.events, url)
        finally:
            dt.close()
    if page_h > MAX_HEIGHT and height is None:
        problems.append(f"page is {page_h} px tall (more than {MAX_HEIGHT}); the screenshot is cut there")
    return png.is_file() and png.stat().st_size > 0, problems, page_h


def gallery(out_dir: Path, demo_dir: Path | None, widths=WIDTHS) -> int:
    """The committed screenshots: demo report, matrix.html and one certificate alone, at each width."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mansu_audit.report import render_report

    tmp = None
    if demo_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mansu-demo-")
        demo_dir = Path(tmp.name) / "demo"
        # A reduced demo (two methods, two quantizers) keeps CI's screenshot step to a few minutes.
        subprocess.run([sys.executable, "-m", "mansu_audit", "demo", "--out", str(demo_dir), "--quiet",
                        "--methods", "ga,npo", "--quantizers", "nf4,int8"], check=True)
    try:
        cell = next((demo_dir / c for c in ("ga", "runs/ga/seed-0") if (demo_dir / c / "certificate.json").is_file()),
                    None)
        if cell is None:
            cell = next(p.parent for p in sorted(demo_dir.rglob("certificate.json")))
        with tempfile.TemporaryDirectory(prefix="mansu-cert-") as single:
            single_html = render_report(cell, out=Path(single) / "certificate.html")
            pages = {"demo": demo_dir / "index.html", "matrix": demo_dir / "matrix.html", "certificate": single_html}
            failed = 0
            for name, html in pages.items():
                for w in widths:
                    png = out_dir / f"{name}-{w}.png"
                    ok, problems, h = screenshot(html, png, width=w)
                    for p in problems:
                        print(f"{name} at {w} px: {p}", file=sys.stderr)
                    failed += (not ok) + bool(problems)
                    print(f"screenshot: {png} ({w} x {h} px{', clean' if ok and not problems else ''})")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", type=Path, nargs="?")
    p.add_argument("png", type=Path, nargs="?")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=None, help="viewport height (default: the full page)")
    p.add_argument("--gallery", type=Path, default=None, metavar="DIR",
                   help="write the demo / matrix / certificate screenshots at 1400 and 800 px into DIR")
    p.add_argument("--demo-dir", type=Path, default=None, help="an existing `mansu-audit demo` output folder")
    args = p.parse_args(argv)
    if find_chromium() is None:
        print("screenshot_report: no chromium binary on PATH (Debian: apt-get install -y chromium)",
              file=sys.stderr)
        return 2
    if args.gallery is not None:
        return gallery(args.gallery, args.demo_dir)
    if args.html is None or args.png is None:
        p.error("give HTML and PNG, or --gallery DIR")
    if not args.html.is_file():
        print(f"screenshot_report: no such file: {args.html}", file=sys.stderr)
        return 2
    ok, problems, h = screenshot(args.html, args.png, width=args.width, height=args.height)
    for m in problems:
        print(m, file=sys.stderr)
    if not ok:
        print("screenshot_report: chromium wrote no screenshot", file=sys.stderr)
        return 1
    if problems:
        print(f"screenshot_report: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"screenshot: {args.png} ({args.width} x {h} px, no console messages, no requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
