"""Fake-quantized Conv2d and Linear: weight quantizer + input-activation quantizer.

They subclass the torch layers they replace, so parameter names, state-dict keys and
`isinstance` checks in diffusers keep working.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import UniformQuantizer


@dataclass(frozen=True)
class LayerSpec:
    """How one layer is quantized. act_bits None: input left in float."""

    weight_bits: int
    act_bits: int | None
    weight_symmetric: bool
    act_symmetric: bool = False
    split: int = 0  # > 0: input channels [:split] and [split:] quantized separately (skip concatenation)

    def to_dict(self) -> dict:
        return asdict(self)


def int_kernel_problem(spec: LayerSpec) -> str | None:
    """None if integer kernels can run a layer quantized as `spec`, else why not: the one
    place this is decided (wrap warns at quantize time; the loader and the integer engine
    obey it). Weight codes minus their zero point must fit int8: symmetric codes always do,
    asymmetric ones only below 8 bits."""
    if spec.weight_bits == 8 and not spec.weight_symmetric:
        return "8-bit asymmetric weights: codes minus zero point do not fit int8 kernels"
    return None


class QuantMixin:
    """Owns the quantizers of a layer and the switches between FP, fake-quant and observation."""

    spec: LayerSpec

    def _setup_quant(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.weight_quantizer = UniformQuantizer(spec.weight_bits, spec.weight_symmetric, per_channel=True,
                                                 channels=self.weight.shape[0], role="weight")
        self.act_quantizer = (UniformQuantizer(spec.act_bits, spec.act_symmetric) if spec.act_bits else None)
        self.split = 0
        self.rounding: list | None = None  # AdaRound modules per weight part, only during reconstruction
        if spec.split:
            self._setup_split(spec.split)

    def _setup_split(self, k: int) -> None:
        """Q-Diffusion's split shortcut: input channels [:k] and [k:] (a skip concatenation)
        get their own activation quantizer and their own per-output-channel weight quantizer."""
        if not 0 < k < self.weight.shape[1]:
            raise ValueError(f"split {k} outside the {self.weight.shape[1]} input channels")
        self.split = k
        self.weight_quantizer2 = UniformQuantizer(self.spec.weight_bits, self.spec.weight_symmetric, per_channel=True,
                                                  channels=self.weight.shape[0], role="weight")
        self.act_quantizer2 = (UniformQuantizer(self.spec.act_bits, self.spec.act_symmetric)
                               if self.spec.act_bits else None)

    def weight_quantizers(self) -> list[tuple[UniformQuantizer, slice]]:
        """(quantizer, input-channel slice of the weight) pairs."""
        if not self.split:
            return [(self.weight_quantizer, slice(None))]
        return [(self.weight_quantizer, slice(0, self.split)), (self.weight_quantizer2, slice(self.split, None))]

    def act_quantizers(self) -> list[UniformQuantizer]:
        return [q for q in (self.act_quantizer, getattr(self, "act_quantizer2", None)) if q is not None]

    def set_quant_state(self, weight: bool, act: bool) -> None:
        for wq, _ in self.weight_quantizers():
            wq.enabled = weight
        for aq in self.act_quantizers():
            aq.enabled = act

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quantizer is None:
            return x
        if self.split:
            return torch.cat([self.act_quantizer(x[:, :self.split]), self.act_quantizer2(x[:, self.split:])], dim=1)
        return self.act_quantizer(x)

    def quant_weight(self) -> torch.Tensor:
        parts = []
        for i, (wq, sl) in enumerate(self.weight_quantizers()):
            w = self.weight[:, sl] if self.split else self.weight
            parts.append(self.rounding[i](w) if self.rounding is not None and wq.enabled else wq(w))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

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
