import json

import torch

from edadm import load
from edadm.model.families import num_classes
from edadm.sampling import generate, sampling_defaults
from edadm.zoo.train import train


def test_digits_cond_trainer_writes_a_guided_class_conditional_pipeline(tmp_path):
    out = tmp_path / "cond"
    info = train("digits-cond", out=out, device="cpu", steps=3, batch_size=4)
    assert info["label_dropout"] == 0.1 and info["steps"] == 3
    assert json.loads((out / "edadm_sampling.json").read_text()) == {"steps": 20, "eta": 0.0, "guidance_scale": 1.5}
    pipe = load(out, device="cpu")
    assert num_classes(pipe.unet) == 10 and sampling_defaults(pipe).guidance_scale == 1.5
    assert pipe.scheduler.config.clip_sample is False  # clipping x0 under guidance greys the samples
    imgs = generate(pipe, 2, seed=0, steps=2, progress=False)
    assert imgs.shape == (2, 1, 32, 32) and torch.isfinite(imgs).all()


def test_digits_ldm_trainer_writes_a_latent_pipeline(tmp_path):
    out = tmp_path / "ldm"
    info = train("digits-ldm", out=out, device="cpu", steps=3, batch_size=4, ae_steps=3)
    assert info["scaling_factor"] > 0 and info["steps"] == 3
    pipe = load(out, device="cpu")
    assert type(pipe.pipe).__name__ == "LDMPipeline" and type(pipe.vqvae).__name__ == "VQModel"
    assert pipe.vqvae.config.scaling_factor == info["scaling_factor"]
    assert sampling_defaults(pipe).steps == 200 and sampling_defaults(pipe).eta == 1.0
    imgs = generate(pipe, 2, seed=0, steps=2, progress=False)
    assert imgs.shape == (2, 1, 32, 32) and torch.isfinite(imgs).all()


def test_digits_t2i_trainer_writes_a_text_to_image_pipeline(tmp_path):
    from edadm.sampling import conditioning

    out = tmp_path / "t2i"
    info = train("digits-t2i", out=out, device="cpu", steps=3, batch_size=4, ae_steps=3)
    assert info["label_dropout"] == 0.1
    pipe = load(out, device="cpu")
    assert type(pipe.pipe).__name__ == "StableDiffusionPipeline" and type(pipe.scheduler).__name__ == "PNDMScheduler"
    d = sampling_defaults(pipe)
    assert (d.steps, d.guidance_scale, d.prompts[7]) == (50, 1.5, "a handwritten seven")
    cond, uncond = conditioning(pipe, 0, 2, guidance_scale=7.5)
    assert cond["encoder_hidden_states"].shape == (2, 24, 64) and uncond is not None
    imgs = generate(pipe, 2, seed=0, steps=2, progress=False)
    assert imgs.shape == (2, 1, 32, 32) and torch.isfinite(imgs).all()


def test_prompt_digit_and_requested_labels_of_text_pipelines(tmp_path):
    from edadm.eval.evaluate import requested_labels
    from edadm.model.pipelines import build_pipeline
    from edadm.zoo.models import prompt_digit

    assert [prompt_digit(p) for p in ("a handwritten seven", "handwritten number 7", "The digit Two", "a cat",
                                      "a one and a two")] == [7, 7, 2, None, None]
    from edadm import Pipeline, SamplingSettings

    pipe = Pipeline(build_pipeline("sd-v1-4", small=True), SamplingSettings(steps=2, prompts=["a handwritten three",
                                                                                            "the digit 5"]))
    assert requested_labels(pipe, 5).tolist() == [3, 5, 3, 5, 3]
    pipe.sampling = SamplingSettings(steps=2, prompts=["a cat"])
    assert requested_labels(pipe, 2) is None
