"""CLI smoke tests on tiny settings; every user error: one line, exit 2, nothing written."""
import json

import pytest

from edadm.cli import main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_quantize_sample_evaluate(tiny_pipe_dir, tmp_path, capsys):
    q = tmp_path / "q"
    code, out, err = _run(capsys, "quantize", tiny_pipe_dir, "--method", "naive", "--weight-bits", 8, "--act-bits", 8,
                          "--out", q, "--num-samples", 8, "--num-trajectories", 8, "--uniform-steps", 4,
                          "--no-progress", "--seed", 1)
    assert code == 0, err
    assert (q / "unet" / "edadm_quant.json").is_file()
    meta = json.loads((q / "unet" / "edadm_quant.json").read_text())
    assert meta["config"]["seed"] == 1 and meta["config"]["calib"]["num_samples"] == 8
    assert sum(meta["report"]["counts"]) == 8

    grid = tmp_path / "grid.png"
    code, out, err = _run(capsys, "sample", q, "--num", 4, "--out", grid, "--out-dir", tmp_path / "imgs", "--no-progress")
    assert code == 0, err
    assert grid.stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == [f"{i:06d}.png" for i in range(4)] + ["samples.npz"]
    assert (q / "report" / "index.html").is_file()  # quantize writes the report by default

    js = tmp_path / "ev.json"
    code, out, err = _run(capsys, "evaluate", q, "--num", 8, "--seeds", "0,1", "--compare", tiny_pipe_dir,
                          "--json", js, "--no-progress", "--bootstrap", 20)
    assert code == 0, err
    res = json.loads(js.read_text())
    assert [r["seed"] for r in res["per_seed"]] == [0, 1]
    assert res["summary"]["fid_digits"]["n"] == 2
    assert "psnr_vs_ref" in res["summary"] and "FID-digits" in out
    # the paired comparison: every difference vs the compared model with its bootstrap interval
    paired = res["per_seed"][0]["paired"]
    lo, hi = paired["delta"]["kid_x1e3"]["ci"]
    assert paired["reps"] == 20 and lo < hi and paired["delta"]["kid_x1e3"]["se"] > 0
    assert paired["pair"]["psnr"]["value"] == pytest.approx(res["per_seed"][0]["psnr_vs_ref"], abs=1e-6)
    assert "ΔKID x 10³" in out and "class flips" in out


def test_sampling_is_seeded_and_batch_independent(tiny_pipe_dir):
    import torch

    from edadm import load
    from edadm.sampling import generate

    pipe = load(tiny_pipe_dir, device="cpu")
    a = generate(pipe, 5, seed=3, batch_size=5, progress=False)
    b = generate(pipe, 5, seed=3, batch_size=2, progress=False)
    c = generate(pipe, 3, seed=3, batch_size=2, start=2, progress=False)
    # same images up to float rounding: oneDNN picks its conv kernel by batch size, and on an
    # AMX CPU the batch-5 and batch-2 kernels differ by up to 1.7e-5 (images in [0, 1]: a pixel step is 3.9e-3)
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(a[2:], c, atol=1e-4)
    assert not torch.allclose(a, generate(pipe, 5, seed=4, progress=False))


@pytest.mark.parametrize("argv,needle", [
    (["quantize", "no-such-model", "--out", "{tmp}/o"], "not found"),
    (["quantize", "{tmp}/missing-dir/", "--out", "{tmp}/o"], "not found"),
    (["quantize", "{pipe}", "--weight-bits", "9", "--out", "{tmp}/o"], "weight-bits must be in [2, 8]"),
    (["quantize", "{pipe}", "--act-bits", "1", "--out", "{tmp}/o"], "act-bits must be in [2, 8]"),
    (["quantize", "{pipe}", "--method", "magic", "--out", "{tmp}/o"], "unknown method 'magic'"),
    (["quantize", "{pipe}", "--preset", "mnist", "--out", "{tmp}/o"], "unknown preset 'mnist'"),
    (["quantize", "{pipe}", "--sampler", "euler", "--out", "{tmp}/o"], "unknown sampler 'euler'"),
    (["quantize", "{pipe}", "--num-samples", "0", "--out", "{tmp}/o"], "num-samples must be >= 1"),
    (["quantize", "{tmp}", "--out", "{tmp}/o"], "not a diffusers pipeline"),
    (["sample", "{pipe}", "--num", "-3"], "positive integer"),
    (["evaluate", "{pipe}", "--seeds", "a,b"], "seeds"),
    (["demo", "--settings", "w9a8", "--out", "{tmp}/o"], "bad setting"),
    (["zoo", "train", "nothing"], "unknown zoo model"),
])
def test_bad_input_one_line_exit_2(argv, needle, tiny_pipe_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, pipe=tiny_pipe_dir) for a in argv]
    code, out, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edadm: error:") and needle in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_failed_quantize_leaves_nothing(tiny_pipe_dir, tmp_path, capsys, monkeypatch):
    import edadm.api

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(edadm.api, "init_act_ranges", boom)
    with pytest.raises(RuntimeError):
        main(["quantize", str(tiny_pipe_dir), "--out", str(tmp_path / "o"), "--num-samples", "4",
              "--num-trajectories", "4", "--no-progress"])
    # no output directory; only the hidden checkpoint that --resume continues from
    assert [p.name for p in tmp_path.iterdir()] == [".o.ckpt"]
    assert (tmp_path / ".o.ckpt" / "calib.pt").is_file()


