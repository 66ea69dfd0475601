"""Kernel backends of the integer engine: one file per backend, each registering itself here.

A backend says what it supports (device, layer kind, code ranges, shapes), how it prepares a
layer part once (prepacked or rebuilt weights, whenever the layer moves or changes dtype) and
how it runs one call. :class:`~edadm.deploy.intengine.IntLayer` keeps the codes, the scales
and the choice; :func:`choose` makes the choice per layer part:

1. a backend forced by ``EDADM_INT_KERNEL`` (tests, benchmarks), if it can run the part;
2. then every registered backend that serves the part, by ascending ``priority``;
3. a backend with a ``verify`` guard (oneDNN's exactness probe on this CPU) is skipped where
   the guard fails; ``dequant`` (the simulation's own arithmetic in float) always serves.

Adding a kernel is one new module in this package that calls :func:`register`: every
module here is imported when the package is (no list to edit).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

import torch

KERNEL_ENV = "EDADM_INT_KERNEL"   # force a kernel (tests, benchmarks); a guard still applies


@dataclass(frozen=True)
class Part:
    """What a backend needs to know about one part of a layer (the split shortcut has two)."""

    kind: str                  # "conv" | "linear"
    device: torch.device
    act: Any                   # intengine.ActQuant, or None when the method keeps the input in float
    w_absmax: int              # largest |weight code| (zero point removed)
    geometry: tuple            # linear: (in, out); conv: (in, out, kh, kw, stride, padding, dilation, groups)


@dataclass(frozen=True)
class Backend:
    name: str
    about: str
    # lower runs first among the backends that serve a part
    priority: int
    # reason it serves the part unforced (None: it does not); forced=True: reason it *can* run it
    serves: Callable[[Part, bool], str | None]
    # state of part i of the layer, built once per device / dtype (weights prepacked or rebuilt)
    prepare: Callable[[Any, int], Any]
    # one call: (layer, x, part index, bias or None, prepared state) -> output in x's dtype
    run: Callable[[Any, torch.Tensor, int, torch.Tensor | None, Any], torch.Tensor]
    # exactness guard on this machine (None: exact by construction)
    verify: Callable[[Part], bool] | None = None


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    if backend.name in _REGISTRY:
        raise ValueError(f"integer backend {backend.name!r} registered twice")
    _REGISTRY[backend.name] = backend
    return backend


def get(name: str) -> Backend:
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].priority, n)))


def forced_kernel() -> str | None:
    v = os.environ.get(KERNEL_ENV, "").strip().lower()
    if v in ("", "auto"):
        return None
    if v not in _REGISTRY:
        from ...errors import EdadmError

        raise EdadmError(f"{KERNEL_ENV}={v!r}: choose from auto, {', '.join(names())}")
    return v


def candidates(part: Part) -> list[tuple[str, str]]:
    """(backend, reason) in order of preference for `part`; the first that passes its guard
    runs it ("dequant", the simulation's arithmetic in float, serves every quantized input)."""
    out: list[tuple[str, str]] = []
    forced = forced_kernel()
    if forced and _REGISTRY[forced].serves(part, True):
        out.append((forced, f"forced by {KERNEL_ENV}"))
    for name in names():
        why = _REGISTRY[name].serves(part, False)
        if why and name not in (k for k, _ in out):
            out.append((name, why))
    return out


def choose(part: Part) -> tuple[str, str]:
    """The backend that runs `part` here, and why."""
    for name, why in candidates(part):
        b = _REGISTRY[name]
        if b.verify is None or b.verify(part):
            return name, why
    raise RuntimeError(f"no integer backend serves {part}")  # pragma: no cover - dequant serves all


for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
