"""Resumable quantization and determinism: a run killed with SIGKILL and resumed ends with the
same tensors as an uninterrupted run; the same seed gives bitwise identical tensors."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from edadm.checkpoint import Checkpoint, default_checkpoint_dir
from edadm.errors import EdadmError

TENSORS = ("unet", "edadm_quant.safetensors")


def _cmd(pipe_dir, out, *extra):
    return [sys.executable, "-m", "edadm", "quantize", str(pipe_dir), "--method", "eda-dm", "--weight-bits", "4",
            "--act-bits", "8", "--out", str(out), "--num-samples", "8", "--num-trajectories", "8", "--iters", "15",
            "--recon-batch-size", "4", "--no-progress", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every run: same float sums


def _tensors(out):
    return load_file(str(out.joinpath(*TENSORS)))


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference_run(tiny_pipe_dir, tmp_path_factory):
    """One uninterrupted run: both tests below compare against it (one run fewer in the suite)."""
    ref = tmp_path_factory.mktemp("ckpt") / "ref"
    subprocess.run(_cmd(tiny_pipe_dir, ref), check=True, env=_env(), capture_output=True)
    return ref


def test_killed_run_resumes_to_identical_tensors(tiny_pipe_dir, reference_run, tmp_path):
    ref = reference_run
    out = tmp_path / "out"
    ck = default_checkpoint_dir(out)
    proc = subprocess.Popen(_cmd(tiny_pipe_dir, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # kill at a random point after at least two units were checkpointed
    deadline = time.time() + 300
    while not (ck / "units" / "0001.pt").is_file():
        assert proc.poll() is None, "run finished before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing half-written
    n_done = len(list((ck / "units").glob("*.pt")))
    assert n_done >= 2 and not list((ck / "units").glob(".*tmp*"))  # whole files only
    res = subprocess.run(_cmd(tiny_pipe_dir, out, "--resume"), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not ck.exists()  # removed after a successful save
    _assert_identical(_tensors(ref), _tensors(out))
    import json

    rep = json.loads(out.joinpath("unet", "edadm_quant.json").read_text())["report"]
    assert rep["resumed"] is True and len(rep["recon"]) == 23


def test_same_seed_is_bitwise_identical(tiny_pipe_dir, reference_run, tmp_path):
    again = tmp_path / "again"
    subprocess.run(_cmd(tiny_pipe_dir, again), check=True, env=_env(), capture_output=True)
    _assert_identical(_tensors(reference_run), _tensors(again))


def test_resume_with_other_config_is_refused(tmp_path):
    Checkpoint(tmp_path / "ck", {"config": {"weight_bits": 4}}, resume=False)
    with pytest.raises(EdadmError, match="different configuration"):
        Checkpoint(tmp_path / "ck", {"config": {"weight_bits": 8}}, resume=True)
    # without --resume an old checkpoint is discarded
    Checkpoint(tmp_path / "ck", {"config": {"weight_bits": 8}}, resume=False)
    assert Checkpoint(tmp_path / "ck", {"config": {"weight_bits": 8}}, resume=True)


def test_resume_accepts_checkpoint_from_before_a_new_default_field(tmp_path):
    # a checkpoint written by an edadm that had no recon.step_balance yet means the default
    from edadm.config import QuantConfig

    old = QuantConfig().to_dict()
    del old["recon"]["step_balance"]
    Checkpoint(tmp_path / "ck", {"model": "m", "config": old}, resume=False)
    assert Checkpoint(tmp_path / "ck", {"model": "m", "config": QuantConfig().to_dict()}, resume=True)
    balanced = QuantConfig().to_dict()
    balanced["recon"]["step_balance"] = "relative"
    with pytest.raises(EdadmError, match="different configuration"):
        Checkpoint(tmp_path / "ck", {"model": "m", "config": balanced}, resume=True)
