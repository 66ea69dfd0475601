"""The fused quantized-probability attention kernel (edadm.deploy.attention_triton).

CPU: the kernel runs under Triton's interpreter. Triton must be *imported* with
TRITON_INTERPRET=1 (its own library functions are decorated then), and a process can hold
triton only one way, so the ``@interpreted`` tests run in one child pytest with the
variable set (started by the first of them; each then reports the child's outcome for
itself), and nothing leaks into other tests. ``TRITON_INTERPRET=1 pytest <this file>`` runs
them directly. Reference: the materializing path the processor takes at eager inference
(``_attention_probs_inplace`` + ``StaticQuant``), in float32 and float64.

Agreement criterion: the kernel computes the same arithmetic with other summation orders
and another exp, so a probability code may differ by one where ``p * inv_scale`` is within
float32 noise of a rounding tie (x.5). ``test_codes_equal_reference_except_at_ties`` checks
the codes themselves (V = identity, so the output *is* the quantized map); exact ties are
checked on uniform attention; the output tests bound the error by a couple of flipped codes'
worth (``scale * max|v|``), a relative L2 error of 1e-5 (fp32) or the dtype's eps / 4
(fp16, bf16), and 1/100 (1/20) of the quantization's own effect. Measured under the
interpreter (triton 3.9, numpy), fp32 inputs, outputs ~1: no code differs from the float32
or float64 reference on these shapes; max abs error 0 to 7e-7 (<= 4e-5 codes' worth),
relative L2 error <= 9e-8, against a quantization effect of 7e-3 to 1.5e-2. fp16: equal,
bit for bit, to the float32 simulation rounded to fp16.
"""
import functools
import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from edadm.deploy import attention_triton as at
from edadm.deploy.intengine import StaticQuant
from edadm.quant.attention import _attention_probs_inplace, _quantize_probs_inplace

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install 'edadm[triton]')")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"   # this process runs the interpreter tests
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="no CUDA device")


def _interpreter_problem() -> str | None:
    """Why this process's triton interpreter cannot run the kernel, or None. Triton 3.6's
    interpreter takes int() of a 1-element numpy array for a loop bound given at run time,
    which numpy >= 2.5 refuses (triton 3.9 squeezes it first)."""
    import numpy as np
    import triton
    import triton.language as tl

    @triton.jit
    def loop_to(x_ptr, n):
        acc = tl.zeros([1], dtype=tl.float32)
        for _ in range(0, n, 1):
            acc += 1.0
        tl.store(x_ptr + tl.arange(0, 1), acc)

    x = torch.zeros(1)
    try:
        loop_to[(1,)](x, 3)
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means the same
        return f"triton {triton.__version__}'s interpreter fails with numpy {np.__version__}: {exc}"
    return None if float(x) == 3.0 else f"triton {triton.__version__}'s interpreter miscounts a loop"


@functools.lru_cache(maxsize=None)
def _child_outcomes() -> tuple[dict, str]:
    """Run this file's interpreter tests once in a child pytest under TRITON_INTERPRET=1:
    ({test name: ("passed" | "failed" | "skipped", text)}, the child's output tail)."""
    root = Path(__file__).resolve().parents[2]
    xml = Path(os.environ.get("TMPDIR", "/tmp")) / f"edadm-triton-interp-{os.getpid()}.xml"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "triton_interpreter",
                           str(Path(__file__).resolve()), f"--junitxml={xml}"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-4000:]
    outcomes = {}
    if xml.exists():
        for case in ET.parse(xml).iter("testcase"):
            outcome = ("passed", "")
            for kind in ("failure", "error", "skipped"):
                el = case.find(kind)
                if el is not None:
                    outcome = ("skipped" if kind == "skipped" else "failed", el.get("message") if kind == "skipped"
                               else el.text or el.get("message") or "")
                    break
            outcomes[case.get("name")] = outcome
        xml.unlink()
    return outcomes, tail


