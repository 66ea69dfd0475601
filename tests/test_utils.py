"""edadm.utils: peak memory measurement."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from edadm.utils import peak_rss_mb


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024.0 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_peak_rss_grows_with_a_touched_allocation():
    before = peak_rss_mb()
    # earlier tests may have left the high-water mark above the current RSS: allocate past it
    extra_mb = max(0.0, before - _rss_mb()) + 256
    big = torch.ones(int(extra_mb * 2**18))  # float32: 2**18 elements per MB, written
    after = peak_rss_mb()
    assert before > 0 and after >= before + 200, (before, after, extra_mb)
    del big


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss inheritance is Linux behaviour")
def test_child_process_does_not_inherit_the_parents_peak():
    """ru_maxrss survives fork + exec on Linux; the helper must report the child's own peak."""
    big = torch.ones(256 * 2**20)  # 1 GB held by this process while the child runs
    own = peak_rss_mb()
    out = subprocess.run([sys.executable, "-c", "from edadm.utils import peak_rss_mb; print(peak_rss_mb())"],
                         capture_output=True, text=True, check=True).stdout
    child = float(out.strip().splitlines()[-1])
    assert own > 1000 and child < own - 500, (own, child)
    del big


def test_release_free_memory_returns_freed_heap_to_the_os():
    import platform

    from edadm.utils import release_free_memory

    if platform.libc_ver()[0] != "glibc":
        assert release_free_memory() is False
        return
    # freeing one 16 MB mapped block raises glibc's mmap threshold above 4 MB, so the 4 MB blocks
    # below come from the heap; freeing all but the topmost leaves ~250 MB inside the heap,
    # resident, until trimmed
    big = bytearray(16 << 20)
    del big
    blocks = [bytearray(4 << 20) for _ in range(64)]
    del blocks[:-1]
    before = _rss_mb()
    assert release_free_memory() is True
    assert _rss_mb() < before - 100


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_dir_gives_files_the_umask_modes(tmp_path, mask):
    """Files written 0600 inside atomic_dir (as safetensors does) end with 0666 & ~umask."""
    import os

    from edadm.utils import atomic_dir

    old = os.umask(mask)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            f = tmp / "sub" / "t.bin"
            f.write_bytes(b"x")
            os.chmod(f, 0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "sub" / "t.bin").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == 0o777 & ~mask