def test_config_file_roundtrip_and_override(tiny_pipe_dir, tmp_path, capsys):
    from edadm.config import QuantConfig

    cfg = QuantConfig(method="naive", weight_bits=6, act_bits=7)
    cfg.calib.num_samples = cfg.calib.num_trajectories = 8
    cfg.calib.uniform_steps = 2
    cfg.save(tmp_path / "c.json")
    assert QuantConfig.load(tmp_path / "c.json") == cfg
    code, out, err = _run(capsys, "quantize", tiny_pipe_dir, "--config", tmp_path / "c.json", "--act-bits", 8,
                          "--out", tmp_path / "q", "--no-progress")
    assert code == 0, err
    meta = json.loads((tmp_path / "q" / "unet" / "edadm_quant.json").read_text())
    assert meta["config"]["weight_bits"] == 6 and meta["config"]["act_bits"] == 8
    (tmp_path / "bad.json").write_text('{"weight_bits": 4, "colour": "red"}')
    code, out, err = _run(capsys, "quantize", tiny_pipe_dir, "--config", tmp_path / "bad.json", "--out", tmp_path / "q2")
    assert code == 2 and "unknown quantization config keys: 'colour'" in err


@pytest.mark.parametrize("method", ["eda-dm", "ptq4dm"])
def test_quantize_with_reconstruction_methods(method, tiny_pipe_dir, tmp_path, capsys):
    q = tmp_path / "q"
    code, out, err = _run(capsys, "quantize", tiny_pipe_dir, "--method", method, "--weight-bits", 4, "--act-bits", 8,
                          "--out", q, "--num-samples", 8, "--num-trajectories", 8, "--iters", 2,
                          "--act-iters", 3, "--recon-batch-size", 4, "--no-progress")
    assert code == 0, err
    meta = json.loads((q / "unet" / "edadm_quant.json").read_text())
    rep = meta["report"]
    assert sum(rep["counts"]) == 8 and len(rep["counts"]) == 4
    # joint (eda-dm): one pass of 2 iterations per unit; two-stage (ptq4dm): 2 per unit for the
    # rounding, then 3 for the step sizes (0 where a unit has no activation quantizer)
    stages = {u.get("stage", "joint") for u in rep["recon"]}
    assert stages == ({"joint"} if method == "eda-dm" else {"weights", "acts"})
    assert rep["recon"] and all(u["iters"] == {"joint": 2, "weights": 2}.get(u.get("stage", "joint"), 3)
                                or (u.get("stage") == "acts" and u["iters"] == 0) for u in rep["recon"])
    assert (q / "calibration" / "allocation.png").stat().st_size > 0
    counts = json.loads((q / "calibration" / "counts.json").read_text())
    assert counts["strategy"] == ("tdac" if method == "eda-dm" else "ptq4dm")
    if method == "eda-dm":
        ran = meta["resolved_config"]
        assert ran["recon"]["add_loss"] == 0.8 and ran["split_shortcut"] is True
        assert meta["config"]["recon"]["add_loss"] is None  # the recipe's, not written back as set
        assert counts["details"]["radius_quantile"] == 0.2 and len(counts["details"]["density"]) == 4
        assert any(e["spec"].get("split") for e in meta["layers"].values())
    code, out, err = _run(capsys, "sample", q, "--num", 2, "--out", tmp_path / "g.png", "--no-progress")
    assert code == 0, err