def interpreted(fn):
    """A test of the kernel on CPU: runs here under TRITON_INTERPRET=1, else reports the
    outcome of the same test in the interpreter child (see _child_outcomes)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if INTERPRETED:
            problem = _problem()
            if problem:
                pytest.skip(problem)
            return fn(*args, **kwargs)
        name = os.environ["PYTEST_CURRENT_TEST"].split("::")[-1].rsplit(" (", 1)[0]
        outcomes, tail = _child_outcomes()
        if name not in outcomes:
            pytest.fail(f"{name} did not run in the interpreter child:\n{tail}", pytrace=False)
        outcome, text = outcomes[name]
        if outcome == "skipped":
            pytest.skip(text.removeprefix("Skipped: "))
        if outcome == "failed":
            pytest.fail(f"under TRITON_INTERPRET=1:\n{text}", pytrace=False)
    return pytest.mark.triton_interpreter(run)


_problem = functools.lru_cache(maxsize=None)(_interpreter_problem)


def probs_quant(zero_point: int = 0, scale: float = 1 / 255) -> StaticQuant:
    inv = float(torch.tensor(1.0) / torch.tensor(scale))  # float32(1 / scale), as freezing stores it
    return StaticQuant(scale, inv, zero_point, 0, 255)


def params(sq: StaticQuant) -> tuple:
    return sq.scale, sq.inv_scale, sq.zero_point, sq.qmin, sq.qmax


def reference(q, k, v, scale: float, sq: StaticQuant, mask=None) -> torch.Tensor:
    """The processor's eager materializing path: scores, softmax, StaticQuant, bmm."""
    attn = SimpleNamespace(upcast_attention=False, upcast_softmax=False, scale=scale, probs_quantizer=sq)
    with torch.no_grad():
        return torch.bmm(_quantize_probs_inplace(attn, _attention_probs_inplace(attn, q, k, mask)), v)


def qkv(bh, lq, lk, d, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    # q scaled up: peaked rows, so the codes span most of [0, 255]
    q = torch.randn(bh, lq, d, generator=g) * 3
    k, v = torch.randn(bh, lk, d, generator=g), torch.randn(bh, lk, d, generator=g)
    return (t.to(device=device, dtype=dtype) for t in (q, k, v))


def check_close(out, ref, sq, v, unquantized, flips: float = 2.0, rel_l2: float = 1e-5, below_effect: float = 100):
    """out within `flips` codes' worth of ref everywhere, relative L2 error below `rel_l2`,
    and that error far below what quantizing the probabilities changes (the check sees it)."""
    out, ref, unquantized = out.double(), ref.double(), unquantized.double()
    err = (out - ref).abs().max().item()
    rel = ((out - ref).norm() / ref.norm()).item()
    effect = ((unquantized - ref).norm() / ref.norm()).item()
    assert err <= flips * sq.scale * v.abs().max().item(), (err, rel)
    assert rel <= rel_l2, (err, rel)
    assert rel < effect / below_effect, (rel, effect)


def check_codes(bh, lq, lk, zero_point=0, dtype=torch.float32, device="cpu", tie_rel=1e-5, max_flips=1e-4):
    """V = identity (head dim = Lk): the output is the quantized probability map itself, so
    the kernel's codes can be read back and compared with the float32 and float64
    simulations' one by one. A code may differ by one only at a rounding tie: where
    x = p * inv_scale (float64) lies within tie_rel * max(x, 1) of x.5 (a relative error
    of p: the scores' and the row sum's last bits, exp's). At most max_flips of them."""
    q, k, _ = qkv(bh, lq, lk, lk, dtype=dtype, device=device)
    v = torch.eye(lk, dtype=dtype, device=device).expand(bh, lk, lk).contiguous()
    sq, scale = probs_quant(zero_point), lk ** -0.5
    out = at.quant_attention(q, k, v, scale, params(sq))
    codes = torch.round(out.double() / sq.scale)   # exact: code * scale is recovered in any dtype here
    qf, kf = q.float(), k.float()
    p64 = torch.softmax(torch.bmm(qf.double(), kf.double().transpose(1, 2)) * scale, -1)
    ref32 = torch.round(reference(qf, kf, v.float(), scale, sq).double() / sq.scale)
    ref64 = torch.round(sq(p64).double() / sq.scale)
    assert codes.unique().numel() > 20  # really quantized, many levels
    x = p64 * sq.inv_scale
    tie_distance = (x - x.floor() - 0.5).abs()
    near_tie = tie_distance <= tie_rel * x.clamp(min=1)
    for name, ref in (("float32", ref32), ("float64", ref64)):
        diff = codes != ref
        where = f"vs {name}: {int(diff.sum())} of {diff.numel()} codes differ, at x = {x[diff][:8].tolist()}"
        assert ((codes - ref).abs() <= 1).all(), where
        assert (near_tie | ~diff).all(), where
        assert diff.sum() <= max(2, diff.numel() * max_flips), where


@pytest.mark.parametrize("lq,lk,zero_point", [(37, 37, 0), (37, 77, 7), (50, 37, -3)])
@interpreted
def test_codes_equal_reference_except_at_ties(lq, lk, zero_point):
    check_codes(2, lq, lk, zero_point)


@pytest.mark.parametrize("lk,inv_scale,zero_point,codes", [
    (4, 10.0, 0, 2),    # p = 1/4: x = 2.5 -> 2 (half to even, not half up)
    (8, 12.0, 0, 2),    # p = 1/8: x = 1.5 -> 2
    (8, 20.0, 1, 2),    # 2.5 -> 2, then + 1, clamp, - 1: rounded before the zero point is added
    (4, 2000.0, 0, 255),  # 500 clamped to qmax
])
@interpreted
def test_rounding_ties_half_to_even(lk, inv_scale, zero_point, codes):
    """Uniform attention (q = 0) makes p = 1 / lk exactly, so p * inv_scale lands exactly on
    chosen ties: the kernel must round them as torch.round does, and in StaticQuant's order."""
    q, k = torch.zeros(1, 3, lk), torch.randn(1, lk, lk)
    v = torch.eye(lk)[None]
    sq = StaticQuant(1 / inv_scale, inv_scale, zero_point, 0, 255)
    out = at.quant_attention(q, k, v, 1.0, params(sq))
    ref = reference(q, k, v, 1.0, sq)
    assert torch.equal(out, ref)
    assert torch.equal(out, torch.full_like(out, codes) * sq.scale)


@pytest.mark.parametrize("bh,lq,lk,d,zero_point", [
    (2, 37, 37, 40, 0),    # odd lengths, head dim padded 40 -> 64
    (3, 37, 77, 64, 0),    # cross-attention over 77 text tokens
    (2, 64, 77, 40, 7),    # non-zero zero point
    (2, 33, 20, 80, 0),    # head dim 80 -> 128, keys fewer than one block
])
@interpreted
def test_matches_materializing_path_fp32(bh, lq, lk, d, zero_point):
    q, k, v = qkv(bh, lq, lk, d)
    sq, scale = probs_quant(zero_point), d ** -0.5
    out = at.quant_attention(q, k, v, scale, params(sq))
    assert out.shape == (bh, lq, d) and out.dtype == torch.float32
    unquantized = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * scale, -1) @ v
    check_close(out, reference(q, k, v, scale, sq), sq, v, unquantized)
    check_close(out, reference(q.double(), k.double(), v.double(), scale, sq), sq, v, unquantized)


