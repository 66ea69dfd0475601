"""End to end on pipeline directories of every supported kind (DDPM, LDM with a VQ
autoencoder, Stable Diffusion with a CLIP text encoder, DiT), written with save_pretrained
from the reference configs scaled down, random weights: quantize (EDA-DM, W4A8), then sample
with the integer engine and the simulation."""
from __future__ import annotations

import json

import pytest
import torch

from edadm.cli import main
from edadm.deploy.layout import quant_subdir
from edadm.loading import load_pipeline
from edadm.model.families import call_denoiser, get_denoiser, num_classes
from edadm.model.pipelines import PIPELINE_NAMES, build_pipeline, write_pipeline
from edadm.quant.wrap import QuantMixin
from edadm.sampling import conditioning, generate

DENOISER_DIR = {"ddpm-cifar10": "unet", "ldm-celebahq-256": "unet", "sd-v1-4": "unet", "dit-xl-2-256": "transformer"}
PIPELINE_CLASS = {"ddpm-cifar10": "DDPMPipeline", "ldm-celebahq-256": "LDMPipeline",
                  "sd-v1-4": "StableDiffusionPipeline", "dit-xl-2-256": "DiTPipeline"}


@pytest.fixture(scope="module")
def small_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    return {n: write_pipeline(n, root / n, small=True) for n in PIPELINE_NAMES}


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_quantize_and_sample_every_pipeline_kind(name, small_dirs, tmp_path, capsys):
    src = small_dirs[name]
    q = tmp_path / "q"
    rc = main(["quantize", str(src), "--method", "eda-dm", "--weight-bits", "4", "--act-bits", "8",
               "--num-samples", "8", "--num-trajectories", "8", "--iters", "2", "--recon-batch-size", "4",
               "--out", str(q), "--no-progress", "--no-report"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert quant_subdir(q) == DENOISER_DIR[name]
    index = json.loads((q / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINE_CLASS[name]
    meta = json.loads((q / DENOISER_DIR[name] / "edadm_quant.json").read_text())
    assert meta["report"]["recon"], "no unit was reconstructed"

    fake = load_pipeline(q, engine="fake")
    den = get_denoiser(fake)
    # only the denoiser is quantized: autoencoder and text encoder stay full precision
    for comp in ("vae", "vqvae", "text_encoder"):
        if getattr(fake, comp, None) is not None:
            assert not any(isinstance(m, QuantMixin) for m in getattr(fake, comp).modules()), comp
    assert any(isinstance(m, QuantMixin) for m in den.modules())
    a = generate(fake, 2, seed=1, progress=False)
    b = generate(load_pipeline(q, engine="int"), 2, seed=1, progress=False)
    fp = generate(load_pipeline(src), 2, seed=1, progress=False)
    assert a.shape == b.shape == fp.shape and a.shape[1] == 3
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    # the integer engine runs the simulation's arithmetic: images agree closely
    assert (a - b).abs().mean() < 0.02, float((a - b).abs().mean())
    rc = main(["sample", str(q), "-n", "2", "--out", str(tmp_path / "grid.png"), "--no-progress"])
    assert rc == 0 and (tmp_path / "grid.png").is_file()


def test_latent_pipelines_calibrate_in_latent_space(small_dirs):
    """Trajectories hold latents (the denoiser's input shape), not decoded images."""
    from edadm.calib import collect_trajectories

    for name in ("ldm-celebahq-256", "sd-v1-4", "dit-xl-2-256"):
        pipe = load_pipeline(small_dirs[name])
        den = get_denoiser(pipe)
        traj = collect_trajectories(pipe, 2, seed=0, steps=2, batch_size=2, progress=False)
        assert traj.xs.shape[2:] == (den.config.in_channels, den.config.sample_size, den.config.sample_size), name
        img = generate(pipe, 1, seed=0, steps=2, progress=False)
        assert img.shape[-1] > den.config.sample_size  # decoded by the autoencoder


def test_text_conditioning_prompts_and_guidance_halves(small_dirs):
    pipe = load_pipeline(small_dirs["sd-v1-4"])
    cond, uncond = conditioning(pipe, 0, 3, guidance_scale=7.5)
    h = cond["encoder_hidden_states"]
    assert h.shape[:2] == (3, pipe.tokenizer.model_max_length) and uncond["encoder_hidden_states"].shape == h.shape
    assert not torch.allclose(h[0], h[1])  # different prompts
    assert torch.allclose(uncond["encoder_hidden_states"][0], uncond["encoder_hidden_states"][1])  # all ""
    # prompts stored with the pipeline are used, index mod len
    pipe.sampling = pipe.sampling.with_(prompts=["a handwritten seven", "a handwritten two"])
    c2, _ = conditioning(pipe, 0, 3)
    assert torch.allclose(c2["encoder_hidden_states"][0], c2["encoder_hidden_states"][2])
    assert not torch.allclose(c2["encoder_hidden_states"][0], c2["encoder_hidden_states"][1])
    # each distinct prompt is encoded once; cached rows equal a fresh encoding
    calls = []
    enc_forward = pipe.text_encoder.forward
    pipe.text_encoder.forward = lambda ids, *a, **k: (calls.append(ids.shape[0]), enc_forward(ids, *a, **k))[1]
    c3, u3 = conditioning(pipe, 3, 5, guidance_scale=7.5)
    assert calls == []  # both prompts and "" were encoded above
    pipe.sampling = pipe.sampling.with_(prompts=["a handwritten one"])
    c4, _ = conditioning(pipe, 0, 4)
    assert calls == [1]
    pipe.text_encoder.forward = enc_forward
    tok = pipe.tokenizer(["a handwritten one"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    with torch.no_grad():
        fresh = pipe.text_encoder(tok.input_ids)[0].float()
    assert torch.equal(c4["encoder_hidden_states"], fresh.expand(4, -1, -1))
    with pytest.raises(TypeError, match="pipeline"):
        conditioning(pipe.unet, 0, 1)
    # guidance changes the images; calibration keeps both halves
    g1 = generate(pipe, 1, seed=0, steps=2, guidance_scale=1.0, progress=False)
    g7 = generate(pipe, 1, seed=0, steps=2, guidance_scale=7.5, progress=False)
    assert not torch.allclose(g1, g7)
    from edadm.calib import assemble, collect_trajectories

    traj = collect_trajectories(pipe, 4, seed=0, steps=2, batch_size=4, progress=False, guidance_scale=7.5)
    counts = torch.zeros(traj.num_steps, dtype=torch.long)  # PLMS runs steps + 1 denoiser calls
    counts[:2] = 2
    calib = assemble(traj, counts)
    (args, kwargs), = list(calib.model_inputs(4, "cpu"))
    assert args[0].shape[0] == 8 and kwargs["encoder_hidden_states"].shape[0] == 8  # [uncond; cond]


def test_dit_call_convention_and_class_conditioning():
    pipe = build_pipeline("dit-xl-2-256", small=True)
    den = get_denoiser(pipe)
    assert num_classes(den) == 1000 and den.config.out_channels == 2 * den.config.in_channels
    x = torch.randn(2, den.config.in_channels, 8, 8)
    cond, uncond = conditioning(pipe, 998, 2, guidance_scale=4.0)
    assert cond["class_labels"].tolist() == [998, 999] and uncond["class_labels"].tolist() == [1000, 1000]
    with torch.no_grad():
        eps = call_denoiser(den, x, torch.tensor(10), **cond)
        full = den(x, timestep=torch.tensor([10, 10]), **cond).sample
    assert eps.shape == x.shape and torch.equal(eps, full[:, :x.shape[1]])  # learned sigma dropped


def test_prompts_file_drives_sampling_and_is_kept_by_quantize(small_dirs, tmp_path, capsys):
    from edadm.sampling import sampling_defaults

    pf = tmp_path / "prompts.txt"
    pf.write_text("a handwritten seven\n\na handwritten two\n")
    q = tmp_path / "q"
    rc = main(["quantize", str(small_dirs["sd-v1-4"]), "--method", "naive", "--num-samples", "8",
               "--num-trajectories", "8", "--prompts", str(pf), "--out", str(q), "--no-progress", "--no-report"])
    assert rc == 0, capsys.readouterr().err
    assert sampling_defaults(load_pipeline(q)).prompts == ["a handwritten seven", "a handwritten two"]
    for argv, needle in (([str(small_dirs["ddpm-cifar10"])], "needs a text-to-image pipeline"),
                         ([str(small_dirs["sd-v1-4"])], "has no prompts")):
        if needle == "has no prompts":
            pf.write_text("\n  \n")
        rc = main(["sample", *argv, "-n", "1", "--prompts", str(pf), "--out", str(tmp_path / "g.png"), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], err


def test_pipeline_directories_without_edadm_settings_sample_with_their_pipelines_defaults(small_dirs, tmp_path):
    import shutil

    from edadm.sampling import sampling_defaults

    for name, guidance in (("sd-v1-4", 7.5), ("dit-xl-2-256", 4.0), ("ddpm-cifar10", 1.0)):
        d = tmp_path / name
        shutil.copytree(small_dirs[name], d)
        (d / "edadm_sampling.json").unlink()
        assert sampling_defaults(load_pipeline(d)).guidance_scale == guidance, name


def test_quantized_text_to_image_dir_keeps_its_pipelines_guidance_with_or_without_prompts(small_dirs, tmp_path, capsys):
    from edadm.cli import with_prompts as _with_prompts
    from edadm.sampling import sampling_defaults

    q = tmp_path / "q"
    rc = main(["quantize", str(small_dirs["sd-v1-4"]), "--method", "naive", "--num-samples", "4",
               "--num-trajectories", "4", "--out", str(q), "--no-progress", "--no-report"])
    assert rc == 0, capsys.readouterr().err
    (q / "edadm_sampling.json").unlink()  # e.g. a directory from another tool
    pf = tmp_path / "p.txt"
    pf.write_text("a handwritten seven\n")
    for engine in ("int", "fake"):
        pipe = load_pipeline(q, engine=engine)
        assert sampling_defaults(pipe).guidance_scale == 7.5
        d = sampling_defaults(_with_prompts(pipe, pf))
        assert d.guidance_scale == 7.5 and d.prompts == ["a handwritten seven"]


def test_evaluate_clip_score_of_a_text_to_image_pipeline(small_dirs, tmp_path, capsys):
    from conftest import tiny_clip

    pytest.importorskip("transformers")
    tiny_clip(tmp_path / "clip")
    out = tmp_path / "m.json"
    rc = main(["evaluate", str(small_dirs["sd-v1-4"]), "--metrics", "clip", "--num", "2", "--seeds", "0",
               "--clip-model", str(tmp_path / "clip"), "--json", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert 0 <= res["summary"]["clip"]["mean"] <= 100 and "clip" in res["conventions"]
    # without --clip-model, or on a pipeline without prompts: one skip line, then the one-line error
    for argv, needle in (([str(small_dirs["sd-v1-4"])], "needs --clip-model"),
                         ([str(small_dirs["ddpm-cifar10"]), "--clip-model", str(tmp_path / "clip")],
                          "needs a text-to-image pipeline")):
        rc = main(["evaluate", *argv, "--metrics", "clip", "--num", "2", "--seeds", "0", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err


def test_evaluate_by_default_runs_what_applies_to_a_three_channel_model(small_dirs, tmp_path, capsys):
    """A new user's first evaluate on a 3-channel pipeline: no --metrics; fid-digits does not
    apply and is named as skipped, PSNR vs --compare is given."""
    import json

    src = small_dirs["ddpm-cifar10"]
    q = tmp_path / "q"
    assert main(["quantize", str(src), "--method", "naive", "--num-samples", "4", "--num-trajectories", "4",
                 "--steps", "2", "--out", str(q), "--no-progress", "--no-report"]) == 0
    out = tmp_path / "m.json"
    rc = main(["evaluate", str(q), "--compare", str(src), "--num", "2", "--seeds", "0", "--steps", "2",
               "--json", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert "psnr_vs_ref" in res["summary"] and "fid_digits" not in res["summary"]
    assert "1x32x32" in res["skipped"]["fid-digits"] and "fid-digits" in err
    # without --compare nothing applies here: one line, exit 2
    assert main(["evaluate", str(q), "--num", "2", "--seeds", "0", "--steps", "2", "--no-progress"]) == 2
    assert "no metric applies" in capsys.readouterr().err
