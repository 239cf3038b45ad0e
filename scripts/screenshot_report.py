#!/usr/bin/env python3
"""Screenshot an HTML report with headless Chromium and fail on console messages or network requests.

    python scripts/screenshot_report.py reports/demo/index.html out.png [--width 1280] [--height 2400]

The report has no script and a Content-Security-Policy of `default-src 'none'`,
so a clean page logs nothing: any console line (an uncaught error, a CSP
refusal of a script, a stylesheet or an external URL) is a defect. Chromium is
started with a throw-away profile, no network features and `--enable-logging=stderr`,
which prints every console message as a `CONSOLE(...)` line; those lines are
collected and the script exits 1 if there is any, or if no screenshot was made.
Debian: `apt-get update && apt-get install -y chromium`.
Exit codes: 0 clean, 1 console messages or no screenshot, 2 chromium or the file missing.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
CONSOLE_LINE = re.compile(r"CONSOLE(?:[:(]\d+\)?)?\]\s*(.*)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
         "--enable-logging=stderr", "--v=0")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def console_messages(log: str) -> list[str]:
    """Console lines Chromium printed (each message once)."""
    out = []
    for line in log.splitlines():
        m = CONSOLE_LINE.search(line)
        if m:
            out.append(m.group(1).strip() or line.strip())
    return out


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 2400, timeout: float = 120.0,
               chromium: str | None = None) -> tuple[bool, list[str], str]:
    """(screenshot written, console messages, chromium's stderr) for `html`."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium binary on PATH (Debian: apt-get install -y chromium)")
    png = png.resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    with tempfile.TemporaryDirectory(prefix="mansu-chromium-") as profile:
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png}", html.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    log = proc.stderr + proc.stdout
    return png.is_file() and png.stat().st_size > 0, console_messages(log), log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2400)
    p.add_argument("--verbose", action="store_true", help="print chromium's whole log")
    args = p.parse_args(argv)
    if not args.html.is_file():
        print(f"screenshot_report: no such file: {args.html}", file=sys.stderr)
        return 2
    try:
        ok, messages, log = screenshot(args.html, args.png, width=args.width, height=args.height)
    except FileNotFoundError as exc:
        print(f"screenshot_report: {exc}", file=sys.stderr)
        return 2
    if args.verbose:
        print(log, file=sys.stderr)
    for m in messages:
        print(f"console: {m}", file=sys.stderr)
    if not ok:
        print("screenshot_report: chromium wrote no screenshot", file=sys.stderr)
        return 1
    if messages:
        print(f"screenshot_report: {len(messages)} console message(s)", file=sys.stderr)
        return 1
    print(f"screenshot: {args.png} (no console messages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