def half_reference(q, k, v, scale: float, sq: StaticQuant, mask=None):
    """The float32 simulation of fp16 / bf16 inputs: scores, softmax and quantizer in fp32,
    the quantized map cast to the inputs' dtype before bmm (as the simulation casts it), bmm
    in fp32, the output rounded to the dtype (as the kernel rounds its own)."""
    attn = SimpleNamespace(upcast_attention=False, upcast_softmax=False, scale=scale, probs_quantizer=sq)
    with torch.no_grad():
        probs = sq(_attention_probs_inplace(attn, q.float(), k.float(), mask))
        return torch.bmm(probs.to(q.dtype).float(), v.float()).to(q.dtype)


def check_half(out, q, k, v, scale, sq, mask=None):
    """fp16 / bf16 output against half_reference: within a couple of codes' worth plus one
    ulp of the dtype (the two roundings of nearly equal fp32 sums can differ by one), with
    a relative L2 error below the dtype's eps / 4 and far below the quantization's effect."""
    ref = half_reference(q, k, v, scale, sq, mask).float()
    unquantized = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                                   scale=scale)
    eps = torch.finfo(q.dtype).eps
    vmax = v.float().abs().max().item()
    check_close(out, ref, sq, v.float(), unquantized, flips=2 + eps * ref.abs().max().item() / (sq.scale * vmax),
                rel_l2=eps / 4, below_effect=20)


@interpreted
def test_fp16():
    """Measured (interpreter): bit-identical to the float32 simulation rounded to fp16 (the
    quantization's effect: 1.2e-2 relative L2). bf16 is compiled-only: the interpreter
    mishandles it, see available()."""
    q, k, v = qkv(2, 37, 77, 40, dtype=torch.float16)
    sq, scale = probs_quant(), 40 ** -0.5
    out = at.quant_attention(q, k, v, scale, params(sq))
    assert out.dtype == torch.float16
    check_half(out, q, k, v, scale, sq)


