"""Open the leaderboard HTML in headless Chromium and save a full-page PNG screenshot, to check
that the page opens offline and its plots render.

    python scripts/screenshot_leaderboard.py results/leaderboard.html --out results/leaderboard.png

Needs the Debian ``chromium`` package (``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found: install it with `sudo apt-get install -y chromium`")


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 6000, timeout: float = 120.0) -> Path:
    """Render ``html`` headless (no network, no GPU) into the PNG ``out``; returns ``out``."""
    if not html.is_file():
        raise SystemExit(f"{html}: no such file (render it with `python -m benchmarks leaderboard`)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
            f"--screenshot={out.resolve()}", html.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", type=Path, help="leaderboard.html")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: next to the HTML)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=6000)
    args = parser.parse_args(argv)
    out = args.out or args.html.with_suffix(".png")
    print(f"screenshot written to {screenshot(args.html, out, args.width, args.height)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
