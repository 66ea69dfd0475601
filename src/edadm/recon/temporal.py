"""TFMQ-DM's temporal information block, reconstructed on its own (Huang et al., CVPR 2024).

The time embedding MLP and every ResBlock's ``time_emb_proj`` turn the timestep (plus the
class embedding, where the model has one) into the per-block "temporal features". They do not
depend on the image, so for a sampler they form a finite set: one row per (sampler timestep,
class). TFMQ-DM leaves these layers out of block reconstruction and reconstructs them once, as
one block, with the MSE of every temporal feature over the whole set as the loss (its TIAR);
the blocks that follow then see the reconstructed features.

What is kept here and what is not: the block, its inputs (every sampler timestep x every class
index) and its loss are TFMQ-DM's; the learned parameters and their learning rates are the
run's recipe (AdaRound where the recipe learns rounding at the layers' bits, the activation
step sizes), the iterations the recipe's per unit. TFMQ-DM's code also recalibrates the
activation ranges of this block per sampling step (FSC: a table of scales swapped each step);
that is not done here: every runtime edadm deploys to keeps one static scale per quantizer.

Supported denoisers: diffusers UNet2DModel and UNet2DConditionModel whose temporal path is
``time_proj -> time_embedding (+ nn.Embedding class embedding) -> each ResBlock's
nonlinearity -> time_emb_proj`` (DDPM, LDM, class-conditional and Stable Diffusion 1.x / 2.x
UNets). Others (DiT's adaLN path, added text-time embeddings) are reported as unsupported.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import EdadmError
from ..quant.modules import QuantMixin
from ..quant.quantizer import UniformQuantizer

log = logging.getLogger("edadm")


@dataclass
class TemporalBlock:
    """The layers of the temporal information block and how they are wired."""

    embedding: nn.Module                   # model.time_embedding (TimestepEmbedding)
    projections: list[tuple[str, nn.Module, nn.Module]]  # (name, ResBlock, its time_emb_proj)
    layers: list[str]                      # every quantized layer of the block, by module name

    def features(self, model: nn.Module, t_emb: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        """Every time_emb_proj output for these rows, as the model's forward computes them."""
        emb = self.embedding(t_emb)
        if labels is not None:
            emb = emb + model.class_embedding(labels).to(emb.dtype)
        return [proj(block.nonlinearity(emb)) for _, block, proj in self.projections]


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this denoiser's temporal path is not the one TemporalBlock models (None: it is)."""
    if not isinstance(getattr(model, "time_embedding", None), nn.Module) or not hasattr(model, "time_proj"):
        return f"{type(model).__name__} has no time_proj / time_embedding"
    for attr in ("time_embed_act", "add_embedding", "encoder_hid_proj"):
        if getattr(model, attr, None) is not None:
            return f"{type(model).__name__} has a {attr} in its embedding path"
    cls = getattr(model, "class_embedding", None)
    if cls is not None and not isinstance(cls, nn.Embedding):
        return f"its class embedding is a {type(cls).__name__} (only nn.Embedding is modelled)"
    if not any(n.endswith("time_emb_proj") for n, _ in model.named_modules()):
        return "no ResBlock has a time_emb_proj"
    return None


def temporal_block(model: nn.Module) -> TemporalBlock:
    why = unsupported_reason(model)
    if why:
        raise EdadmError(f"temporal reconstruction (TFMQ-DM): {why}")
    projections = []
    for name, mod in model.named_modules():
        if name.endswith(".time_emb_proj"):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            if not callable(getattr(parent, "nonlinearity", None)):
                raise EdadmError(f"temporal reconstruction (TFMQ-DM): {name}'s block has no nonlinearity")
            projections.append((name, parent, mod))
    layers = [f"time_embedding.{n}" if n else "time_embedding" for n, m in model.time_embedding.named_modules()
              if isinstance(m, QuantMixin)]
    layers += [name for name, _, proj in projections if isinstance(proj, QuantMixin)]
    return TemporalBlock(embedding=model.time_embedding, projections=projections, layers=layers)


