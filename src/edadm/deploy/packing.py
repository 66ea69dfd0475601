"""Integer weight storage: unsigned codes in uint8, two per byte at 4 bits or fewer."""
from __future__ import annotations

import torch


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flatten unsigned codes (0..2^bits-1) into uint8; pairs share a byte when bits <= 4."""
    u = codes.reshape(-1).to(torch.uint8)
    if bits > 4:
        return u
    if u.numel() % 2:
        u = torch.cat([u, u.new_zeros(1)])
    return u[0::2] | (u[1::2] << 4)


def unpack_codes(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 codes of the given shape."""
    n = 1
    for s in shape:
        n *= s
    if bits > 4:
        return packed.reshape(shape)
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack([lo, hi], dim=1).reshape(-1)[:n].reshape(shape)
