"""The report page renders in headless Chromium (skips where no Chromium is installed)."""

import pytest

from report_screenshot import blank_stats, find_chromium, screenshot  # tests/ is on sys.path under pytest


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_report_renders_non_blank_in_headless_chromium(tiny_pipe_dir, tiny_quant_dir, tmp_path):
    from edadm.report import build_report

    page = build_report(tiny_quant_dir, fp_model=tiny_pipe_dir, num=4, engine="fake")
    shot = screenshot(page, tmp_path / "shot.png", height=1600)
    stats = blank_stats(shot)
    assert stats["nonwhite_fraction"] > 0.02 and stats["colour_fraction"] > 0.002, stats


def test_blank_page_is_detected(tmp_path):
    import numpy as np
    from PIL import Image

    f = tmp_path / "white.png"
    Image.fromarray(np.full((50, 80, 3), 255, np.uint8)).save(f)
    s = blank_stats(f)
    assert s["nonwhite_fraction"] == 0 and s["colour_fraction"] == 0
