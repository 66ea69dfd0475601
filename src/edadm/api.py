"""The public Python surface: quantize a pipeline (save / load live in edadm.deploy)."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

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
from .quant.wrap import layer_plan, wrap_model
from .recipes import resolve
from .sampling import resolve_sampling, set_sampler, states_at
from .state import Pipeline, QuantReport, as_pipeline
from .utils import peak_rss_mb

log = logging.getLogger("edadm")


def allocate(traj, config: QuantConfig, num_train_timesteps: int) -> tuple[torch.Tensor, dict]:
    """Per-step counts for the configured strategy (calib.strategies), and what it computed."""
    config = resolve(config)
    return strategies.get(config.calib.strategy).allocate(traj, config, num_train_timesteps)


def _resolve_sampling(pipe, config: QuantConfig):
    """The sampler settings the model is calibrated for: the config's, else the pipeline's."""
    return resolve_sampling(pipe, config.steps, config.eta, config.guidance_scale)


def calibration_trajectories(pipe, config: QuantConfig, progress: bool = True, dist_info=None):
    """The FP trajectories `quantize(pipe, config)` samples for its calibration set (same
    seed, sampler, guidance, TDAC feature point). Settings that share these (for example W8A8
    and W4A8 with one calibration config) can collect them once and pass them to `quantize`."""
    config = resolve(config)
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


@dataclass
class QuantRun:
    """What the stages of `quantize` hand on to each other."""

    pipe: Pipeline
    config: QuantConfig
    progress: bool = True
    trajectories: object = None     # given FP trajectories (calibration_trajectories), else sampled
    dist_info: object = None
    checkpoint: object = None       # read by the reconstruction stage (per-unit resume)
    steps: int = 0
    eta: float = 0.0
    calib: CalibrationSet | None = None
    counts: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    timesteps: list = field(default_factory=list)
    plan: dict = field(default_factory=dict)
    fp_weights: dict | None = None
    recon_logs: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    wrap_started: float = 0.0       # "scales" seconds count from the wrap
    fp_record: object = None        # output_correction.FPRecord: held-out FP outputs for PTQD
    mixed: object = None            # quant.sensitivity.MixedChoice (--mixed-budget)

    @property
    def denoiser(self) -> torch.nn.Module:
        return get_denoiser(self.pipe)

    @property
    def two_stage(self) -> bool:
        """Q-Diffusion's order: weights reconstructed first, activation ranges set on them after."""
        r = self.config.recon
        return r.enabled and r.stages == "two-stage"


def stage_sampling(run: QuantRun) -> None:
    """The sampler the model is calibrated for (the config's, else the pipeline's); it is also
    what the quantized model samples with by default."""
    config = run.config = resolve(run.config)  # the recipe's values filled in: what this run uses
    torch.manual_seed(config.seed)
    if config.sampler is not None:
        set_sampler(run.pipe, config.sampler)
    settings = _resolve_sampling(run.pipe, config)
    run.steps, run.eta = settings.steps, settings.eta
    run.pipe.sampling = settings
    c = config.calib
    covered = min(run.steps, c.uniform_steps) if c.strategy == "uniform" else run.steps
    if c.num_samples < covered:
        raise EdadmError(f"calibration size {c.num_samples} is smaller than the {covered} sampler steps it must "
                         f"cover; use --num-samples >= {covered} (or fewer --steps)")


def stage_calibration_set(run: QuantRun) -> None:
    """FP trajectories -> per-step counts (the calibration strategy) -> CalibrationSet."""
    run.calib, run.counts, run.details, run.timesteps = _calibration_set(
        run.pipe, run.config, run.steps, run.eta, run.progress, run.seconds, dist_info=run.dist_info,
        trajectories=run.trajectories)


def stage_mixed_precision(run: QuantRun) -> None:
    """--mixed-budget: the low-bit layers kept at 8 bits for their measured sensitivity
    (quant/sensitivity.py), on the first `mixed_samples` calibration samples (the set is
    shuffled, so they spread over the steps)."""
    config = run.config
    if config.mixed_budget <= 0:
        return
    from .quant.sensitivity import select_8bit

    t0 = time.time()
    unet = run.denoiser
    head = run.calib.head(config.mixed_samples)
    batches = list(head.model_inputs(config.calib.batch_size, next(unet.parameters()).device))
    run.mixed = select_8bit(unet, layer_plan(unet, config), batches, config.mixed_budget,
                            method=config.weight_range, p=config.lp, progress=run.progress)
    if not run.mixed.sensitivity:
        log.warning("--mixed-budget: no layer below 8 weight bits, nothing to choose")
    else:
        log.info("mixed precision: %d of %d low-bit layers kept at 8 bits (+%.1f %% of %.0f weight bytes)",
                 len(run.mixed.kept), len(run.mixed.sensitivity),
                 100 * run.mixed.used_bytes / max(run.mixed.base_bytes, 1), run.mixed.base_bytes)
    run.seconds["mixed_precision"] = time.time() - t0


