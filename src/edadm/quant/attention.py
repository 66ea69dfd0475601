"""Quantized attention: q, k, v and the softmax probabilities get activation quantizers.

A diffusers attention processor (the same computation as diffusers' `AttnProcessor`,
written out because the quantizers sit between its steps); the quantizers live on the
Attention module so they are saved, moved and switched with the model.
"""
from __future__ import annotations

import torch
from torch import nn

from .quantizer import UniformQuantizer

ATTN_QUANTIZERS = ("q_quantizer", "k_quantizer", "v_quantizer", "probs_quantizer")


def add_attention_quantizers(attn: nn.Module, bits: int, symmetric: bool = False) -> None:
    """Attach quantizers for q, k, v (per tensor) and the probabilities (unsigned: zero point 0)."""
    for name in ATTN_QUANTIZERS[:3]:
        setattr(attn, name, UniformQuantizer(bits, symmetric))
    attn.probs_quantizer = UniformQuantizer(bits, symmetric=False)
    attn.set_processor(QuantAttnProcessor())


def has_attention_quantizers(attn: nn.Module) -> bool:
    return isinstance(getattr(attn, "probs_quantizer", None), UniformQuantizer)


class QuantAttnProcessor:
    """diffusers-compatible processor with quantized q, k, v and attention probabilities."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)

        query = attn.head_to_batch_dim(attn.q_quantizer(query))
        key = attn.head_to_batch_dim(attn.k_quantizer(key))
        value = attn.head_to_batch_dim(attn.v_quantizer(value))

        hidden_states = _fused_quant_attention(attn, query, key, value, attention_mask)
        if hidden_states is None:
            if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
                probs = attn.probs_quantizer(attn.get_attention_scores(query, key, attention_mask))
            else:
                probs = _quantize_probs_inplace(attn, _attention_probs_inplace(attn, query, key, attention_mask))
            hidden_states = torch.bmm(probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _fused_quant_attention(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           mask: torch.Tensor | None) -> torch.Tensor | None:
    """``bmm(probs_quantizer(softmax(q k^T * scale + mask)), v)`` by the fused Triton kernel
    (edadm.deploy.attention_triton), which never materializes the probability map, or None
    where it does not apply and the caller materializes: autograd on (training, calibration),
    ONNX export, a probability quantizer that is not the frozen StaticQuant (fake-quant
    simulation), or inputs the kernel does not take (CPU, dtypes, head dims, masks).

    The kernel's scores and softmax are fp32 whatever ``upcast_attention`` /
    ``upcast_softmax`` say (the upcast result, or closer to it)."""
    if torch.is_grad_enabled() or torch.onnx.is_in_onnx_export():
        return None
    pq = attn.probs_quantizer
    if type(pq).__name__ != "StaticQuant":  # by name: edadm.deploy imports this module
        return None
    from ..deploy import attention_triton

    if not attention_triton.available(query, key, value, mask):
        return None
    return attention_triton.quant_attention(query, key, value, attn.scale,
                                            (pq.scale, pq.inv_scale, pq.zero_point, pq.qmin, pq.qmax), mask=mask)


def _attention_probs_inplace(attn, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`attn.get_attention_scores` with the softmax written over the scores.

    Eager inference only. The probability map is the largest tensor of the UNet (8 x 4096 x
    4096 float32 = 512 MiB per self-attention at SD's 64x64 latents); every fresh map costs
    page faults that take longer than the arithmetic (measured: softmax into a new tensor
    150 ms, over its input 40 ms). Same operations, same results as diffusers' version.
    """
    dtype = query.dtype
    if attn.upcast_attention:
        query, key = query.float(), key.float()
    if mask is None:
        scores = torch.baddbmm(torch.empty(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype,
                                           device=query.device), query, key.transpose(-1, -2), beta=0, alpha=attn.scale)
    else:
        scores = torch.baddbmm(mask, query, key.transpose(-1, -2), beta=1, alpha=attn.scale)
    if attn.upcast_softmax:
        scores = scores.float()
    torch.softmax(scores, dim=-1, out=scores)
    return scores.to(dtype)


def _quantize_probs_inplace(attn, probs: torch.Tensor) -> torch.Tensor:
    """The probability quantizer, over the map itself where the quantizer can (the integer
    engine's frozen `StaticQuant`); the training-time quantizer allocates as usual."""
    quantize_ = getattr(attn.probs_quantizer, "quantize_", None)
    return quantize_(probs) if quantize_ is not None else attn.probs_quantizer(probs)
