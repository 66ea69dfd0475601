import json

import torch

from edadm import load
from edadm.pipeline import generate, num_classes, sampling_defaults
from edadm.zoo.train import train


def test_digits_cond_trainer_writes_a_guided_class_conditional_pipeline(tmp_path):
    out = tmp_path / "cond"
    info = train("digits-cond", out=out, device="cpu", steps=3, batch_size=4)
    assert info["label_dropout"] == 0.1 and info["steps"] == 3
    assert json.loads((out / "edadm_sampling.json").read_text()) == {"steps": 20, "eta": 0.0, "guidance_scale": 3.0}
    pipe = load(out, device="cpu")
    assert num_classes(pipe.unet) == 10 and sampling_defaults(pipe).guidance_scale == 3.0
    imgs = generate(pipe, 2, seed=0, steps=2, progress=False)
    assert imgs.shape == (2, 1, 32, 32) and torch.isfinite(imgs).all()