def stage_wrap(run: QuantRun) -> None:
    """Replace the denoiser's layers by quantized ones (the recipe's plan: bits, kept layers)."""
    run.wrap_started = time.time()
    extra = tuple(run.mixed.kept) if run.mixed is not None else ()
    run.plan = wrap_model(run.denoiser, run.config, plan=layer_plan(run.denoiser, run.config, also_8bit=extra))


def stage_scales(run: QuantRun) -> None:
    """Weight ranges, then activation ranges (MSE search on the calibration set); under the
    two-stage order the activation ranges wait for the weight reconstruction."""
    init_weight_ranges(run.denoiser, method=run.config.weight_range, p=run.config.lp)
    if not run.two_stage:
        _init_act_ranges(run.denoiser, run.calib, run.config, run.progress)
    run.seconds["scales"] = time.time() - run.wrap_started


def stage_reconstruction(run: QuantRun) -> None:
    """Block reconstruction (BRECQ + FBR's inner-layer terms) for the methods that reconstruct."""
    unet, config, r, c, ck = run.denoiser, run.config, run.config.recon, run.config.calib, run.checkpoint
    run.fp_weights = fp_weights(unet)  # before reconstruction rounds them: per-layer errors for the report
    if not r.enabled:
        return
    from .recon.engine import full_precision_copy, reconstruct

    t0 = time.time()
    done = ck.finished_units() if ck is not None else []
    on_unit = (lambda i, name, ulog: ck.save_unit(i, name, unet, ulog)) if ck else None
    kw = dict(calib_batch=c.batch_size, progress=run.progress, on_unit=on_unit)
    if run.mixed is not None and run.mixed.kept:
        # mixed precision's 8-bit layers reconstruct by the recipe's 8-bit settings (for
        # eda-dm-plus: round to nearest, no AdaRound), not the run's low-bit ones
        from .recipes import recon_for_bits

        r8 = recon_for_bits(config, 8)
        kw["layer_cfgs"] = {name: r8 for name in run.mixed.kept}
    if not run.two_stage:
        temporal_logs = []
        if r.temporal:
            temporal_logs, kw["skip"], kw["fp_model"] = _temporal_stage(run, kw.get("layer_cfgs") or {})
        run.recon_logs = temporal_logs + [asdict(u) for u in reconstruct(unet, run.calib, r, done=done, **kw)]
    else:
        fp_model = full_precision_copy(unet)
        # without learned rounding the weight stage has nothing to learn: skip its input capture
        w_logs = (reconstruct(unet, run.calib, r, done=done, stage="weights", fp_model=fp_model, **kw)
                  if r.learn_rounding else [])
        run.seconds["reconstruction_weights"] = time.time() - t0
        t1 = time.time()
        _init_act_ranges(unet, run.calib, config, run.progress)  # on the weight-reconstructed model
        run.seconds["scales"] = run.seconds.get("scales", 0.0) + time.time() - t1
        a_logs = reconstruct(unet, run.calib, r, done=done[len(w_logs):], stage="acts", index_offset=len(w_logs),
                             fp_model=fp_model, **kw)
        run.recon_logs = [{**asdict(u), "stage": stage} for stage, us in (("weights", w_logs), ("acts", a_logs))
                          for u in us]
        del fp_model
    run.seconds["reconstruction"] = time.time() - t0


def _temporal_stage(run: QuantRun, layer_cfgs: dict) -> tuple[list[dict], frozenset, object]:
    """--temporal-recon (TFMQ-DM): the temporal information block reconstructed on its own over
    every sampler timestep, before the blocks, which then leave its layers alone. Returns its
    log, the layers the blocks skip and the FP copy (shared with the block reconstruction).
    Run again on resume (it draws nothing at random): its result is the same."""
    from .recon.engine import frozen, full_precision_copy
    from .recon.temporal import reconstruct_temporal, temporal_block, unsupported_reason
    from .quant.wrap import set_quant_state

    unet, r = run.denoiser, run.config.recon
    fp_model = full_precision_copy(unet)
    why = unsupported_reason(unet)
    if why:
        log.warning("--temporal-recon: %s; its layers are reconstructed with the blocks", why)
        return [], frozenset(), fp_model
    block = temporal_block(unet)
    own = {n: layer_cfgs.get(n, r) for n in block.layers}
    round_lr = {n: c.lr_weight for n, c in own.items() if c.learn_rounding}
    set_quant_state(unet, weight=True, act=True)
    with frozen(unet):
        ulog = reconstruct_temporal(unet, fp_model, run.timesteps, r, round_lr, progress=run.progress)
    return [asdict(ulog)], frozenset(block.layers), fp_model


def stage_correction_record(run: QuantRun) -> None:
    """PTQD (--output-correction ptqd): every step's input and output of held-out FP
    trajectories (seed + 20000), recorded before the layers are wrapped."""
    config = run.config
    if config.output_correction != "ptqd":
        return
    from .output_correction import record_fp

    t0 = time.time()
    s = run.pipe.sampling
    run.fp_record = record_fp(run.pipe, config.correction_samples, seed=config.seed + 20_000, steps=s.steps,
                              eta=s.eta, guidance_scale=s.guidance_scale, batch_size=config.calib.batch_size,
                              progress=run.progress)
    run.seconds["output_correction"] = time.time() - t0


