"""The public Python surface: quantize a pipeline (save / load live in edadm.deploy)."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .calib import CalibrationSet, assemble, collect_trajectories, strategies
from .calib.trajectories import empty_trajectories, trajectory_conditioning
from .config import QuantConfig
from .errors import EdadmError
from .model.families import get_denoiser
from .model.structure import feature_module
from .quant.calibrate import init_act_ranges, init_weight_ranges
from .quant.diagnostics import fp_weights, layer_errors
from .quant.modules import QuantMixin
from .quant.wrap import wrap_model
from .sampling import resolve_sampling, set_sampler, states_at
from .state import Pipeline, QuantReport, as_pipeline
from .utils import peak_rss_mb

log = logging.getLogger("edadm")


def allocate(traj, config: QuantConfig, num_train_timesteps: int) -> tuple[torch.Tensor, dict]:
    """Per-step counts for the configured strategy (calib.strategies), and what it computed."""
    return strategies.get(config.calib.strategy).allocate(traj, config, num_train_timesteps)


def _resolve_sampling(pipe, config: QuantConfig):
    """The sampler settings the model is calibrated for: the config's, else the pipeline's."""
    return resolve_sampling(pipe, config.steps, config.eta, config.guidance_scale)


def calibration_trajectories(pipe, config: QuantConfig, progress: bool = True, dist_info=None):
    """The FP trajectories `quantize(pipe, config)` samples for its calibration set (same
    seed, sampler, guidance, TDAC feature point). Settings that share these (for example W8A8
    and W4A8 with one calibration config) can collect them once and pass them to `quantize`."""
    config.validate()
    if config.sampler is not None:
        set_sampler(pipe, config.sampler)
    settings = _resolve_sampling(pipe, config)
    steps, eta = settings.steps, settings.eta
    c = config.calib
    fmod = None
    if strategies.get(c.strategy).needs_features:
        try:
            fmod = feature_module(get_denoiser(pipe))[1]
        except ValueError as exc:
            raise EdadmError(f"TDAC needs a feature point: {exc}") from exc
    seed = config.seed + 10_000
    stored = _stored_trajectories(c, fmod is not None, dist_info)
    if stored:
        traj = collect_trajectories(pipe, stored, seed=seed, steps=steps, eta=eta, batch_size=c.batch_size,
                                    progress=progress, feature_module=fmod, guidance_scale=config.guidance_scale,
                                    dist_info=dist_info)
    else:
        traj = empty_trajectories(pipe, steps, config.guidance_scale)
    if not torch.isfinite(traj.xs).all():
        raise EdadmError("full-precision trajectories contain NaN or Inf; check the model and sampler settings")
    if stored < c.num_trajectories:
        # the others give one calibration sample each: run each only up to its sample's step
        traj.total = c.num_trajectories
        traj.cond, traj.uncond, traj.guidance_scale = trajectory_conditioning(pipe, c.num_trajectories,
                                                                              config.guidance_scale)
        den = get_denoiser(pipe)

        def sampler(indices, at_steps):
            if any(isinstance(m, QuantMixin) for m in den.modules()):
                raise EdadmError("these calibration trajectories came from a pipeline that has been quantized since; "
                                 "collect them again from the full-precision one")
            x = states_at(pipe, indices, at_steps, seed=seed, steps=steps, eta=eta, batch_size=c.batch_size,
                          guidance_scale=config.guidance_scale, progress=progress)
            if not torch.isfinite(x).all():
                raise EdadmError("full-precision trajectories contain NaN or Inf; check the model and sampler settings")
            return x

        traj.sampler = sampler
    return traj


def _stored_trajectories(c, needs_features: bool, dist_info) -> int:
    """How many trajectories are collected whole: all of them when samples reuse trajectories
    (N > B, Q-Diffusion's recipe) or under torchrun; else the first tdac_trajectories for TDAC's
    statistics (every step of theirs is used), none for the other strategies."""
    if c.num_samples > c.num_trajectories or (dist_info is not None and dist_info.world_size > 1):
        return c.num_trajectories
    if not needs_features:
        return 0
    return c.num_trajectories if not c.tdac_trajectories else min(c.tdac_trajectories, c.num_trajectories)


def _calibration_set(pipe, config: QuantConfig, steps: int, eta: float, progress: bool, seconds: dict,
                     dist_info=None, trajectories=None):
    """FP trajectories -> per-step counts -> CalibrationSet (+ counts, details, timesteps)."""
    c = config.calib
    t0 = time.time()
    if trajectories is None:
        traj = calibration_trajectories(pipe, config, progress=progress, dist_info=dist_info)
    else:
        traj = trajectories
        if traj.num_trajectories != c.num_trajectories or traj.num_steps != steps:
            raise EdadmError(f"the given trajectories ({traj.num_trajectories} x {traj.num_steps} steps) do not match "
                             f"this config ({c.num_trajectories} x {steps} steps)")
        if strategies.get(c.strategy).needs_features and traj.features is None:
            raise EdadmError(f"the given trajectories have no TDAC features, which {c.strategy} needs; collect them "
                             "with its config")
    seconds["trajectories"] = time.time() - t0
    counts, details = allocate(traj, config, pipe.scheduler.config.num_train_timesteps)
    lazy = traj.sampler_seconds
    calib = assemble(traj, counts, seed=config.seed)
    # the trajectories not stored whole are run up to their samples' steps inside assemble
    seconds["trajectories"] += traj.sampler_seconds - lazy
    return calib, counts.tolist(), details, traj.ts.tolist()


def _init_act_ranges(unet, calib, config: QuantConfig, progress: bool) -> None:
    init_act_ranges(unet, calib, batch_size=config.calib.batch_size, method=config.act_range, p=config.lp,
                    seed=config.seed, progress=progress, kind=config.act_range_kind)


def quantize(pipe, config: QuantConfig | None = None, progress: bool = True, checkpoint=None, dist_info=None,
             trajectories=None) -> Pipeline:
    """Quantize the denoiser (`pipe.unet`, or `pipe.transformer` for DiT) in place (fake
    quantization) and return the quantized Pipeline (its .config, .report: a QuantReport).

    FP trajectories of the evaluation sampler -> calibration set (uniform / PTQ4DM / TDAC)
    -> wrap layers -> weight and activation ranges (MSE search) -> block reconstruction
    (BRECQ, + FBR inner-layer terms) for methods that reconstruct.

    checkpoint: an edadm.checkpoint.Checkpoint; each stage is saved there and, when it was
    opened with resume=True, finished stages are read back instead of recomputed.

    dist_info (edadm.dist.DistInfo, under torchrun): all processes share the FP trajectory
    collection; then rank 0 goes on alone and the others return None.

    trajectories: what `calibration_trajectories(pipe, config)` returned, to skip sampling
    them again (they must match the config's count and steps).
    """
    config = config or QuantConfig()
    config.validate()
    torch.manual_seed(config.seed)
    pipe = as_pipeline(pipe)
    if config.sampler is not None:
        set_sampler(pipe, config.sampler)
    settings = _resolve_sampling(pipe, config)
    steps, eta = settings.steps, settings.eta
    # the model is calibrated for this sampler: it is also what it samples with by default
    pipe.sampling = settings
    c = config.calib
    covered = min(steps, c.uniform_steps) if c.strategy == "uniform" else steps
    if c.num_samples < covered:
        raise EdadmError(f"calibration size {c.num_samples} is smaller than the {covered} sampler steps it must "
                         f"cover; use --num-samples >= {covered} (or fewer --steps)")
    seconds = {}
    saved = checkpoint.load_calib() if checkpoint is not None else None
    if saved is not None:
        calib, counts, details, timesteps = (CalibrationSet(**saved["calib"]), saved["counts"], saved["details"],
                                              saved["timesteps"])
        seconds.update(saved["seconds"])
    else:
        calib, counts, details, timesteps = _calibration_set(pipe, config, steps, eta, progress, seconds,
                                                             dist_info=dist_info, trajectories=trajectories)
        if dist_info is not None and not dist_info.is_main:
            return None
        if checkpoint is not None:
            checkpoint.save_calib({"calib": asdict(calib), "counts": counts, "details": details,
                                   "timesteps": timesteps, "seconds": dict(seconds)})
    t0 = time.time()
    unet = get_denoiser(pipe)
    plan = wrap_model(unet, config)
    r = config.recon
    two_stage = r.enabled and r.stages == "two-stage"
    if checkpoint is None or not checkpoint.load_ranges(unet):
        init_weight_ranges(unet, method=config.weight_range, p=config.lp)
        if not two_stage:  # two-stage: activation ranges come after the weight stage, on its weights
            _init_act_ranges(unet, calib, config, progress)
        seconds["scales"] = time.time() - t0
        if checkpoint is not None:
            checkpoint.save_ranges(unet)
    fpw = fp_weights(unet)  # before reconstruction rounds them: per-layer errors for the report
    recon_logs = []
    if r.enabled:
        from .recon.engine import full_precision_copy, reconstruct

        t0 = time.time()
        done = checkpoint.finished_units() if checkpoint is not None else []
        on_unit = (lambda i, name, ulog: checkpoint.save_unit(i, name, unet, ulog)) if checkpoint else None
        kw = dict(calib_batch=c.batch_size, progress=progress, on_unit=on_unit)
        if not two_stage:
            recon_logs = [asdict(u) for u in reconstruct(unet, calib, r, done=done, **kw)]
        else:
            fp_model = full_precision_copy(unet)
            # without learned rounding the weight stage has nothing to learn: skip its input capture
            w_logs = (reconstruct(unet, calib, r, done=done, stage="weights", fp_model=fp_model, **kw)
                      if r.learn_rounding else [])
            seconds["reconstruction_weights"] = time.time() - t0
            t1 = time.time()
            _init_act_ranges(unet, calib, config, progress)  # on the weight-reconstructed model
            seconds["scales"] = seconds.get("scales", 0.0) + time.time() - t1
            a_logs = reconstruct(unet, calib, r, done=done[len(w_logs):], stage="acts", index_offset=len(w_logs),
                                 fp_model=fp_model, **kw)
            recon_logs = [{**asdict(u), "stage": stage} for stage, us in (("weights", w_logs), ("acts", a_logs))
                          for u in us]
            del fp_model
        seconds["reconstruction"] = time.time() - t0
    args, kwargs = next(iter(calib.model_inputs(c.batch_size, next(unet.parameters()).device)))
    errors = layer_errors(unet, fpw, args, kwargs)
    del fpw
    report = QuantReport(config=config.resolved_dict(), steps=steps, eta=eta, counts=list(counts), timesteps=list(timesteps),
                         allocation=details, seconds={k: round(v, 2) for k, v in seconds.items()},
                         resumed=checkpoint is not None and checkpoint.resume,
                         peak_memory_mb=peak_rss_mb(), recon=recon_logs, layer_errors=errors,
                         plan={k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in plan.items()})
    pipe.config, pipe.report = config, report
    return pipe


def quantize_to_dir(model, config: QuantConfig, out, *, device: str = "auto", prompts: list[str] | None = None,
                    resume: bool = False, progress: bool = True) -> Pipeline | None:
    """What `edadm quantize` does: load the full-precision pipeline `model` (a zoo name or a
    diffusers directory), quantize it with every stage checkpointed beside `out` (resume=True
    reads finished stages back), save the quantized directory to `out` and return it.

    Under torchrun every process calls this: all share the FP trajectory collection, then
    rank 0 goes on alone and the others return None."""
    from .checkpoint import Checkpoint, default_checkpoint_dir
    from .deploy import save_quantized
    from .deploy.layout import is_quantized_dir
    from .dist import finish, init_distributed, rank_device
    from .loading import load_pipeline, resolve_model_path
    from .sampling import with_prompts

    if is_quantized_dir(resolve_model_path(model)):
        raise EdadmError(f"{model} is already quantized; pass the full-precision pipeline")
    out = Path(out)
    info = init_distributed(device)
    pipe = load_pipeline(model, device=rank_device(info, device))
    if prompts is not None:
        pipe = with_prompts(pipe, prompts)
    ck_dir = default_checkpoint_dir(out)
    if not info.is_main:  # helps collect the FP trajectories, then leaves the rest to rank 0
        if not (resume and (ck_dir / "calib.pt").is_file()):  # rank 0 resumes it
            quantize(pipe, config, progress=False, dist_info=info)
        finish(info)
        return None
    if resume and not ck_dir.is_dir():
        log.warning("no checkpoint at %s: starting from the beginning", ck_dir)
    ck = Checkpoint(ck_dir, {"model": str(model), "config": config.resolved_dict()}, resume=resume)
    pipe = quantize(pipe, config, progress=progress, checkpoint=ck, dist_info=info if info.world_size > 1 else None)
    source = str(Path(model).resolve()) if Path(model).exists() else str(model)  # else a zoo name
    save_quantized(pipe, out, config, {**pipe.report.to_dict(), "source": source})
    ck.remove()
    finish(info)
    return pipe
