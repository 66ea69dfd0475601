import pytest
import torch
from diffusers.models.attention_processor import Attention

from edadm.deploy.intengine import StaticQuant
from edadm.quant.attention import QuantAttnProcessor, _attention_probs_inplace, add_attention_quantizers


@pytest.mark.parametrize("zero_point", [0, 7])
def test_static_quant_inplace_equals_forward(zero_point):
    x = torch.randn(3, 64, 64) * 2
    sq = StaticQuant(0.05, 1 / 0.05, zero_point, 0, 255)
    ref = sq(x)
    y = x.clone()
    out = sq.quantize_(y)
    assert out.data_ptr() == y.data_ptr()  # written over its input, no new map
    assert torch.equal(out, ref)
    assert (ref.unique().numel() > 100) and torch.equal(ref, sq(ref))  # really quantized: idempotent, many levels


@pytest.mark.parametrize("upcast", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_inplace_attention_probs_equal_diffusers(upcast, masked):
    torch.manual_seed(0)
    attn = Attention(32, heads=2, dim_head=16, upcast_attention=upcast, upcast_softmax=upcast)
    q, k = torch.randn(4, 50, 16), torch.randn(4, 30, 16)
    mask = torch.randn(4, 50, 30) if masked else None
    with torch.no_grad():
        assert torch.equal(_attention_probs_inplace(attn, q, k, mask), attn.get_attention_scores(q, k, mask))


def test_processor_same_output_with_and_without_autograd():
    """The eager no-grad path (in-place softmax and, in the integer engine, in-place
    probability quantization) gives what the autograd path gives."""
    torch.manual_seed(0)
    attn = Attention(32, heads=2, dim_head=16)
    add_attention_quantizers(attn, bits=8)
    assert isinstance(attn.processor, QuantAttnProcessor)
    x = torch.randn(2, 40, 32)
    for name in ("q_quantizer", "k_quantizer", "v_quantizer"):
        setattr(attn, name, StaticQuant(0.05, 20.0, 0, -128, 127))
    attn.probs_quantizer = StaticQuant(1 / 255, 255.0, 0, 0, 255)
    with torch.enable_grad():
        ref = attn(x)
    with torch.no_grad():
        out = attn(x)
    assert torch.equal(out, ref.detach())