@pytest.mark.parametrize("mask_shape", ["keys", "full"])
@interpreted
def test_additive_mask(mask_shape):
    """Additive masks as diffusers' prepare_attention_mask gives them: [B*H, 1, Lk] (padded
    text tokens, large negative) or a full [B*H, Lq, Lk] bias."""
    bh, lq, lk, d = 2, 37, 77, 40
    q, k, v = qkv(bh, lq, lk, d)
    if mask_shape == "keys":
        mask = torch.zeros(bh, 1, lk)
        mask[:, :, 60:] = torch.finfo(torch.float32).min
    else:
        mask = torch.randn(bh, lq, lk, generator=torch.Generator().manual_seed(1))
    sq, scale = probs_quant(), d ** -0.5
    assert at.available(q, k, v, mask)
    out = at.quant_attention(q, k, v, scale, params(sq), mask=mask)
    unquantized = torch.softmax(torch.baddbmm(mask, q, k.transpose(1, 2), alpha=scale), -1) @ v
    check_close(out, reference(q, k, v, scale, sq, mask), sq, v, unquantized)
    if mask_shape == "keys":  # the masked keys do not reach the output at all
        v2 = v.clone()
        v2[:, 60:] = 1e3
        assert torch.equal(at.quant_attention(q, k, v2, scale, params(sq), mask=mask), out)


@interpreted
def test_available(monkeypatch):
    q = torch.randn(2, 8, 40)
    assert at.available(q)
    assert not at.available(q.to(torch.float64)) and not at.available(torch.randn(2, 8, 320))
    assert not at.available(q.bfloat16())   # the interpreter mishandles bf16 (compiled only)
    assert not at.available(torch.randn(2, 2, 8, 40))
    assert not at.available(q, torch.randn(2, 5, 40), torch.randn(2, 6, 40))   # k, v lengths differ
    assert not at.available(q, torch.randn(2, 5, 40), torch.randn(2, 5, 40), mask=torch.zeros(2, 7, 5))
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not at.available(q)   # CPU without the interpreter: the caller materializes
    with pytest.raises(ValueError, match="unsupported"):
        at.quant_attention(q, q, q, 1.0, params(probs_quant()))


def frozen_attention(cross_attention_dim=None, query_dim=80, heads=2, dim_head=40):
    """A diffusers Attention with QuantAttnProcessor and frozen (StaticQuant) quantizers."""
    from diffusers.models.attention_processor import Attention

    from edadm.quant.attention import add_attention_quantizers

    torch.manual_seed(0)
    attn = Attention(query_dim, heads=heads, dim_head=dim_head, cross_attention_dim=cross_attention_dim)
    add_attention_quantizers(attn, bits=8)
    for name in ("q_quantizer", "k_quantizer", "v_quantizer"):
        setattr(attn, name, StaticQuant(0.05, 20.0, 0, -128, 127))
    attn.probs_quantizer = probs_quant()
    return attn


@pytest.mark.parametrize("cross", [False, True])
@interpreted
def test_processor_uses_kernel_only_when_frozen_and_no_grad(monkeypatch, cross):
    """QuantAttnProcessor: the fused kernel at inference with a frozen StaticQuant, with the
    materializing autograd path's output; the materializing path with autograd on, or with
    the fake-quant quantizers of calibration."""
    from edadm.quant.attention import add_attention_quantizers

    attn = frozen_attention(24 if cross else None)
    calls = []
    fused = at.quant_attention
    monkeypatch.setattr(at, "quant_attention", lambda *a, **kw: calls.append(1) or fused(*a, **kw))
    x = torch.randn(2, 37, 80)
    ctx = torch.randn(2, 77, 24) if cross else None
    with torch.enable_grad():
        ref = attn(x, encoder_hidden_states=ctx).detach()
    assert not calls
    with torch.no_grad():
        out = attn(x, encoder_hidden_states=ctx)
    assert len(calls) == 1
    err = (out - ref).abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item(), err
    add_attention_quantizers(attn, bits=8)  # fake-quant, as during calibration: never fused
    with torch.no_grad():
        attn(x, encoder_hidden_states=ctx)
    assert len(calls) == 1