def test_preset_sets_sampler_and_settings_and_flags_override_it(tiny_pipe_dir, tmp_path, capsys):
    """--preset coco: PLMS sampler, 50 steps for every method; for EDA-DM recipes also lambda 5,
    N 256, 1000 reference iterations, lr 3e-2 at W4; flags override it; the saved model samples
    with the sampler and steps it was calibrated on."""
    from edadm.loading import load_pipeline
    from edadm.sampling import sampling_defaults

    q = tmp_path / "q"
    code, out, err = _run(capsys, "quantize", tiny_pipe_dir, "--preset", "coco", "--method", "naive",
                          "--weight-bits", 4, "--steps", 4, "--num-samples", 8, "--num-trajectories", 8,
                          "--out", q, "--no-progress", "--no-report")
    assert code == 0, err
    cfg = json.loads((q / "unet" / "edadm_quant.json").read_text())["resolved_config"]
    assert (cfg["preset"], cfg["sampler"], cfg["steps"], cfg["guidance_scale"]) == ("coco", "plms", 4, 7.5)
    assert (cfg["calib"]["num_samples"], cfg["calib"]["tdac_lambda"]) == (8, 1.2)  # naive: not an EDA-DM recipe
    pipe = load_pipeline(q, engine="fake")
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and pipe.scheduler.config.skip_prk_steps
    assert sampling_defaults(pipe).steps == 4

    q2 = tmp_path / "q2"
    code, out, err = _run(capsys, "quantize", tiny_pipe_dir, "--preset", "coco", "--method", "eda-dm", "--no-recon",
                          "--weight-bits", 4, "--steps", 4, "--num-samples", 8, "--num-trajectories", 8,
                          "--out", q2, "--no-progress", "--no-report")
    assert code == 0, err
    cfg = json.loads((q2 / "unet" / "edadm_quant.json").read_text())["resolved_config"]
    assert (cfg["calib"]["num_samples"], cfg["calib"]["tdac_lambda"]) == (8, 5.0)
    assert (cfg["recon"]["reference_iters"], cfg["recon"]["lr_weight"]) == (1000, 0.03)  # reference --lr_w, SD W4
    assert cfg["recon"]["iters"] == round(1000 * cfg["recon"]["iters_scale"])
    assert cfg["recon"]["add_loss"] == 0.8


def test_sample_labels_draw_the_asked_digit_and_bad_labels_fail_cleanly(tmp_path, capsys):
    import numpy as np
    import torch

    from edadm.eval.domains import classify

    code, _, err = _run(capsys, "sample", "digits-cond", "-n", "6", "--labels", "7", "--steps", "10",
                        "--out-dir", tmp_path / "d", "--no-progress")
    assert code == 0, err
    arr = np.load(tmp_path / "d" / "samples.npz")["images"]
    _, probs = classify(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0)
    assert int((probs.argmax(1) == 7).sum()) >= 5
    for argv, msg in [(["digits-cond", "--labels", "10"], "--labels must be in 0..9"),
                      (["digits-ddpm", "--labels", "3"], "--labels needs a class-conditional model"),
                      (["digits-cond", "--labels", "seven"], "labels must be comma-separated integers")]:
        code, _, err = _run(capsys, "sample", *argv, "-n", "2", "--out", tmp_path / "g.png")
        assert code == 2 and msg in err and "Traceback" not in err, err
        assert not (tmp_path / "g.png").exists()


def test_score_names_what_does_not_apply_to_the_images_before_computing(tmp_path, capsys):
    """48x48 RGB images: no domain metric applies (fid-digits: 1x32x32, fid-photos: 3x32x32), and
    the Inception metrics need weights on disk; by default score says so in one line and exits
    2; asked for explicitly, fid-digits is an error."""
    import numpy as np
    from PIL import Image

    from edadm.cli import main

    d = tmp_path / "rgb"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    assert main(["score", str(d)]) == 2
    err = capsys.readouterr().err
    assert "no metric applies here" in err and "not images of shape (3, 48, 48)" in err and "Traceback" not in err
    assert main(["score", str(d), "--metrics", "fid-digits"]) == 2
    assert "fid-digits applies to 1x32x32" in capsys.readouterr().err


def test_score_of_rgb_32x32_images_runs_fid_photos_by_default(tmp_path, capsys):
    """3x32x32 images are the photos domain: fid-photos runs without being asked, fid-digits
    is skipped silently (another domain metric ran), and asking for fid-digits is an error."""
    import json

    import numpy as np
    from PIL import Image

    from edadm.cli import main

    d = tmp_path / "rgb"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    assert main(["score", str(d), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr()
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["metrics"] == ["fid-photos"] and res["per_seed"][0]["fid_photos"] > 0
    assert "FID-photos" in out.out and "fid-digits" not in out.err
    assert main(["score", str(d), "--metrics", "fid-digits,fid-photos"]) == 2
    assert "apply to different images" in capsys.readouterr().err


def test_every_config_field_is_a_quantize_flag_with_its_checks(capsys):
    """The quantize flags are generated from the config's declarations (config.option): every
    field has its flag and help, and a value outside a declared range is a one-line error."""
    from dataclasses import fields

    from edadm.cli.quantize import config_fields, flag_of
    from edadm.config import CalibConfig, QuantConfig, ReconConfig

    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    help_text = capsys.readouterr().out
    declared = [(s, f) for s, cls in ((None, QuantConfig), ("calib", CalibConfig), ("recon", ReconConfig))
                for f in fields(cls) if f.metadata.get("cli")]
    assert [(s, f.name) for s, f in config_fields()] == [(s, f.name) for s, f in declared]
    for section, f in declared:
        assert flag_of(section, f) in help_text, f.name
        lo, hi = f.metadata["lo"], f.metadata["hi"]
        if f.metadata["kind"] in ("int", "float") and (lo is not None or hi is not None):
            bad = (lo - 1) if lo is not None else (hi + 1)
            rc = main(["quantize", "digits-ddpm", "--out", "/tmp/never-written", flag_of(section, f), str(bad)])
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1 and f.name.replace("_", "-") in err[0], (f.name, err)
