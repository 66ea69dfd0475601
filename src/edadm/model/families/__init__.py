"""Denoiser families: what edadm needs to know about each kind of diffusers denoiser.

A family owns its call signature, the module classes reconstructed as one unit, the TDAC
feature point, the skip-concatenation split points and the layers kept at 8 bits. Each lives
in one file of this package and registers itself; every module here is imported when the
package is, so a new family is one new file (see unet2d.py for the smallest one).
"""
from __future__ import annotations

import importlib
import pkgutil

import torch
from torch import nn

from ...errors import EdadmError


class DenoiserFamily:
    """Base class; subclasses set the class attributes and override what differs."""

    name: str = ""
    about: str = ""
    component: str = "unet"                  # the pipeline attribute holding the denoiser
    block_classes: tuple[str, ...] = ()      # module classes reconstructed as one unit (BRECQ blocks)
    # METHOD.md: the first time-embedding layer and the output layer stay at 8 bits and the
    # output layer's input is not quantized (fnmatch patterns over module names)
    keep_8bit: tuple[str, ...] = ()
    no_act_quant: tuple[str, ...] = ()

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def forward(self, model: nn.Module, x: torch.Tensor, t, **kw) -> torch.Tensor:
        """The model's prediction (all its output channels) for x at timestep t."""
        return model(x, t, **kw).sample

    def feature_module(self, model: nn.Module) -> tuple[str, nn.Module]:
        """(name, module) whose input is TDAC's feature map."""
        raise ValueError(f"{type(model).__name__} has no TDAC feature point")

    def split_points(self, model: nn.Module) -> dict[str, int]:
        """{conv name: k} for layers fed by torch.cat([h, skip]) (Q-Diffusion's split)."""
        return {}

    def num_classes(self, model: nn.Module) -> int | None:
        """Real classes of a class-conditional denoiser (the null class is index num_classes)."""
        return None

    def sample_shape(self, model: nn.Module) -> tuple[int, int, int]:
        size = model.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (model.config.in_channels, h, w)

    def example_inputs(self, model: nn.Module, batch: int = 2) -> tuple[list[str], tuple]:
        """Input names (the denoiser's argument names, used as ONNX input names) and example
        tensors for tracing: sample and timestep, plus class_labels for class-conditional
        UNets. A family whose export is not covered raises EdadmError."""
        c, h, w = self.sample_shape(model)
        g = torch.Generator().manual_seed(0)
        sample = torch.randn(batch, c, h, w, generator=g)
        timestep = torch.tensor([999, 10][:batch] + [500] * max(0, batch - 2), dtype=torch.long)
        names, args = ["sample", "timestep"], [sample, timestep]
        n = getattr(model.config, "num_class_embeds", None)
        if n:
            names.append("class_labels")
            args.append(torch.arange(batch, dtype=torch.long) % n)
        return names, tuple(args)


FAMILIES: dict[str, DenoiserFamily] = {}


def register(cls: type[DenoiserFamily]) -> type[DenoiserFamily]:
    """Class decorator: add a family to the registry under cls.name."""
    if not cls.name or cls.name in FAMILIES:
        raise ValueError(f"denoiser family name {cls.name!r} is empty or taken")
    FAMILIES[cls.name] = cls()
    return cls


def family_of(model: nn.Module) -> DenoiserFamily:
    for fam in FAMILIES.values():
        if fam.matches(model):
            return fam
    raise EdadmError(f"{type(model).__name__} is not a supported denoiser (families: {', '.join(FAMILIES)})")


def components() -> tuple[str, ...]:
    """Pipeline attributes that can hold a denoiser, in registry order."""
    return tuple(dict.fromkeys(f.component for f in FAMILIES.values()))


def denoiser_name(pipe) -> str:
    names = components()
    for name in names:
        if getattr(pipe, name, None) is not None:
            return name
    from ...state import pipeline_class

    raise EdadmError(f"pipeline {pipeline_class(pipe)} has no denoiser (no {' or '.join(names)} component)")


def get_denoiser(pipe) -> nn.Module:
    """The module edadm quantizes: pipe.unet, or pipe.transformer for DiT."""
    return getattr(pipe, denoiser_name(pipe))


def call_denoiser(model, x: torch.Tensor, t, **kw) -> torch.Tensor:
    """eps (or v) prediction of any supported denoiser, with x's channels and dtype. A
    variance predicted in upper channels (DiT's learned sigma) is dropped, as DiTPipeline
    does (the samplers edadm drives use fixed variances). A denoiser run in another float
    dtype (compile_denoiser's bf16) gets its float inputs cast to it."""
    in_dtype = x.dtype
    dt = getattr(model, "dtype", in_dtype)
    if isinstance(dt, torch.dtype) and dt.is_floating_point and dt != in_dtype:
        x = x.to(dt)
        kw = {k: v.to(dt) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    out = family_of(model).forward(model, x, t, **kw)
    out = out[:, :x.shape[1]] if out.shape[1] > x.shape[1] else out
    return out.to(in_dtype)


def num_classes(model) -> int | None:
    return family_of(model).num_classes(model)


def sample_shape(model) -> tuple[int, int, int]:
    return family_of(model).sample_shape(model)


def block_class_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys(c for f in FAMILIES.values() for c in f.block_classes))


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")


_discover()
