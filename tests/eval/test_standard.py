"""Standard metrics: skipped with one line without the extra; arithmetic with a stand-in
feature extractor; agreement with torch-fidelity where it is installed."""
import importlib.util

import numpy as np
import pytest
import torch

from edadm import cli
from edadm.errors import EdadmError
from edadm.eval.metrics import frechet_distance, gaussian_stats
from edadm.eval.standard import inception_metrics, missing_extra, reference_stats
from conftest import tiny_clip as _tiny_clip


def _has_fidelity() -> bool:
    return missing_extra("fid") is None


class FakeFeatures:
    """Deterministic features of uint8 images: pool = flattened pixels' first 8 values + noise-free
    transforms, spatial = 4 pixel sums, logits = 10 linear functions. Counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images_uint8, batch_size=100):
        self.calls += 1
        x = images_uint8.double().flatten(1) / 255.0
        g = torch.Generator().manual_seed(0)
        w = torch.randn(x.shape[1], 10, generator=g, dtype=torch.float64)
        return {"pool": x[:, :8].numpy(), "spatial": x.reshape(len(x), 4, -1).sum(-1).numpy(),
                "logits": (x @ w).numpy()}


def _imgs(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 8, 8, generator=g) * 0.5 + shift).clamp(0, 1)


def test_inception_metrics_arithmetic_and_cached_folder_reference(tmp_path):
    from PIL import Image

    ref_imgs = _imgs(40, 1)
    folder = tmp_path / "ref"
    folder.mkdir()
    for i, im in enumerate((ref_imgs * 255).round().to(torch.uint8)):
        Image.fromarray(im[0].numpy()).convert("RGB").save(folder / f"{i:03d}.png")
    feats = FakeFeatures()
    gen = _imgs(30, 2, shift=0.2)
    out = inception_metrics(gen, ["fid", "sfid", "is"], folder, feats)
    assert feats.calls == 2  # generated images + the folder (computed once) ...
    again = inception_metrics(gen, ["fid"], folder, feats)
    assert feats.calls == 3 and (folder / ".edadm_ref_stats.npz").is_file()  # ... then read from the cache
    assert again["fid"] == pytest.approx(out["fid"])
    # FID is the Fréchet distance of the two feature sets' Gaussians (grey images become RGB: same pixel values)
    ref_u8 = (ref_imgs * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    mu_r, s_r = gaussian_stats(FakeFeatures()(ref_u8)["pool"])
    mu_g, s_g = gaussian_stats(FakeFeatures()((gen * 255).round().to(torch.uint8))["pool"])
    assert out["fid"] == pytest.approx(frechet_distance(mu_g, s_g, mu_r, s_r), rel=1e-6)
    assert out["fid"] > 0.01 and out["sfid"] > 0 and 1.0 <= out["is"] <= 10.0
    stats = reference_stats(folder, feats)
    np.savez(tmp_path / "ref.npz", **stats)
    assert inception_metrics(gen, ["fid"], tmp_path / "ref.npz", feats)["fid"] == pytest.approx(out["fid"])


def test_reference_errors(tmp_path):
    feats = FakeFeatures()
    with pytest.raises(EdadmError, match="not found"):
        reference_stats(tmp_path / "missing.npz", feats)
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(EdadmError, match="'mu' and 'sigma'"):
        reference_stats(tmp_path / "bad.npz", feats)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdadmError, match="no PNG"):
        reference_stats(tmp_path / "empty", feats)
    with pytest.raises(EdadmError, match="--reference"):
        inception_metrics(_imgs(4, 0), ["fid"], None, feats)


@pytest.mark.skipif(_has_fidelity(), reason="torch-fidelity is installed: nothing is skipped")
def test_without_the_extra_standard_metrics_are_skipped_with_one_line(tiny_quant_dir, tmp_path, capsys):
    rc = cli.main(["evaluate", str(tiny_quant_dir), "--num", "4", "--seeds", "0", "--metrics", "fid-digits,fid,is",
                   "--no-progress", "--json", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    skip_lines = [ln for ln in err.splitlines() if "skipped" in ln]
    assert rc == 0 and len(skip_lines) == 2 and all('pip install "edadm[metrics]"' in ln for ln in skip_lines)
    import json

    res = json.loads((tmp_path / "m.json").read_text())
    assert "fid_digits" in res["summary"] and "fid" not in res["summary"] and set(res["skipped"]) == {"fid", "is"}
    assert cli.main(["evaluate", str(tiny_quant_dir), "--num", "4", "--metrics", "fid", "--no-progress"]) == 2
    assert "no requested metric can run here" in capsys.readouterr().err


def test_unknown_metric_is_a_usage_error(tiny_quant_dir, capsys):
    assert cli.main(["evaluate", str(tiny_quant_dir), "--metrics", "fid,lpips"]) == 2
    assert "unknown metric(s) 'lpips'" in capsys.readouterr().err


@pytest.mark.skipif(not _has_fidelity() or importlib.util.find_spec("torch_fidelity") is None,
                    reason="needs the metrics extra (torch-fidelity with a working torchvision)")
def test_fid_agrees_with_torch_fidelity(tmp_path):  # pragma: no cover - runs where the extra is installed
    import torch_fidelity
    from PIL import Image

    from edadm.eval.standard import InceptionFeatures

    dirs = {}
    for name, seed, shift in (("a", 0, 0.0), ("b", 1, 0.3)):
        d = tmp_path / name
        d.mkdir()
        for i, im in enumerate((_imgs(64, seed, shift).repeat(1, 3, 4, 4) * 255).round().to(torch.uint8)):
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(d / f"{i:03d}.png")
        dirs[name] = d
    try:
        feats = InceptionFeatures()
    except EdadmError as exc:
        pytest.skip(str(exc))
    from edadm.eval.standard import _load_folder

    ours = inception_metrics(_load_folder(dirs["b"]).float() / 255.0, ["fid"], dirs["a"], feats)["fid"]
    theirs = torch_fidelity.calculate_metrics(input1=str(dirs["b"]), input2=str(dirs["a"]), fid=True,
                                              verbose=False)["frechet_inception_distance"]
    assert ours == pytest.approx(theirs, rel=1e-3)


@pytest.mark.skipif(missing_extra("clip") is not None, reason="needs transformers")
def test_clip_score_is_100_times_the_clamped_cosine_and_batch_independent(tmp_path):
    from edadm.eval.standard import _embeds, clip_score

    model, proc = _tiny_clip(tmp_path / "clip")
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(12, 1, 32, 32, generator=g)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
    prompts = [f"a handwritten {w}" for w in words]
    score = clip_score(imgs, prompts, tmp_path / "clip", batch_size=5)
    assert score == pytest.approx(clip_score(imgs, prompts, tmp_path / "clip", batch_size=64), rel=1e-5)
    with torch.no_grad():  # the definition, computed directly
        u8 = list((imgs.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        b = proc(text=prompts, images=u8, return_tensors="pt", padding=True)
        i = torch.nn.functional.normalize(_embeds(model.get_image_features(pixel_values=b["pixel_values"])), dim=-1)
        t = torch.nn.functional.normalize(_embeds(model.get_text_features(input_ids=b["input_ids"],
                                                                          attention_mask=b["attention_mask"])), dim=-1)
        cos = (i * t).sum(-1)
    assert score == pytest.approx(float((100 * cos).clamp_min(0).mean()), rel=1e-4, abs=1e-6)
    with torch.no_grad():
        model.text_projection.weight.neg_()  # flips every cosine's sign
    model.save_pretrained(tmp_path / "flipped")
    proc.save_pretrained(tmp_path / "flipped")
    flipped = clip_score(imgs, prompts, tmp_path / "flipped", batch_size=5)
    # max(c, 0) + max(-c, 0) = |c|: the clamp keeps exactly the positive part, whatever the signs
    assert score + flipped == pytest.approx(float(100 * cos.abs().mean()), rel=1e-4) and score + flipped > 1.0
    with pytest.raises(EdadmError, match="one prompt per image"):
        clip_score(imgs, prompts[:3], tmp_path / "clip")
