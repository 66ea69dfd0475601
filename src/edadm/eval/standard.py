"""Standard image metrics (FID, sFID, IS, CLIP score) behind the `metrics` extra.

`pip install "edadm[metrics]"` brings torch-fidelity (its TensorFlow-compatible InceptionV3,
the network of the published FIDs; it needs torchvision) and transformers (CLIP). Without
them every standard metric is skipped with one log line; the digits metrics always work.

Conventions, recorded with every result:
- FID: InceptionV3 pool features (2048-d) of uint8 images resized to 299x299 by the
  extractor's TF1-compatible bilinear resize, Fréchet distance to the reference statistics.
- sFID: as the ADM evaluator (Nash et al. 2021): the first 7 channels of the 17x17
  `mixed_6/conv` map, flattened (2023-d), Fréchet distance. The TF graph's `mixed_6` is
  torch-fidelity's `Mixed_6d`; `conv` is its first 1x1 branch convolution before batch norm.
- IS: exp(E KL(p(y|x) || p(y))) on the unbiased logits' softmax, 10 splits (the usual).
- CLIP score: 100 * max(cos(image, text), 0) averaged (torchmetrics' definition), with a
  transformers CLIPModel read from a local directory.

Weights: `--inception-weights PATH` (torch-fidelity's pt_inception-2015-12-05 file), or the
extractor's own download when online. Reference statistics: an .npz with mu / sigma (and
mu_s / sigma_s for sFID), or an image folder whose statistics are computed once and cached
beside it as .edadm_ref_stats.npz.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import EdadmError
from .metrics import frechet_distance, gaussian_stats, inception_score

log = logging.getLogger("edadm")

STANDARD = ("fid", "sfid", "is", "clip")
EXTRA_HINT = 'pip install "edadm[metrics]"'
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def missing_extra(metric: str) -> str | None:
    """None if `metric` can run here, else one line saying why not."""
    if metric in ("fid", "sfid", "is"):
        try:
            import torch_fidelity  # noqa: F401
        except Exception as exc:  # ImportError, or torchvision failing to import
            return f"{metric} skipped: needs torch-fidelity ({type(exc).__name__}: {str(exc).splitlines()[0][:80]}); {EXTRA_HINT}"
    if metric == "clip":
        try:
            import transformers  # noqa: F401
        except Exception as exc:
            return f"clip skipped: needs transformers ({type(exc).__name__}); {EXTRA_HINT}"
    return None


class InceptionFeatures:
    """Pool (2048), unbiased logits and the sFID spatial features, in one pass."""

    def __init__(self, weights: str | Path | None = None, device="cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        kw = {"feature_extractor_weights_path": str(weights)} if weights else {}
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], **kw)
        except Exception as exc:
            raise EdadmError(f"InceptionV3 weights unavailable ({type(exc).__name__}); pass --inception-weights PATH "
                             "(torch-fidelity's pt_inception-2015-12-05 file)") from exc
        self.net = self.net.to(device).eval()
        self.device = device
        self._spatial: list[torch.Tensor] = []
        self.net.Mixed_6d.branch1x1.conv.register_forward_hook(lambda m, a, o: self._spatial.append(o[:, :7]))

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor, batch_size: int = 100) -> dict[str, np.ndarray]:
        """images: [N, C, H, W] uint8 (grey images are repeated to RGB)."""
        pool, logits, spatial = [], [], []
        for i in range(0, len(images_uint8), batch_size):
            x = images_uint8[i:i + batch_size].to(self.device)
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            self._spatial.clear()
            p, lg = self.net(x)
            pool.append(p.cpu())
            logits.append(lg.cpu())
            spatial.append(self._spatial[0].flatten(1).float().cpu())
        return {"pool": torch.cat(pool).double().numpy(), "logits": torch.cat(logits).double().numpy(),
                "spatial": torch.cat(spatial).double().numpy()}


def to_uint8_nchw(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _load_folder(folder: Path, limit: int | None = None) -> torch.Tensor:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise EdadmError(f"reference folder {folder} has no PNG / JPEG images")
    arrs = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def reference_stats(reference: str | Path, features: InceptionFeatures) -> dict[str, np.ndarray]:
    """mu / sigma (pool) and mu_s / sigma_s (spatial) of the reference, cached for folders."""
    ref = Path(reference)
    if ref.suffix == ".npz":
        if not ref.is_file():
            raise EdadmError(f"reference statistics {ref} not found")
        with np.load(ref) as z:
            if "mu" not in z or "sigma" not in z:
                raise EdadmError(f"{ref} must hold arrays 'mu' and 'sigma' (and 'mu_s', 'sigma_s' for sFID)")
            return {k: z[k] for k in z.files}
    if not ref.is_dir():
        raise EdadmError(f"reference {ref} is neither an .npz of statistics nor an image folder")
    listing = "\n".join(sorted(f"{p.name}:{p.stat().st_size}" for p in ref.iterdir()
                               if p.suffix.lower() in IMAGE_SUFFIXES))  # the images, not the cache
    key = hashlib.sha1(listing.encode()).hexdigest()[:16]
    cache = ref / ".edadm_ref_stats.npz"
    if cache.is_file():
        with np.load(cache) as z:
            if str(z.get("key", "")) == key:
                return {k: z[k] for k in z.files if k != "key"}
    feats = features(_load_folder(ref))
    mu, sigma = gaussian_stats(feats["pool"])
    mu_s, sigma_s = gaussian_stats(feats["spatial"])
    stats = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}
    try:
        from ..utils import atomic_file

        with atomic_file(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, key=np.array(key), **stats)
    except (OSError, EdadmError):
        log.info("reference statistics not cached (%s is read-only)", ref)
    return stats


def inception_metrics(images: torch.Tensor, metrics: list[str], reference: str | Path | None,
                      features: InceptionFeatures) -> dict:
    """FID / sFID / IS of float images in [0, 1]."""
    feats = features(to_uint8_nchw(images))
    out: dict[str, float] = {}
    if "is" in metrics:
        logits = torch.from_numpy(feats["logits"])
        out["is"], out["is_split_std"] = inception_score(torch.softmax(logits, dim=1), splits=10)
    if {"fid", "sfid"} & set(metrics):
        if reference is None:
            raise EdadmError("FID / sFID need --reference (an image folder or an .npz of statistics)")
        ref = reference_stats(reference, features)
        if "fid" in metrics:
            mu, sigma = gaussian_stats(feats["pool"])
            out["fid"] = frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
        if "sfid" in metrics:
            if "mu_s" not in ref:
                raise EdadmError(f"{reference} has no spatial statistics (mu_s, sigma_s) for sFID")
            mu, sigma = gaussian_stats(feats["spatial"])
            out["sfid"] = frechet_distance(mu, sigma, ref["mu_s"], ref["sigma_s"])
    return out


@torch.no_grad()
def clip_score(images: torch.Tensor, prompts: list[str], model_dir: str | Path, device="cpu",
               batch_size: int = 64) -> float:
    """100 * mean(max(cos(image, text), 0)) with a local transformers CLIPModel."""
    from transformers import CLIPModel, CLIPProcessor

    if len(prompts) != len(images):
        raise EdadmError(f"CLIP score needs one prompt per image ({len(prompts)} prompts, {len(images)} images)")
    try:
        model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
        proc = CLIPProcessor.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise EdadmError(f"cannot load CLIP from {model_dir}: {str(exc).splitlines()[0][:120]}") from exc
    scores = []
    for i in range(0, len(images), batch_size):
        imgs = list(to_uint8_nchw(images[i:i + batch_size]).permute(0, 2, 3, 1).cpu().numpy())
        batch = proc(text=prompts[i:i + batch_size], images=imgs, return_tensors="pt", padding=True).to(device)
        img = torch.nn.functional.normalize(_embeds(model.get_image_features(pixel_values=batch["pixel_values"])), dim=-1)
        txt = torch.nn.functional.normalize(_embeds(model.get_text_features(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])), dim=-1)
        scores.append((100 * (img * txt).sum(-1)).clamp_min(0).cpu())
    return float(torch.cat(scores).mean())


def _embeds(out) -> torch.Tensor:
    """Projected embeddings: transformers 4 returns the tensor, 5 an output whose pooler_output it is."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
