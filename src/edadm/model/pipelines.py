"""Whole diffusers pipelines around the reference denoisers, with random weights: the
denoiser, its autoencoder / text encoder / tokenizer and scheduler, as `save_pretrained`
would write them for google/ddpm-cifar10-32, CompVis/ldm-celebahq-256, Stable Diffusion
v1.4 and DiT-XL/2-256. Nothing is downloaded: configs are written here (values of the
published config.json files), and the CLIP tokenizer gets a byte-level vocabulary without
merges (real token ids need the real files; random weights do not care).

`small=True` scales every component down (channels, depth, resolution) keeping its class
and structure: what the tests quantize and sample end to end in seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .reference_configs import REFERENCE_CONFIGS

PIPELINE_NAMES = tuple(REFERENCE_CONFIGS)

# CompVis/ldm-celebahq-256 vqvae
VQ_CELEBAHQ_256 = {"in_channels": 3, "out_channels": 3, "latent_channels": 3, "vq_embed_dim": 3,
                   "num_vq_embeddings": 8192, "block_out_channels": [128, 256, 512], "layers_per_block": 2,
                   "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
                   "norm_num_groups": 32, "sample_size": 256, "act_fn": "silu"}
# CompVis/stable-diffusion-v1-4 vae (stabilityai/sd-vae-ft-ema for DiT: the same architecture)
KL_F8 = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
         "layers_per_block": 2, "down_block_types": ["DownEncoderBlock2D"] * 4,
         "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 32, "sample_size": 512,
         "scaling_factor": 0.18215, "act_fn": "silu"}
# openai/clip-vit-large-patch14 text tower (Stable Diffusion v1.x text encoder)
CLIP_L14_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                 "projection_dim": 768}
SD_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}
LINEAR_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
LDM_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195, "beta_schedule": "scaled_linear",
                 "clip_sample": False}

# sampler settings written beside each pipeline (edadm_sampling.json): the paper's
SAMPLING = {"ddpm-cifar10": {"steps": 100, "eta": 0.0}, "ldm-celebahq-256": {"steps": 200, "eta": 0.0},
            "sd-v1-4": {"steps": 50, "eta": 0.0, "guidance_scale": 7.5},
            "dit-xl-2-256": {"steps": 20, "eta": 0.0, "guidance_scale": 4.0}}


def denoiser_config(name: str, small: bool = False) -> dict:
    """The reference denoiser config (with `_class_name`), optionally scaled down."""
    cfg = dict(REFERENCE_CONFIGS[name])
    if not small:
        return cfg
    if name == "dit-xl-2-256":
        cfg.update(num_layers=2, num_attention_heads=2, attention_head_dim=16, sample_size=8)
    else:
        n = len(cfg["block_out_channels"])
        cfg.update(block_out_channels=[32] * n, norm_num_groups=8, layers_per_block=1, sample_size=8)
        if "cross_attention_dim" in cfg:
            cfg.update(cross_attention_dim=16, attention_head_dim=2)
        else:
            cfg.update(attention_head_dim=8)
    return cfg


def _autoencoder_config(base: dict, small: bool, latent_size: int) -> dict:
    cfg = dict(base)
    if small:
        n = len(cfg["block_out_channels"])
        cfg.update(block_out_channels=[8] * n, layers_per_block=1, norm_num_groups=4)
    cfg["sample_size"] = latent_size * 2 ** (len(cfg["block_out_channels"]) - 1)
    return cfg


def byte_level_clip_tokenizer(out: Path, max_length: int = 77):
    """A CLIPTokenizer whose vocabulary is the 256 byte symbols (plain and word-final) and the
    two special tokens, with no merges: every character is one token."""
    from transformers import CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    # GPT-2 / CLIP byte-level BPE symbols: printable bytes stand for themselves, the others are
    # shifted to code points from 256 up (the tokenizer maps text bytes through the same table)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=max_length,
                         pad_token="<|endoftext|>")


def build_pipeline(name: str, small: bool = False, seed: int = 0):
    """The pipeline of reference model `name` with random weights (seeded)."""
    import diffusers

    if name not in REFERENCE_CONFIGS:
        raise ValueError(f"unknown reference pipeline {name!r}; choose from {', '.join(PIPELINE_NAMES)}")
    torch.manual_seed(seed)
    cfg = denoiser_config(name, small)
    cls = getattr(diffusers, cfg.pop("_class_name"))
    den = cls.from_config(cfg).eval()
    size = cfg["sample_size"]
    if name == "ddpm-cifar10":
        return diffusers.DDPMPipeline(unet=den, scheduler=diffusers.DDPMScheduler(**LINEAR_SCHEDULER))
    if name == "ldm-celebahq-256":
        vq = diffusers.VQModel(**_autoencoder_config(VQ_CELEBAHQ_256, small, size)).eval()
        return diffusers.LDMPipeline(vqvae=vq, unet=den, scheduler=diffusers.DDIMScheduler(**LDM_SCHEDULER))
    vae = diffusers.AutoencoderKL(**_autoencoder_config(KL_F8, small, size)).eval()
    if name == "dit-xl-2-256":
        return diffusers.DiTPipeline(transformer=den, vae=vae, scheduler=diffusers.DDIMScheduler(**LINEAR_SCHEDULER))
    from transformers import CLIPTextConfig, CLIPTextModel

    text_cfg = dict(CLIP_L14_TEXT)
    if small:
        text_cfg.update(vocab_size=1000, hidden_size=cfg["cross_attention_dim"], intermediate_size=32,
                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16, projection_dim=16)
    import tempfile

    # the tokenizer is built from vocabulary files; it keeps them in memory, so the files
    # can go (save_pretrained writes the pipeline's own copy)
    with tempfile.TemporaryDirectory(prefix="edadm-tok-") as d:
        tok = byte_level_clip_tokenizer(Path(d), max_length=text_cfg["max_position_embeddings"])
    text_cfg.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    enc = CLIPTextModel(CLIPTextConfig(**text_cfg)).eval()
    return diffusers.StableDiffusionPipeline(vae=vae, text_encoder=enc, tokenizer=tok, unet=den,
                                             scheduler=diffusers.PNDMScheduler(**SD_SCHEDULER), safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)


def write_pipeline(name: str, out: str | Path, small: bool = False, seed: int = 0) -> Path:
    """`build_pipeline(...).save_pretrained(out)` plus the paper's sampler settings
    (edadm_sampling.json; small pipelines sample 4 steps)."""
    out = Path(out)
    pipe = build_pipeline(name, small=small, seed=seed)
    pipe.save_pretrained(out, safe_serialization=True)
    sampling = dict(SAMPLING[name])
    if small:
        sampling["steps"] = 4
    (out / "edadm_sampling.json").write_text(json.dumps(sampling))
    return out
