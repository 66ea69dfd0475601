"""edadm.utils: peak memory measurement."""
from __future__ import annotations

import subprocess
import sys

import torch

from edadm.utils import peak_rss_mb


def test_peak_rss_grows_with_a_touched_allocation():
    before = peak_rss_mb()
    big = torch.ones(64 * 2**20)  # 256 MB, written
    after = peak_rss_mb()
    assert before > 0 and after >= before + 200, (before, after)
    del big


def test_child_process_does_not_inherit_the_parents_peak():
    """ru_maxrss survives fork + exec on Linux; the helper must report the child's own peak."""
    big = torch.ones(256 * 2**20)  # 1 GB held by this process while the child runs
    own = peak_rss_mb()
    out = subprocess.run([sys.executable, "-c", "from edadm.utils import peak_rss_mb; print(peak_rss_mb())"],
                         capture_output=True, text=True, check=True).stdout
    child = float(out.strip().splitlines()[-1])
    assert own > 1000 and child < own - 500, (own, child)
    del big
