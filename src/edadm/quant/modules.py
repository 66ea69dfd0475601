"""Fake-quantized Conv2d and Linear: weight quantizer + input-activation quantizer.

They subclass the torch layers they replace, so parameter names, state-dict keys and
`isinstance` checks in diffusers keep working.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import ActObserver, UniformQuantizer


@dataclass(frozen=True)
class LayerSpec:
    """How one layer is quantized. act_bits None: input left in float."""

    weight_bits: int
    act_bits: int | None
    weight_symmetric: bool
    act_symmetric: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class QuantMixin:
    """Owns the quantizers of a layer and the switches between FP, fake-quant and observation."""

    spec: LayerSpec

    def _setup_quant(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.weight_quantizer = UniformQuantizer(spec.weight_bits, spec.weight_symmetric, per_channel=True,
                                                 channels=self.weight.shape[0])
        self.act_quantizer = (UniformQuantizer(spec.act_bits, spec.act_symmetric) if spec.act_bits else None)
        self.observer: ActObserver | None = None

    def set_quant_state(self, weight: bool, act: bool) -> None:
        self.weight_quantizer.enabled = weight
        if self.act_quantizer is not None:
            self.act_quantizer.enabled = act

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
        return self.act_quantizer(x) if self.act_quantizer is not None else x

    def quant_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)

    @classmethod
    def from_float(cls, mod: nn.Module, spec: LayerSpec):
        raise NotImplementedError


class QConv2d(QuantMixin, nn.Conv2d):
    @classmethod
    def from_float(cls, mod: nn.Conv2d, spec: LayerSpec) -> "QConv2d":
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                mod.groups, mod.bias is not None, mod.padding_mode, device="meta")
        q.weight, q.bias = mod.weight, mod.bias
        q._setup_quant(spec)
        return q.to(mod.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quant_input(x), self.quant_weight(), self.bias)


class QLinear(QuantMixin, nn.Linear):
    @classmethod
    def from_float(cls, mod: nn.Linear, spec: LayerSpec) -> "QLinear":
        q = cls(mod.in_features, mod.out_features, mod.bias is not None, device="meta")
        q.weight, q.bias = mod.weight, mod.bias
        q._setup_quant(spec)
        return q.to(mod.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)


QUANT_CLASSES = {nn.Conv2d: QConv2d, nn.Linear: QLinear}
