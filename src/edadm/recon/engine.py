"""Block reconstruction (BRECQ) with the FBR loss of EDA-DM.

For every unit in forward order (a residual / attention / transformer block, or a quantized
layer outside blocks):

1. cache the unit's inputs from the full-precision model and from the quantized model
   (every earlier unit already reconstructed), in chunks of one calibration batch;
2. cache the FP unit's output on the FP inputs, and (FBR) the outputs of its inner layers;
   the FP model is a separate copy taken before reconstruction starts, because step 4
   writes the rounded weights into the quantized model's weight tensors;
3. learn what the stage learns (ReconConfig.stages):
   - "joint" (EDA-DM): AdaRound rounding of its weights together with its activation step
     sizes (LSQ), with QDrop (inputs mixed element-wise between FP and quantized,
     activations kept in float element-wise with probability act_drop_prob);
   - "two-stage" (Q-Diffusion): first every unit's rounding alone with activations in float
     (stage "weights"); then, after activation ranges are initialised on the
     weight-reconstructed model (api.quantize), every unit's activation step sizes alone
     (stage "acts", Lp loss with act_loss_p);
   Adam; rounding lr constant or cosine-decayed (lr_weight_schedule), step sizes cosine;
4. fix the rounding (hard) into the weights.

Loss: Lp(block_q(x), block_fp(x)) + add_loss * sum_j MSE(layer_j,q, layer_j,fp) over the
unit's quantized layers except the last (add_loss = 0: plain BRECQ), + the AdaRound
rounding regulariser while rounding is learned.
"""
from __future__ import annotations

import contextlib
import copy
import math
import logging
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calib import CalibrationSet
from ..model.structure import forward_order, reconstruction_units
from ..quant.modules import QuantMixin
from ..quant.primitives import MaskPool
from ..quant.quantizer import UniformQuantizer
from ..quant.wrap import set_quant_state
from .adaround import AdaRoundQuantizer
from .fbr import channel_mse, fbr_loss, per_sample_mse, step_balance_weights, trajectory_bins  # noqa: F401 - re-exported

log = logging.getLogger("edadm")


@dataclass
class UnitLog:
    name: str
    kind: str
    iters: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # every log_every iters: per-term losses
    before: float | None = None  # unit output MSE vs FP on the calibration inputs, before / after
    after: float | None = None
    fallback: str | None = None
    capture_seconds: float = 0.0  # of `seconds`: caching the unit's inputs and FP targets


class _Stop(Exception):
    pass


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    return out[0] if hasattr(out, "__getitem__") else out.sample


