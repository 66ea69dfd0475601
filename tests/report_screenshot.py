"""Render an `edadm report` page in headless Chromium and check the screenshot is not blank.

    python tests/report_screenshot.py DIR/report/index.html [--out shot.png]

Needs a Chromium binary (Debian: `apt-get install chromium`); exits 2 with one line when
none is found. The page is opened from disk with networking off: a self-contained report
renders fully anyway. "Not blank": the screenshot has a non-trivial share of non-white
pixels and the embedded figures' colours appear (checked in tests/test_report_render.py
too, which skips without Chromium).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "headless_shell")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, out: Path, width: int = 1200, height: int = 2400, timeout: float = 120.0) -> Path:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={width},{height}", "--hide-scrollbars",
               f"--screenshot={out}", html.resolve().as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
    return out


def blank_stats(png: Path) -> dict:
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"), dtype=float)
    nonwhite = (img.min(-1) < 240).mean()
    colourful = (img.max(-1) - img.min(-1) > 60).mean()  # plot lines and bars, not just black text
    return {"shape": list(img.shape), "nonwhite_fraction": float(nonwhite), "colour_fraction": float(colourful),
            "std": float(img.std())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.html.is_file():
        print(f"error: {args.html} not found", file=sys.stderr)
        return 2
    out = args.out or args.html.with_name("screenshot.png")
    try:
        screenshot(args.html, out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats = blank_stats(out)
    ok = stats["nonwhite_fraction"] > 0.02 and stats["colour_fraction"] > 0.002
    print(f"{out}: {stats} -> {'rendered' if ok else 'BLANK'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