@interpreted
def test_custom_op_under_torch_compile():
    """Registered op with a fake implementation: opcheck passes and a fullgraph compile runs
    it (a graph break would raise)."""
    q, k, v = qkv(2, 37, 77, 40)
    sq, scale = probs_quant(), 40 ** -0.5
    args = (q, k, v, None, scale, *params(sq))
    torch.library.opcheck(torch.ops.edadm.quant_attention.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    f = torch.compile(lambda q, k, v: at.quant_attention(q, k, v, scale, params(sq)) * 2, fullgraph=True,
                      backend="aot_eager")
    assert torch.equal(f(q, k, v), at.quant_attention(q, k, v, scale, params(sq)) * 2)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_codes_equal_reference_except_at_ties(dtype):
    """The compiled kernel's codes (libdevice rint, fast exp, mma sums). Measured on an H200
    (triton 3.6), 2M codes each: 0 (fp32), 4 (fp16), 1 (bf16) differ from the float32
    simulation, each by one, at x within 1.7e-6 * x of a tie (x = 1.5, 1.5, 27.5, 81.5, 16.5)."""
    check_codes(8, 1024, 256, dtype=dtype, device="cuda", tie_rel=5e-5, max_flips=1e-5)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_sd_shape(dtype):
    """Stable Diffusion's 64x64 self-attention (8 heads of 40 at batch 2), compiled kernel,
    against the float32 simulation of the same inputs; and SD's cross-attention (77 text
    tokens, head dim 80) with a padding mask and a zero point. At 268M probabilities a few
    hundred codes sit at ties, so the relative L2 bound is looser than on CPU. Measured on
    an H200 (triton 3.6): relative L2 error 8e-5 (fp32) to 1.2e-4 (fp16, bf16), max abs
    error 0.7 to 1.5 codes' worth, against a quantization effect of 0.58."""
    q, k, v = qkv(16, 4096, 4096, 40, dtype=dtype, device="cuda")
    q = q * (2 / 3)   # peaked enough at 4096 keys that codes up to ~150 occur
    sq, scale = probs_quant(scale=1 / 4096), 40 ** -0.5
    assert at.available(q, k, v)
    out = at.quant_attention(q, k, v, scale, params(sq))
    assert out.dtype == dtype and out.shape == q.shape
    check_device(out, q, k, v, scale, sq)

    q, k, v = qkv(16, 1024, 77, 80, dtype=dtype, device="cuda")
    mask = torch.zeros(16, 1, 77, device="cuda", dtype=dtype)
    mask[:, :, 70:] = torch.finfo(dtype).min
    sq, scale = probs_quant(5), 80 ** -0.5
    out = at.quant_attention(q, k, v, scale, params(sq), mask=mask)
    check_device(out, q, k, v, scale, sq, mask.float())


def check_device(out, q, k, v, scale, sq, mask=None):
    ref = (reference(q, k, v, scale, sq, mask) if q.dtype == torch.float32
           else half_reference(q, k, v, scale, sq, mask).float())
    unquantized = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                                   scale=scale)
    eps = torch.finfo(q.dtype).eps
    vmax = v.float().abs().max().item()
    check_close(out, ref, sq, v.float(), unquantized, flips=2 + eps * ref.abs().max().item() / (sq.scale * vmax),
                rel_l2=5e-4, below_effect=20)


def graph_recorder(graphs: list):
    """A torch.compile backend that keeps each graph's code and runs it as traced."""
    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward
    return backend


def test_processor_compiles_fullgraph_on_cpu():
    """CPU (no interpreter): the processor's fused-path checks trace without a graph break
    (fullgraph raises on one) and leave the materializing path in the graph."""
    attn = frozen_attention(24)
    x, ctx = torch.randn(2, 37, 80), torch.randn(2, 77, 24)
    graphs = []
    compiled = torch.compile(attn, fullgraph=True, backend=graph_recorder(graphs))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, encoder_hidden_states=ctx), attn(x, encoder_hidden_states=ctx))
    assert len(graphs) == 1 and "quant_attention" not in graphs[0]


@needs_cuda
def test_cuda_processor_compiled_fullgraph():
    """A compiled attention block (fullgraph: a graph break raises) calls the fused op."""
    attn = frozen_attention(768, query_dim=320, heads=8).cuda().half()
    x, text = torch.randn(2, 1024, 320, device="cuda").half(), torch.randn(2, 77, 768, device="cuda").half()
    graphs = []
    compiled = torch.compile(attn, fullgraph=True, backend=graph_recorder(graphs))
    with torch.no_grad():
        eager = attn(x, encoder_hidden_states=text)
        torch.testing.assert_close(compiled(x, encoder_hidden_states=text), eager)
    assert len(graphs) == 1 and "edadm.quant_attention" in graphs[0]