def stage_output_correction(run: QuantRun) -> None:
    """PTQD's per-step table of the finished quantized denoiser against the FP record; the
    sampler applies it (output_correction)."""
    if run.config.output_correction != "ptqd":
        return
    from .output_correction import fit

    t0 = time.time()
    run.pipe.correction = fit(run.fp_record, run.pipe, progress=run.progress)
    run.fp_record = None
    run.seconds["output_correction"] = run.seconds.get("output_correction", 0.0) + time.time() - t0


def stage_report(run: QuantRun) -> None:
    """Per-layer errors on one calibration batch and the QuantReport (run.pipe.report)."""
    unet, c, ck = run.denoiser, run.config.calib, run.checkpoint
    args, kwargs = next(iter(run.calib.model_inputs(c.batch_size, next(unet.parameters()).device)))
    errors = layer_errors(unet, run.fp_weights, args, kwargs)
    run.fp_weights = None
    seconds = {k: round(v, 2) for k, v in run.seconds.items()}
    run.pipe.config = run.config
    run.pipe.report = QuantReport(
        config=run.config.resolved_dict(), steps=run.steps, eta=run.eta, counts=list(run.counts),
        timesteps=list(run.timesteps), allocation=run.details, seconds=seconds,
        resumed=ck is not None and ck.resume, peak_memory_mb=peak_rss_mb(), recon=run.recon_logs,
        layer_errors=errors, mixed_precision=run.mixed.to_dict() if run.mixed is not None else {},
        plan={k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in run.plan.items()})


def _restore_calibration_set(run: QuantRun, ck) -> bool:
    saved = ck.load_calib()
    if saved is None:
        return False
    run.calib, run.counts, run.details, run.timesteps = (CalibrationSet(**saved["calib"]), saved["counts"],
                                                         saved["details"], saved["timesteps"])
    run.seconds.update(saved["seconds"])
    return True


def _save_calibration_set(run: QuantRun, ck) -> None:
    ck.save_calib({"calib": asdict(run.calib), "counts": run.counts, "details": run.details,
                   "timesteps": run.timesteps, "seconds": dict(run.seconds)})


@dataclass(frozen=True)
class Stage:
    """A named step of `quantize`; restore / save: read a finished stage back from a
    checkpoint (returns whether it could) / write it there."""

    name: str
    run: Callable[[QuantRun], None]
    restore: Callable[[QuantRun, object], bool] | None = None
    save: Callable[[QuantRun, object], None] | None = None
    shared: bool = False  # every torchrun process takes part; only rank 0 goes on after it


STAGES: tuple[Stage, ...] = (
    Stage("sampling", stage_sampling),
    Stage("calibration set", stage_calibration_set, _restore_calibration_set, _save_calibration_set, shared=True),
    Stage("correction record", stage_correction_record),
    Stage("mixed precision", stage_mixed_precision),
    Stage("wrap", stage_wrap),
    Stage("scales", stage_scales, lambda run, ck: ck.load_ranges(run.denoiser), lambda run, ck: ck.save_ranges(run.denoiser)),
    Stage("reconstruction", stage_reconstruction),
    Stage("output correction", stage_output_correction),
    Stage("report", stage_report),
)


def quantize(pipe, config: QuantConfig | None = None, progress: bool = True, checkpoint=None, dist_info=None,
             trajectories=None) -> Pipeline:
    """Quantize the denoiser (`pipe.unet`, or `pipe.transformer` for DiT) in place (fake
    quantization) and return the quantized Pipeline (its .config, .report: a QuantReport).

    The stages (STAGES, in order): sampling settings -> calibration set (FP trajectories,
    uniform / PTQ4DM / TDAC counts) -> mixed precision (--mixed-budget: the most sensitive
    low-bit layers kept at 8 bits) -> wrap layers -> weight and activation ranges (MSE
    search) -> block reconstruction (BRECQ, + FBR inner-layer terms) for methods that
    reconstruct -> PTQD's output correction (--output-correction ptqd; its FP record is
    taken before the wrap) -> report.

    checkpoint: an edadm.checkpoint.Checkpoint; each stage that can be is saved there and,
    when it was opened with resume=True, finished stages are read back instead of run.

    dist_info (edadm.dist.DistInfo, under torchrun): all processes share the FP trajectory
    collection; then rank 0 goes on alone and the others return None.

    trajectories: what `calibration_trajectories(pipe, config)` returned, to skip sampling
    them again (they must match the config's count and steps).
    """
    run = QuantRun(as_pipeline(pipe), config or QuantConfig(), progress=progress, trajectories=trajectories,
                   dist_info=dist_info, checkpoint=checkpoint)
    for stage in STAGES:
        if checkpoint is not None and stage.restore is not None and stage.restore(run, checkpoint):
            continue
        stage.run(run)
        if stage.shared and dist_info is not None and not dist_info.is_main:
            return None
        if checkpoint is not None and stage.save is not None:
            stage.save(run, checkpoint)
    return run.pipe


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
    config = resolve(config)
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
