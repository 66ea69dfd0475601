"""The EDA-DM paper's per-dataset settings (`--preset`): sampler settings for every method,
and the EDA-DM scripts' calibration and reconstruction values for the recipes that declare
``per_dataset = true``."""
from __future__ import annotations

from ..errors import EdadmError
from . import get

# The paper's per-dataset settings (METHOD.md "Reference settings", reconstruction details).
# Every value is the base of the config: a config file and flags override it. Deliberate
# differences from the reference code, documented in the README:
# - tdac_radius stays "auto": the reference radii (3.0 pixel CIFAR-10 / ImageNet LDM, 0.3
#   LSUN / SD) depend on each model's feature scale; pass --tdac-radius to use them.
# - DDIM "quadratic skip" has no diffusers equivalent; diffusers' spacing is used.
# The sampler settings apply to every method (they are the evaluation's). The calibration
# and reconstruction values are the EDA-DM scripts' per dataset (scripts/for_*.sh: --lr_w per
# dataset and per W4 / W8, iterations, N, lambda, add_loss), so they apply only to recipes
# that declare `per_dataset = true` (eda-dm and its ablations); Q-Diffusion's recipe keeps
# its own. fbr_add_loss applies only where the recipe has FBR (add_loss > 0).
DATASET_PRESETS: dict[str, dict] = {
    "cifar10": {"about": "DDIM CIFAR-10 32x32, pixel space (google/ddpm-cifar10-32)", "sampler": "ddim",
                "steps": 100, "eta": 0.0, "guidance_scale": 1.0, "num_samples": 1024, "tdac_lambda": 1.2,
                "reference_radius": 3.0, "fbr_add_loss": 0.8, "iters": 5000, "lr_weight": {4: 0.5, 8: 0.05}},
    "lsun-bedroom": {"about": "LDM-4 LSUN-Bedroom 256x256", "sampler": "ddim", "steps": 200, "eta": 1.0,
                     "guidance_scale": 1.0, "num_samples": 1024, "tdac_lambda": 1.0, "reference_radius": 0.3,
                     "fbr_add_loss": 1.0, "iters": 5000, "lr_weight": {4: 1e-2, 8: 5e-4}},
    "lsun-church": {"about": "LDM-8 LSUN-Church 256x256", "sampler": "ddim", "steps": 500, "eta": 0.0,
                    "guidance_scale": 1.0, "num_samples": 1024, "tdac_lambda": 1.0, "reference_radius": 0.3,
                    "fbr_add_loss": 1.0, "iters": 5000, "lr_weight": {4: 5e-2, 8: 5e-2}},
    "imagenet": {"about": "LDM-4 ImageNet 256x256, class-conditional, classifier-free guidance",
                 "sampler": "ddim", "steps": 20, "eta": 0.0, "guidance_scale": 3.0, "num_samples": 1024,
                 "tdac_lambda": 1.2, "reference_radius": 3.0, "fbr_add_loss": 0.8, "iters": 1000,
                 "lr_weight": {4: 0.5, 8: 1e-4}},
    "coco": {"about": "Stable Diffusion v1.4 512x512 on MS-COCO prompts", "sampler": "plms", "steps": 50,
             "eta": 0.0, "guidance_scale": 7.5, "num_samples": 256, "tdac_lambda": 5.0, "reference_radius": 0.3,
             "fbr_add_loss": 0.8, "iters": 1000, "lr_weight": {4: 3e-2, 8: 5e-4}},
}
PRESETS = tuple(DATASET_PRESETS)


def preset_config(name: str, method: str = "eda-dm", weight_bits: int = 8) -> dict:
    """The config dict (QuantConfig.from_dict form) of dataset preset `name` for a method and
    weight bit width; merge a config file and flags over it."""
    if name not in DATASET_PRESETS:
        raise EdadmError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    recipe = get(method)
    p = DATASET_PRESETS[name]
    out = {"preset": name, "sampler": p["sampler"], "steps": p["steps"], "eta": p["eta"],
           "guidance_scale": p["guidance_scale"]}
    if recipe.per_dataset:
        lrs = p["lr_weight"]
        out["calib"] = {"num_samples": p["num_samples"], "num_trajectories": p["num_samples"],
                        "tdac_lambda": p["tdac_lambda"]}
        recon = {"reference_iters": p["iters"], "lr_weight": lrs[4] if weight_bits <= 4 else lrs[8]}
        if (recipe.recon.get("add_loss") or 0) > 0:
            recon["add_loss"] = p["fbr_add_loss"]
        out["recon"] = recon
    return out