def _map(fn, obj):
    """fn applied to every tensor of a nested tuple / list / dict structure (module inputs and
    outputs), the structure rebuilt around the results."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: _map(fn, v) for k, v in obj.items()}
    return obj


def _to(obj, device):
    return _map(lambda t: t.to(device), obj)


def _rows(t: torch.Tensor, idx):
    """Rows idx of a batched tensor: index_select for an index tensor (a row gather about 1.8x
    faster than advanced indexing on the CPU, the same values), slicing otherwise."""
    if t.dim() == 0:
        return t
    return t.index_select(0, idx) if isinstance(idx, torch.Tensor) else t[idx]


def _select(obj, idx):
    """Rows idx of every batched tensor in a nested (args, kwargs) structure."""
    return _map(lambda t: _rows(t, idx), obj)


class _Rows:
    """Batches of a nested (args, kwargs) structure joined along the batch dimension into
    tensors allocated once, at the first batch, for `batches` batches of its size (the last
    may be shorter): no list of chunks beside the joined copy, so a unit's cache takes its own
    size and not twice that while it is built (Q-Diffusion's 5120 samples, issue 34).
    Tensors without a batch dimension (0-d) are taken from the first batch, as torch.cat
    would not join them. Hand-written: torch has no preallocated cat over nested structures."""

    def __init__(self, batches: int):
        self.batches, self.template, self.bufs, self.used = batches, None, [], []

    def add(self, obj) -> None:
        leaves = _batched_leaves(obj)
        if self.template is None:
            self.template = obj
            # a fresh contiguous buffer: an attention block hands on a channels-last view, and
            # the float conv backward of torch 2.13 on CPU crashes (segfault) on such inputs
            # once activations are not fake-quantized before the conv (two-stage weight stage)
            self.bufs = [torch.empty((t.shape[0] * self.batches,) + tuple(t.shape[1:]), dtype=t.dtype)
                         for t in leaves]
            self.used = [0] * len(leaves)
        for i, t in enumerate(leaves):
            a, b = self.used[i], self.used[i] + t.shape[0]
            if b > self.bufs[i].shape[0]:
                raise ValueError(f"more rows than {self.batches} batches of {self.bufs[i].shape[0] // self.batches}")
            self.bufs[i][a:b].copy_(t)
            self.used[i] = b

    def result(self):
        it = iter(buf[:n] for buf, n in zip(self.bufs, self.used))
        return _rebuild(self.template, it)


def _batched_leaves(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.dim() > 0 else []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _batched_leaves(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _batched_leaves(o)]
    return []


def _rebuild(template, it):
    if isinstance(template, torch.Tensor):
        return next(it) if template.dim() > 0 else template
    if isinstance(template, (tuple, list)):
        return type(template)(_rebuild(o, it) for o in template)
    if isinstance(template, dict):
        return {k: _rebuild(v, it) for k, v in template.items()}
    return template


@torch.no_grad()
def capture_inputs(model: nn.Module, unit: nn.Module, calib: CalibrationSet, batch_size: int) -> tuple[tuple, dict]:
    """The unit's (args, kwargs) for the whole calibration set, joined along the batch
    dimension in CPU memory (contiguous); the forward pass stops at the unit. The model runs in
    whatever quant state it is in."""
    dev = next(model.parameters()).device
    rows = _Rows(-(-len(calib) // batch_size))

    def hook(mod, args, kwargs):
        rows.add((args, kwargs))
        raise _Stop

    h = unit.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for args, kwargs in calib.model_inputs(batch_size, dev):
            try:
                model(*args, **kwargs)
            except _Stop:
                pass
    finally:
        h.remove()
    return rows.result()


class FPInputs:
    """The FP model's inputs of every unit, captured for consecutive units together: one
    forward pass of the FP model over the calibration set fills the caches of as many units
    (in forward order) as fit in `budget_mb` of host memory, instead of one pass per unit that
    runs the model up to that unit (BRECQ's way: the sum over units of the model's prefix,
    about half a model per unit; issue 34). The tensors are the same either way (same FP
    model, same batches). Each unit's entry is handed out once (take) and then dropped, so the
    memory held falls as reconstruction moves on. Hand-written: nothing in torch or diffusers
    captures several submodules' inputs in one pass."""

    def __init__(self, fp_model: nn.Module, order: list[str], calib: CalibrationSet, batch_size: int,
                 budget_mb: float):
        self.fp_model, self.order, self.calib, self.batch_size = fp_model, list(order), calib, batch_size
        self.budget = budget_mb * 2 ** 20
        self.cache: dict[str, tuple] = {}
        self.sizes: dict[str, int] | None = None  # bytes of each unit's inputs per calibration sample
        self.passes = 0  # FP forward passes over the calibration set, for the log

    def _hooks(self, names, fn):
        def hook(n):
            def pre(mod, args, kwargs):
                fn(n, args, kwargs)  # returns None: the inputs go on unchanged
            return pre
        return [self.fp_model.get_submodule(n).register_forward_pre_hook(hook(n), with_kwargs=True) for n in names]

    @torch.no_grad()
    def _measure(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        hooks = self._hooks(self.order, lambda n, a, k: sizes.setdefault(n, _nbytes((a, k))))
        try:
            args, kwargs = next(iter(self.calib.model_inputs(1, next(self.fp_model.parameters()).device)))
            self.fp_model(*args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        return sizes

    def take(self, name: str) -> tuple:
        if name not in self.cache:
            self._fill_from(name)
        return self.cache.pop(name)

    @torch.no_grad()
    def _fill_from(self, name: str) -> None:
        if self.sizes is None:
            self.sizes = self._measure()
        group, total = [], 0.0
        for n in self.order[self.order.index(name):]:
            if n not in self.sizes:  # not called on the way (a unit the FP model skips): alone, later
                break
            b = self.sizes[n] * len(self.calib)
            if group and total + b > self.budget:
                break
            group.append(n)
            total += b
        if not group:  # the unit itself was not seen by the measuring pass: BRECQ's own capture
            self.cache[name] = capture_inputs(self.fp_model, self.fp_model.get_submodule(name), self.calib,
                                              self.batch_size)
            return
        batches = -(-len(self.calib) // self.batch_size)
        rows = {n: _Rows(batches) for n in group}
        seen: set[str] = set()
        last = group[-1]

        def grab(n, args, kwargs):
            if n in seen:  # a unit called twice in one forward pass: its first call, as capture_inputs
                return
            seen.add(n)
            rows[n].add((args, kwargs))
            if n == last:
                raise _Stop

        hooks = self._hooks(group, grab)
        try:
            for args, kwargs in self.calib.model_inputs(self.batch_size, next(self.fp_model.parameters()).device):
                seen.clear()
                try:
                    self.fp_model(*args, **kwargs)
                except _Stop:
                    pass
        finally:
            for h in hooks:
                h.remove()
        self.passes += 1
        self.cache.update({n: rows[n].result() for n in group})
        log.debug("FP inputs of %d units (%s .. %s, %.0f MB) in one pass", len(group), group[0], last, total / 2 ** 20)


def _plain(obj) -> bool:
    """Whether a module output is tensors in tuples / lists / dicts only (replayable)."""
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (int, float, bool)):
        return True
    if isinstance(obj, (tuple, list)):
        return all(_plain(o) for o in obj)
    if type(obj) is dict:
        return all(_plain(o) for o in obj.values())
    return False


def _copy(obj, device=None):
    """A structure-preserving copy of a module output, each tensor cloned with its strides
    (on `device` when given): a replayed output must not be changed in place downstream, and
    a convolution may take another path for other strides (bit-identity)."""
    def one(t):
        t = t.detach()
        return t.clone() if device is None or t.device == device else t.to(device, copy=True)
    return _map(one, obj)


class QInputs:
    """The quantized model's inputs of each unit, captured with the outputs of the units
    already reconstructed replayed instead of recomputed.

    BRECQ captures unit k's quantized inputs by running the quantized model up to unit k, so
    a stage costs the sum over units of the model's prefix (about half a model per unit; for
    Q-Diffusion's 5120 samples this was 277 of 591 s of digits-ddpm's W4A8 reconstruction,
    issue 34). Once a unit is reconstructed its parameters are final and so is its output on
    every calibration batch (its inputs come from final units and fixed float ops, the
    batches are the same each pass): the pass for unit k records the outputs of the units
    finalised since the previous pass, and later passes return the recorded output from
    each such unit instead of running it. Only the float ops between units and the
    not-yet-recorded units run. The inputs are the same tensors as a full prefix pass
    (tested bit for bit). Recorded outputs stay in host memory within `budget_mb`; a unit
    whose outputs do not fit, that is skipped in some batch, or whose output is not plain
    tensors, just runs. A unit called again in the same forward pass runs its later calls.
    Hand-written: nothing in torch or diffusers replays submodule outputs."""

    def __init__(self, model: nn.Module, calib: CalibrationSet, batch_size: int, budget_mb: float,
                 final: list[str] | None = None):
        self.model, self.calib, self.batch_size = model, calib, batch_size
        self.budget = budget_mb * 2 ** 20
        self.final: list[str] = list(final or [])  # reconstructed units, in order
        self.outs: dict[str, list] = {}            # final unit -> its output per calibration batch
        self.skip: set[str] = set()                # final units that are not replayed
        self.used = 0

    def mark_final(self, name: str) -> None:
        self.final.append(name)

    @staticmethod
    def _replay(mod: nn.Module, outs: list, state: dict, dev, own=None):
        def forward(*args, **kwargs):
            if mod in state["called"]:  # a later call in the same pass: computed from its own inputs
                return (own or type(mod).forward.__get__(mod))(*args, **kwargs)
            state["called"].add(mod)
            return _copy(outs[state["b"]], dev)
        return forward

    @torch.no_grad()
    def take(self, name: str) -> tuple:
        """Unit `name`'s (args, kwargs) over the calibration set, as capture_inputs gives them."""
        dev = next(self.model.parameters()).device
        unit = self.model.get_submodule(name)
        batches = -(-len(self.calib) // self.batch_size)
        rows = _Rows(batches)
        record = [n for n in self.final if n not in self.outs and n not in self.skip] if self.budget > 0 else []
        got: dict[str, list] = {n: [] for n in record}
        state = {"b": 0, "called": set()}

        def recorder(n):
            def hook(mod, args, out):
                if mod in state["called"]:
                    return  # a unit's first call of the pass is the one replayed
                state["called"].add(mod)
                if len(got[n]) == state["b"] and _plain(out):
                    got[n].append(_copy(out, torch.device("cpu")))
            return hook

        def stop(mod, args, kwargs):
            rows.add((args, kwargs))
            raise _Stop

        replayed = {n: self.model.get_submodule(n) for n in self.outs}
        handles = [self.model.get_submodule(n).register_forward_hook(recorder(n)) for n in record]
        handles.append(unit.register_forward_pre_hook(stop, with_kwargs=True))
        own = {n: m.__dict__.get("forward") for n, m in replayed.items()}  # an instance forward (hooks of others)
        for n, m in replayed.items():
            m.forward = self._replay(m, self.outs[n], state, dev, own[n])  # instance attribute, undone below
        try:
            for b, (args, kwargs) in enumerate(self.calib.model_inputs(self.batch_size, dev)):
                state["b"], state["called"] = b, set()
                try:
                    self.model(*args, **kwargs)
                except _Stop:
                    pass
        finally:
            for h in handles:
                h.remove()
            for n, m in replayed.items():
                if own[n] is None:
                    del m.forward
                else:
                    m.forward = own[n]
        for n in record:
            size = sum(_nbytes(o) for o in got[n])
            if len(got[n]) != batches or self.used + size > self.budget:
                self.skip.add(n)
                continue
            self.outs[n] = got[n]
            self.used += size
        return rows.result()


def full_precision_copy(model: nn.Module) -> nn.Module:
    """A copy of the wrapped model with every quantizer off: the reconstruction targets.

    Costs one more copy of the weights; without it the targets of later units would come
    from a model whose earlier weights are already rounded (BRECQ's targets are FP)."""
    fp = copy.deepcopy(model)
    for p in fp.parameters():
        p.requires_grad_(False)
    set_quant_state(fp, weight=False, act=False)
    return fp


def _inner_layers(unit: nn.Module) -> list[nn.Module]:
    layers = [m for m in unit.modules() if isinstance(m, QuantMixin)]
    return layers[:-1]


class _Recorder:
    """Forward hooks on a unit's inner layers, registered once for a whole loop: `outs` holds
    their outputs of the latest forward pass (clear() before each)."""

    def __init__(self, layers: list[nn.Module]):
        self.layers, self.outs, self.hooks = layers, [], []

    def __enter__(self):
        self.hooks = [m.register_forward_hook(lambda mod, a, o: self.outs.append(o)) for m in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        self.hooks = []

    def clear(self):
        self.outs.clear()


@contextlib.contextmanager
def _drawing_from(act_qs, masks):
    """The quantizers draw their QDrop masks from `masks` inside the block (keep_mask after)."""
    for q in act_qs:
        q.mask_pool = masks
    try:
        yield
    finally:
        for q in act_qs:
            q.mask_pool = None


STAGES = ("joint", "weights", "acts")


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    return 0


# On an accelerator the unit's cached inputs and targets live on the device when they take at
# most this share of its free memory (no host-to-device copy per iteration, issue 34); larger
# caches stay in (pinned) host memory and each iteration copies its batch.
DEVICE_CACHE_SHARE = 0.5


def cache_device(nbytes: int, dev: torch.device) -> torch.device:
    """Where a unit's reconstruction cache of `nbytes` lives: `dev` itself (the CPU, or an
    accelerator with room for it), else the CPU."""
    if dev.type != "cuda":
        return dev
    free, _ = torch.cuda.mem_get_info(dev)
    return dev if nbytes <= DEVICE_CACHE_SHARE * free else torch.device("cpu")


@dataclass
class _UnitData:
    """What one unit's reconstruction runs on, cached once: its inputs from the FP and from
    the quantized model, the FP targets of its output and (FBR) inner layers, and the
    per-sample loss weights (step_balance). Every tensor holds the rows of the whole
    calibration set (in the denoiser's batch layout) on `device`: an iteration draws its batch
    as one index on that device."""

    fp_in: tuple                # (args, kwargs)
    q_in: tuple
    target: torch.Tensor        # unit output on FP inputs
    inner_targets: list         # [inner-layer outputs] on FP inputs
    inner: list[nn.Module]      # the quantized unit's inner layers with an FBR term
    chunk: int                  # rows per forward pass outside the loop (one calibration batch)
    device: torch.device = torch.device("cpu")
    weights: torch.Tensor | None = None  # per sample

    @property
    def rows(self) -> int:
        return self.target.shape[0]

    def chunks(self):
        """(quantized inputs, target) of consecutive row ranges, on the cache device."""
        for i in range(0, self.rows, self.chunk):
            idx = slice(i, i + self.chunk)
            yield _select(self.q_in, idx), self.target[idx]


def _capture(model, fp_model, unit, fp_unit, kind, calib, cfg, calib_batch, dev, name, fp_inputs,
             q_inputs=None) -> _UnitData:
    fp_in = capture_inputs(fp_model, fp_unit, calib, calib_batch) if fp_inputs is None else fp_inputs.take(name)
    q_in = capture_inputs(model, unit, calib, calib_batch) if q_inputs is None else q_inputs.take(name)
    inner = _inner_layers(unit) if cfg.add_loss > 0 and kind == "block" else []
    fp_inner = _inner_layers(fp_unit) if inner else []
    rows = _batched_leaves(fp_in)[0].shape[0]
    outs = _Rows(-(-rows // calib_batch))
    with torch.no_grad(), _Recorder(fp_inner) as rec:
        for i in range(0, rows, calib_batch):
            args, kwargs = _select(fp_in, slice(i, i + calib_batch))
            rec.clear()
            outs.add([_first_tensor(fp_unit(*_to(args, dev), **_to(kwargs, dev)))] + list(rec.outs))
    target, *inner_t = outs.result()
    where = cache_device(_nbytes((fp_in, q_in, target, inner_t)), dev)
    if where.type == "cpu" and dev.type != "cpu":
        fp_in, q_in, target, inner_t = _pin((fp_in, q_in, target, inner_t))
    else:
        fp_in, q_in, target, inner_t = _to((fp_in, q_in, target, inner_t), where)
    return _UnitData(fp_in, q_in, target, inner_t, inner, chunk=calib_batch, device=where)


def _pin(obj):
    return _map(torch.Tensor.pin_memory, obj)


def _unit_error(unit, data: _UnitData, dev) -> torch.Tensor:
    """Per-sample unit output error (channel_mse) over the calibration set, [N] on CPU."""
    errs = []
    with torch.no_grad():
        for (args, kwargs), y in data.chunks():
            out = _first_tensor(unit(*_to(args, dev), **_to(kwargs, dev)))
            errs.append(per_sample_mse(out, y.to(dev)).cpu())
    return torch.cat(errs) if errs else torch.zeros(0)


def _param_groups(qlayers, act_qs, cfg, round_lr: dict, learn_act, dev) -> tuple[list, list]:
    """Adam groups (AdaRound per weight part, one group per rounding lr; activation step
    sizes) and their lr shapes. round_lr: id(layer) -> its rounding lr, for the layers whose
    rounding is learned."""
    by_lr: dict[float, list] = {}
    for m in qlayers:
        if id(m) in round_lr:
            m.rounding = [AdaRoundQuantizer(wq, m.weight[:, sl] if m.split else m.weight).to(dev)
                          for wq, sl in m.weight_quantizers()]
            by_lr.setdefault(round_lr[id(m)], []).extend(r.alpha for r in m.rounding)
    for q in act_qs:
        q.scale.requires_grad_(learn_act)
        q.drop_prob = cfg.act_drop_prob
    groups, shapes = [], []
    for lr, alphas in by_lr.items():
        groups.append({"params": alphas, "lr": lr})
        shapes.append(cfg.lr_weight_schedule)
    if learn_act:
        # Adam moves a parameter by about lr per step whatever its gradient's size, so an
        # absolute lr means 5 % of a 0.02 step size but 0.1 % of a 1.0 one. With
        # lr_act_relative the lr is relative to each quantizer's initial step size (edadm's
        # own, scale-free across layers and models); the reference codes use one absolute lr.
        for q in act_qs:
            rel = float(q.scale.detach().abs().max()) if cfg.lr_act_relative else 1.0
            groups.append({"params": [q.scale], "lr": cfg.lr_act * rel})
            shapes.append("cosine")
    return groups, shapes


def _adam(groups, shapes, iters: int):
    """Adam over the groups, each group's lr constant or cosine-decayed over `iters` (its shape)."""
    opt = torch.optim.Adam(groups)
    T = max(1, iters)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [
        (lambda it: 0.5 * (1 + math.cos(math.pi * min(it, T) / T))) if shape == "cosine" else (lambda it: 1.0)
        for shape in shapes])
    return opt, sched


def _optimise(unit, name, stage, data: _UnitData, qlayers, act_qs, groups, shapes, cfg, iters, loss_p,
              learn_round, dev, ulog: UnitLog, progress: bool) -> str | None:
    """The Adam loop; returns why it stopped early (a non-finite loss), else None."""
    opt, sched = _adam(groups, shapes, iters)
    seed = cfg.seed + sum(map(ord, name)) + (7919 if stage == "acts" else 0)
    # indices drawn where the cache lives, QDrop's input masks where the unit runs: no
    # host round trip inside the loop
    gen = torch.Generator(device=data.device).manual_seed(seed)
    # QDrop's masks (input mixing and every activation quantizer's) from one pool on the
    # unit's device, seeded per unit (a resumed run draws the same ones)
    masks = MaskPool(dev, seed + 1)
    log_every = max(1, iters // 20)
    warm = int(cfg.warmup * iters)
    bar = tqdm(range(iters), desc=f"recon {name}" + ("" if stage == "joint" else f" ({stage})"), leave=False,
               disable=not progress)
    n, bs = data.rows, min(cfg.batch_size, data.rows)
    weights = None if data.weights is None else data.weights.to(data.device)
    # a non-finite loss is noticed at the next log step (one host synchronisation per log
    # step, none per iteration); the unit then falls back to its pre-reconstruction
    # parameters (_bake), so the iterations in between change nothing that is kept
    bad = torch.zeros((), dtype=torch.bool, device=dev)
    with _Recorder(data.inner) as rec, _drawing_from(act_qs, masks):
        for it in bar:
            idx = torch.randperm(n, generator=gen, device=data.device)[:bs]
            args, kwargs = _to(_select(data.q_in, idx), dev)
            if cfg.input_mix_prob > 0:  # QDrop: element-wise mix of quantized and FP inputs
                x_fp = _to(_select(data.fp_in[0][0], idx), dev)
                args = (torch.lerp(args[0], x_fp, masks(x_fp, cfg.input_mix_prob)), *args[1:])
            rec.clear()
            out = _first_tensor(unit(*args, **kwargs))
            rec_loss, block_loss, inner_loss = fbr_loss(
                out, _to(_rows(data.target, idx), dev), rec.outs, [_to(_rows(t, idx), dev) for t in data.inner_targets],
                cfg.add_loss, None if weights is None else _to(_rows(weights, idx), dev), p=loss_p)
            if not learn_round or it < warm or cfg.round_weight == 0:
                round_loss = torch.zeros((), device=dev)
            else:
                frac = (it - warm) / max(1, iters - warm)
                beta = cfg.b_end + (cfg.b_start - cfg.b_end) * max(0.0, 1 - frac)
                round_loss = cfg.round_weight * sum(r.round_loss(beta) for m in qlayers for r in (m.rounding or []))
            loss = rec_loss + round_loss
            bad |= ~torch.isfinite(loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if act_qs:  # a step size must stay positive
                torch._foreach_clamp_min_([q.scale.data for q in act_qs], 1e-8)
            if it % log_every == 0 or it == iters - 1:
                vals = torch.stack([block_loss.detach(), inner_loss.detach(), round_loss.detach(), loss.detach(),
                                    bad.float()]).tolist()
                if vals[4]:
                    return f"non-finite loss by iteration {it}"
                rec_ = {"iter": it, "block": vals[0], "inner": vals[1], "round": vals[2], "total": vals[3]}
                ulog.history.append(rec_)
                bar.set_postfix(block=f"{rec_['block']:.4g}", inner=f"{rec_['inner']:.4g}")
    return None


@torch.no_grad()
def _bake(name, qlayers, act_qs, saved_scales, failed, ulog: UnitLog) -> None:
    """Fix the hard rounding into the weights (of the layers that learned it), or on failure
    restore the step sizes."""
    if failed is None:
        for m in (m for m in qlayers if m.rounding):
            for r, (wq, sl) in zip(m.rounding, m.weight_quantizers()):
                r.hard = True
                w = m.weight.data[:, sl] if m.split else m.weight.data
                w.copy_(r(w))
    else:
        for q, s in zip(act_qs, saved_scales):
            q.scale.data.copy_(s)
        ulog.fallback = failed
        log.warning("reconstruction of %s failed (%s): keeping its pre-reconstruction parameters", name, failed)
    for m in qlayers:
        m.rounding = None


def reconstruct_unit(model: nn.Module, fp_model: nn.Module, name: str, kind: str, calib: CalibrationSet, cfg,
                     calib_batch: int, progress: bool = False, stage: str = "joint",
                     fp_inputs: FPInputs | None = None, q_inputs: QInputs | None = None,
                     layer_cfgs: dict | None = None, skip: frozenset = frozenset()) -> UnitLog:
    """Reconstruct unit `name` of `model` against the same unit of `fp_model`
    (full_precision_copy, quantizers off). `model` runs in the stage's quant state: weights
    and activations quantized ("joint", "acts"), or weights only ("weights").

    stage "joint" learns rounding and step sizes; "weights" the rounding alone; "acts" the
    activation step sizes alone (weights already hard-rounded). Capture -> targets ->
    optimise -> bake. fp_inputs: the FP inputs captured for several units at once (FPInputs),
    else this unit's are captured alone; q_inputs: the quantized model's inputs with earlier
    units' outputs replayed (QInputs), else by a full prefix pass.

    layer_cfgs: full layer name -> the ReconConfig of that layer's own bit width, for layers
    whose bits differ from the run's (mixed precision's 8-bit layers in a W4 run). Such a
    layer learns its rounding (and at which lr) by its own settings; a unit whose layers all
    share one such config takes its unit-wide settings (loss balance, step-size lr) from it.
    The iteration count is the run's. skip: full names of layers reconstructed elsewhere (the
    temporal block, recon/temporal.py): they run quantized but learn nothing here."""
    if stage not in STAGES:
        raise ValueError(f"unknown reconstruction stage {stage!r}")
    cfg.fill_defaults()
    unit, fp_unit = model.get_submodule(name), fp_model.get_submodule(name)
    named = [(f"{name}.{n}" if n else name, m) for n, m in unit.named_modules() if isinstance(m, QuantMixin)]
    skipped = [m for full, m in named if full in skip]
    named = [(full, m) for full, m in named if full not in skip]
    qlayers = [m for _, m in named]
    own = {id(m): (layer_cfgs or {}).get(full, cfg) for full, m in named}
    iters = cfg.act_iters if stage == "acts" else cfg.iters
    if qlayers and len({id(c) for c in own.values()}) == 1:
        ucfg = own[id(qlayers[0])]
        if ucfg is not cfg:
            ucfg.fill_defaults()
    else:
        ucfg = cfg
    round_lr = {id(m): own[id(m)].lr_weight for m in qlayers
                if stage in ("joint", "weights") and bool(own[id(m)].learn_rounding)}
    learn_round = bool(round_lr)
    learn_act = stage in ("joint", "acts") and ucfg.learn_act_scale
    dev = next(model.parameters()).device
    t0 = time.time()
    data = _capture(model, fp_model, unit, fp_unit, kind, calib, cfg, calib_batch, dev, name, fp_inputs, q_inputs)
    captured = time.time() - t0
    frozen_qs = {id(q) for m in skipped for q in m.modules()}
    act_qs = [m for m in unit.modules() if isinstance(m, UniformQuantizer) and m.role == "act" and bool(m.initialized)
              and m.enabled and id(m) not in frozen_qs] if stage != "weights" else []
    loss_p = ucfg.act_loss_p if stage == "acts" else 2.0
    ulog = UnitLog(name=name, kind=kind, iters=iters, seconds=0.0, capture_seconds=round(captured, 3))
    err0 = _unit_error(unit, data, dev)
    ulog.before = float(err0.mean())
    if ucfg.step_balance == "relative":
        # group by timestep, or by stretch of the trajectory (step_balance_bins)
        by = trajectory_bins(calib, ucfg.step_balance_bins) if ucfg.step_balance_bins else calib.t
        w = step_balance_weights(err0, calib.input_rows(by.reshape(-1).cpu(), calib_batch))
        data.weights = w
    saved_scales = [q.scale.detach().clone() for q in act_qs]
    groups, shapes = _param_groups(qlayers, act_qs, ucfg, round_lr, learn_act, dev)
    if not groups:  # nothing to learn here (no quantized weights in this stage, no step sizes)
        ulog.after, ulog.iters, ulog.seconds = ulog.before, 0, time.time() - t0
        for q in act_qs:
            q.drop_prob = 0.0
        return ulog
    try:
        failed = _optimise(unit, name, stage, data, qlayers, act_qs, groups, shapes, ucfg, iters, loss_p,
                           learn_round, dev, ulog, progress)
    finally:
        for q in act_qs:
            q.scale.requires_grad_(False)
            q.drop_prob = 0.0
    _bake(name, qlayers, act_qs, saved_scales, failed, ulog)
    ulog.after = float(_unit_error(unit, data, dev).mean())
    ulog.seconds = time.time() - t0
    return ulog


@contextlib.contextmanager
def frozen(model: nn.Module):
    """The model's parameters without gradients inside the block (restored after). Only the
    rounding and the step sizes are learned (their flags are set per unit): with the model's
    own weights frozen the backward pass computes no weight gradients, about half of a
    convolution's backward cost, and no .grad per weight that nothing reads (issue 34)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def reconstruct(model: nn.Module, calib: CalibrationSet, cfg, calib_batch: int = 64,
                progress: bool = True, done: list[dict] | None = None, on_unit=None, stage: str = "joint",
                index_offset: int = 0, fp_model: nn.Module | None = None,
                layer_cfgs: dict | None = None, skip: frozenset = frozenset()) -> list[UnitLog]:
    """Reconstruct every unit of a wrapped, scale-initialised model, in forward order, for one
    stage (reconstruct_unit). The model runs in the stage's quant state throughout and ends
    with every quantizer on.

    Checkpoint indices of this stage's units start at index_offset (two-stage runs number
    the second stage after the first); fp_model: the full-precision targets, when a first
    stage already made them (full_precision_copy).

    done: units already reconstructed by an interrupted run (edadm.checkpoint), applied
    instead of recomputed; on_unit(index, name, log_dict) is called after each new unit.
    Each unit seeds the global RNG from (seed, index), so a resumed run draws the same
    random numbers as an uninterrupted one. layer_cfgs: per-layer settings of other bit
    widths (reconstruct_unit); skip: layers reconstructed elsewhere (a unit made only of them
    is left out).
    """
    from ..checkpoint import Checkpoint
    from ..errors import EdadmError

    cfg.fill_defaults()
    units = dict(reconstruction_units(model, lambda m: isinstance(m, QuantMixin)))
    if skip:
        units = {n: k for n, k in units.items()
                 if not all((f"{n}.{sub}" if sub else n) in skip
                            for sub, m in model.get_submodule(n).named_modules() if isinstance(m, QuantMixin))}
    if fp_model is None:
        fp_model = full_precision_copy(model)  # before any unit's weights are rounded
    set_quant_state(model, weight=True, act=stage != "weights")
    args, kwargs = next(iter(calib.model_inputs(1, next(model.parameters()).device)))
    order = forward_order(model, list(units), args, kwargs)
    logs = []
    for i, saved in enumerate((done or [])[:len(order)]):  # a later stage's units follow in `done`
        if saved["name"] != order[i]:
            raise EdadmError(f"checkpoint unit {i} ({saved['name']}) does not match this model's reconstruction order")
        Checkpoint.apply_unit(model, saved)
        logs.append(UnitLog(**saved["log"]))
    if logs:
        log.info("resuming reconstruction after %d of %d units", len(logs), len(order))
    bar = tqdm(order, desc="reconstruction" + ("" if stage == "joint" else f" ({stage})"), disable=not progress,
               initial=len(logs))
    fp_inputs = FPInputs(fp_model, order[len(logs):], calib, calib_batch, cfg.capture_mb)
    q_inputs = QInputs(model, calib, calib_batch, cfg.capture_mb, final=order[:len(logs)])
    with frozen(model):
        for i, name in enumerate(order[len(logs):], start=len(logs)):
            bar.set_postfix(unit=name)
            torch.manual_seed(cfg.seed * 100_003 + index_offset + i)
            ulog = reconstruct_unit(model, fp_model, name, units[name], calib, cfg, calib_batch, progress=progress,
                                    stage=stage, fp_inputs=fp_inputs, q_inputs=q_inputs, layer_cfgs=layer_cfgs,
                                    skip=skip)
            q_inputs.mark_final(name)
            log.debug("%s %s: output MSE %.4g -> %.4g (%.1fs)", units[name], name, ulog.before, ulog.after,
                      ulog.seconds)
            logs.append(ulog)
            if on_unit is not None:
                on_unit(index_offset + i, name, asdict(ulog))
            bar.update(1)
    bar.close()
    set_quant_state(model, weight=True, act=True)
    return logs
