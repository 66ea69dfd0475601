"""Multi-process sampling: identical images for 1 or 2 processes, resumable, packed."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edadm.dist import PACKED, DistInfo, my_batches, sample_to_dir


def test_batches_are_dealt_round_robin_and_cover_everything_once():
    for world in (1, 2, 3):
        got = sorted(b for r in range(world) for b in my_batches(10, 3, DistInfo(rank=r, world_size=world)))
        assert got == [(0, 3), (3, 3), (6, 3), (9, 1)]
    assert my_batches(10, 3, DistInfo(rank=1, world_size=2)) == [(3, 3), (9, 1)]


def _run_one_and_two(args: list[str], out_flag: str, tmp_path: Path):
    """`edadm ARGS OUT_FLAG tmp/one` in one process, then under torchrun with 2 gloo
    processes into tmp/two; both must succeed. Returns the two CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])):
        cmd = [sys.executable, *launcher, "-m", "edadm", *args, out_flag, str(tmp_path / name)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(proc)
    return runs


def _files(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.glob("*.png"))}


@pytest.mark.slow
def test_two_gloo_processes_write_the_same_images_as_one(tiny_pipe_dir, tmp_path):
    common = ["sample", str(tiny_pipe_dir), "-n", "6", "--batch-size", "2", "--seed", "3", "--no-progress",
              "--device", "cpu"]
    _, two = _run_one_and_two(common, "--out-dir", tmp_path)
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert list(a) == [f"{i:06d}.png" for i in range(6)]
    assert a == b  # byte-identical files
    pa, pb = np.load(tmp_path / "one" / PACKED)["images"], np.load(tmp_path / "two" / PACKED)["images"]
    assert pa.shape == (6, 32, 32, 1) and np.array_equal(pa, pb)
    assert "with 2 process(es)" in two.stdout and two.stdout.count("wrote 6 images") == 1  # rank 0 only


def test_resume_recomputes_only_missing_batches(tiny_pipe_dir, tmp_path, monkeypatch):
    import edadm.sampling as pipeline_mod
    from edadm import load

    pipe = load(tiny_pipe_dir, device="cpu")
    calls = []
    real = pipeline_mod.generate

    def counting(*a, **kw):
        calls.append(kw["start"])
        return real(*a, **kw)

    monkeypatch.setattr(pipeline_mod, "generate", counting)
    out = tmp_path / "imgs"
    res = sample_to_dir(pipe, out, 6, seed=1, batch_size=2, progress=False)
    assert calls == [0, 2, 4] and res["written"] == 6
    before = _files(out)
    (out / "000003.png").unlink()  # as if killed while writing batch 1
    (out / PACKED).unlink()
    calls.clear()
    res = sample_to_dir(pipe, out, 6, seed=1, batch_size=2, progress=False)
    assert calls == [2] and res["written"] == 1 and res["skipped_batches"] == 2
    assert _files(out) == before
    assert (out / PACKED).is_file()


def test_score_reads_a_sample_folder_or_its_npz_identically(tiny_pipe_dir, tmp_path, capsys):
    import json

    from edadm import cli, load

    out = tmp_path / "imgs"
    sample_to_dir(load(tiny_pipe_dir, device="cpu"), out, 6, seed=0, batch_size=4, progress=False)
    res = []
    for src in (out, out / PACKED):
        assert cli.main(["score", str(src), "--json", str(tmp_path / "s.json")]) == 0
        res.append(json.loads((tmp_path / "s.json").read_text()))
    assert res[0]["num"] == res[1]["num"] == 6
    assert res[0]["summary"]["fid_digits"]["mean"] == pytest.approx(res[1]["summary"]["fid_digits"]["mean"], rel=1e-6)
    assert cli.main(["score", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_collect_trajectories_for_quantize_like_one(tiny_pipe_dir, tmp_path):
    """torchrun quantize: both processes sample FP trajectories, rank 0 calibrates and saves;
    the saved integer model equals the single-process one (TDAC statistics summed across
    processes: same allocation)."""
    import json

    from safetensors.torch import load_file

    common = ["quantize", str(tiny_pipe_dir), "--method", "eda-dm", "--weight-bits", "4", "--act-bits", "8",
              "--num-samples", "8", "--num-trajectories", "8", "--batch-size", "4", "--iters", "2", "--no-progress",
              "--no-report", "--device", "cpu"]
    _run_one_and_two(common, "--out", tmp_path)
    metas = [json.loads((tmp_path / d / "unet" / "edadm_quant.json").read_text())["report"] for d in ("one", "two")]
    assert metas[0]["counts"] == metas[1]["counts"]
    a, b = (load_file(str(tmp_path / d / "unet" / "edadm_quant.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
