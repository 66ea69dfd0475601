"""Calibration strategies: how many calibration samples each sampler step gets.

Each strategy is one file of this package with a function registered under its name; it
takes (trajectories, QuantConfig, num_train_timesteps) and returns (per-step counts,
details for the report). Every module here is imported with the package, so config
validation, the CLI's --strategy choices and api.allocate pick a new file up by itself.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import torch

from ...errors import EdadmError

Allocator = Callable[..., tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class Strategy:
    name: str
    about: str
    allocate: Allocator
    needs_features: bool = False  # TDAC: trajectories must carry feature statistics
    options: tuple[str, ...] = ()  # the CalibConfig fields only this strategy reads


STRATEGIES: dict[str, Strategy] = {}


def register(name: str, about: str, needs_features: bool = False, options: tuple[str, ...] = ()):
    """Register an allocator; options: the CalibConfig fields only this strategy reads (the
    CLI groups their flags under it, and setting one for another strategy is a warning)."""
    def deco(fn: Allocator) -> Allocator:
        if name in STRATEGIES:
            raise ValueError(f"calibration strategy {name!r} registered twice")
        STRATEGIES[name] = Strategy(name, about, fn, needs_features, tuple(options))
        return fn
    return deco


def names() -> tuple[str, ...]:
    return tuple(STRATEGIES)


def owner_of(option: str) -> str | None:
    """The strategy that declares a CalibConfig field as its own option, if any."""
    return next((s.name for s in STRATEGIES.values() if option in s.options), None)


def get(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise EdadmError(f"unknown calibration strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def _discover() -> None:
    order = ["tdac", "uniform", "ptq4dm", "random"]  # help text order; others after, by name
    found = sorted((i.name for i in pkgutil.iter_modules(__path__)),
                   key=lambda n: (order.index(n) if n in order else len(order), n))
    for name in found:
        importlib.import_module(f"{__name__}.{name}")


_discover()
