"""Class-conditional denoisers with classifier-free guidance: sampling, calibration inputs
(both halves), quantize -> save -> load -> sample."""
import json

import pytest
import torch

from edadm import CalibConfig, QuantConfig, load, quantize, save
from edadm.calib import assemble, collect_trajectories, uniform_counts
from edadm.errors import EdadmError
from edadm.sampling import conditioning, generate


@pytest.fixture(scope="module")
def cond_pipe_dir(tmp_path_factory):
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from edadm.zoo.models import digits_ddpm_unet_config, digits_scheduler_config

    torch.manual_seed(0)
    unet = UNet2DModel(**{**digits_ddpm_unet_config(), "num_class_embeds": 11}).eval()
    path = tmp_path_factory.mktemp("cond") / "pipe"
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler(**digits_scheduler_config())).save_pretrained(path)
    (path / "edadm_sampling.json").write_text(json.dumps({"steps": 3, "eta": 0.0, "guidance_scale": 2.0}))
    return path


def test_labels_follow_the_image_index_and_guidance_adds_the_null_class(cond_pipe_dir):
    pipe = load(cond_pipe_dir, device="cpu")
    cond, uncond = conditioning(pipe, 8, 4, guidance_scale=2.0)
    assert cond["class_labels"].tolist() == [8, 9, 0, 1] and uncond["class_labels"].tolist() == [10] * 4
    assert conditioning(pipe, 0, 2, guidance_scale=1.0)[1] is None
    with pytest.raises(EdadmError, match="0..9"):
        conditioning(pipe, 0, 2, labels=torch.tensor([3, 10]))
    a = generate(pipe, 6, seed=1, batch_size=4, progress=False)
    b = generate(pipe, 6, seed=1, batch_size=6, progress=False)
    assert torch.allclose(a, b, atol=1e-5)  # batch-independent with conditioning too
    plain = generate(pipe, 6, seed=1, progress=False, guidance_scale=1.0)
    assert not torch.allclose(a, plain, atol=1e-4)  # guidance is applied
    other = generate(pipe, 6, seed=1, progress=False, labels=torch.tensor([5] * 6))
    assert not torch.allclose(a, other, atol=1e-4)  # labels reach the denoiser


def test_calibration_batches_hold_both_guidance_halves(cond_pipe_dir):
    pipe = load(cond_pipe_dir, device="cpu")
    traj = collect_trajectories(pipe, 8, seed=0, batch_size=4, progress=False)
    assert traj.guidance_scale == 2.0 and traj.cond["class_labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    calib = assemble(traj, uniform_counts(traj.num_steps, 6))
    (x, t), kw = next(iter(calib.model_inputs(4, "cpu")))
    assert x.shape[0] == 8 and torch.equal(x[:4], x[4:]) and torch.equal(t[:4], t[4:])
    labels = kw["class_labels"]
    assert labels[:4].tolist() == [10] * 4  # unconditional half first, as in sampling
    assert torch.equal(labels[4:], calib.cond["class_labels"][:4])
    assert torch.equal(calib.cond["class_labels"], traj.cond["class_labels"][calib.trajectory])


@pytest.mark.slow
def test_quantize_reconstruct_save_load_sample_class_conditional(cond_pipe_dir, tmp_path):
    pipe = load(cond_pipe_dir, device="cpu")
    cfg = QuantConfig(method="eda-dm", weight_bits=4, act_bits=8,
                      calib=CalibConfig(num_samples=6, num_trajectories=6, batch_size=6),
                      recon={"iters": 2, "batch_size": 4})
    quantize(pipe, cfg, progress=False)
    save(pipe, tmp_path / "q")
    assert json.loads((tmp_path / "q" / "edadm_sampling.json").read_text())["guidance_scale"] == 2.0
    for engine in ("fake", "int"):
        q = load(tmp_path / "q", device="cpu", engine=engine)
        imgs = generate(q, 3, seed=0, progress=False)
        assert imgs.shape == (3, 1, 32, 32) and torch.isfinite(imgs).all()


def test_evaluate_reports_classifier_agreement_for_class_conditional_models(cond_pipe_dir):
    from edadm.eval.evaluate import evaluate_pipeline

    res, _ = evaluate_pipeline(load(cond_pipe_dir, device="cpu"), 10, [0], progress=False)
    agree = res["per_seed"][0]["class_agreement"]
    assert 0.0 <= agree <= 1.0 and "class_agreement" in res["summary"]


def test_class_agreement_is_high_for_real_digits_with_their_labels():
    from edadm.eval.domains import digits_metrics
    from edadm.zoo.data import digits_images

    x, y = digits_images()
    x, y = x[:300], y[:300]
    assert digits_metrics(x, labels=y)["class_agreement"] > 0.9
    assert digits_metrics(x, labels=(y + 1) % 10)["class_agreement"] < 0.1