def temporal_rows(model: nn.Module, timesteps) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The block's finite input set: time_proj of every sampler timestep, crossed with every
    class index where the model has a class embedding (the null class of guidance included).
    Returns (t_emb [R, D], labels [R] or None)."""
    dev = next(model.parameters()).device
    t = torch.as_tensor(timesteps, device=dev).reshape(-1)
    cls = getattr(model, "class_embedding", None)
    labels = None
    if cls is not None:
        k = cls.num_embeddings
        labels = torch.arange(k, device=dev).repeat(t.numel())
        t = t.repeat_interleave(k)
    t_emb = model.time_proj(t).to(next(model.parameters()).dtype)
    return t_emb, labels


def _mse(qs: list[torch.Tensor], fs: list[torch.Tensor]) -> torch.Tensor:
    """Sum over the block's outputs of each output's mean squared error (every feature counts
    per element of its own output, so wide and narrow blocks weigh alike)."""
    return sum((q - f).pow(2).mean() for q, f in zip(qs, fs))


def reconstruct_temporal(model: nn.Module, fp_model: nn.Module, timesteps, cfg, round_lr: dict[str, float],
                         progress: bool = False):
    """Reconstruct the temporal information block of `model` (wrapped, ranges initialised, in
    the joint quant state) against `fp_model`'s (full_precision_copy) over every sampler
    timestep (and class). round_lr: layer name -> its AdaRound lr, for the layers whose
    rounding the recipe learns. Returns the UnitLog (kind "temporal"); the learned rounding
    is baked into the weights as block reconstruction does."""
    from tqdm.auto import tqdm

    from .engine import UnitLog, _adam, _bake, _param_groups

    t0 = time.time()
    block, fp_block = temporal_block(model), temporal_block(fp_model)
    t_emb, labels = temporal_rows(model, timesteps)
    with torch.no_grad():
        targets = [f.detach() for f in fp_block.features(fp_model, t_emb, labels)]
    qlayers = [model.get_submodule(n) for n in block.layers]
    act_qs = [m for layer in qlayers for m in layer.modules()
              if isinstance(m, UniformQuantizer) and m.role == "act" and bool(m.initialized) and m.enabled]
    ulog = UnitLog(name="temporal", kind="temporal", iters=cfg.iters, seconds=0.0)
    with torch.no_grad():
        ulog.before = float(_mse(block.features(model, t_emb, labels), targets))
    saved = [q.scale.detach().clone() for q in act_qs]
    dev = t_emb.device
    groups, shapes = _param_groups(qlayers, act_qs, cfg, {id(model.get_submodule(n)): lr for n, lr in round_lr.items()},
                                   cfg.learn_act_scale, dev)
    for q in act_qs:
        q.drop_prob = 0.0  # no QDrop here: the block's inputs are exact, every row each step
    failed = None
    if groups:
        opt, sched = _adam(groups, shapes, cfg.iters)
        log_every = max(1, cfg.iters // 20)
        try:
            for it in tqdm(range(cfg.iters), desc="recon temporal block", leave=False, disable=not progress):
                loss = _mse(block.features(model, t_emb, labels), targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if act_qs:
                    torch._foreach_clamp_min_([q.scale.data for q in act_qs], 1e-8)
                if it % log_every == 0 or it == cfg.iters - 1:
                    v = float(loss.detach())
                    if not math.isfinite(v):
                        failed = f"non-finite loss by iteration {it}"
                        break
                    ulog.history.append({"iter": it, "block": v, "inner": 0.0, "round": 0.0, "total": v})
        finally:
            for q in act_qs:
                q.scale.requires_grad_(False)
    _bake("temporal", qlayers, act_qs, saved, failed, ulog)
    with torch.no_grad():
        ulog.after = float(_mse(block.features(model, t_emb, labels), targets))
    ulog.seconds = time.time() - t0
    log.info("temporal block (%d layers, %d rows): feature MSE %.4g -> %.4g", len(qlayers), t_emb.shape[0],
             ulog.before, ulog.after)
    return ulog
