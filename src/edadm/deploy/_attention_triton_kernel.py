"""The Triton kernel of :mod:`edadm.deploy.attention_triton` (imported only when triton is).

Kept undecorated: ``attention_triton._kernel`` applies ``triton.jit`` at the first launch,
so importing the package never imports triton. Everything is inline in one function (a
``@triton.jit`` helper would be decorated at import).
"""
import triton.language as tl

try:  # triton >= 3.0: dispatches to CUDA's libdevice / AMD's ocml
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - older layouts
    from triton.language.extra.cuda import libdevice


def quant_attention_fwd(
    Q, K, V, Out, Mask,
    sqb, sqm, sqd, skb, skn, skd, svb, svn, svd, sob, som, sod, smb, smm, smn,
    Lq, Lk, D, num_m_blocks,
    sm_scale, p_scale, p_inv_scale, p_zero, p_min, p_max,
    HAS_MASK: tl.constexpr, USE_RINT: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # one program per (query block, batch*head); query blocks of one head are neighbours in
    # launch order, so they share K / V in L2. 1-d grid: no 65535 limit on batch*heads.
    pid = tl.program_id(0)
    bh = (pid // num_m_blocks).to(tl.int64)
    pid_m = pid % num_m_blocks

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Lq
    d_ok = offs_d < D  # the head dim is padded to BLOCK_D (a power of two) with zeros

    q = tl.load(Q + bh * sqb + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + bh * skb
    v_base = V + bh * svb
    m_base = Mask + bh * smb

    # ---- pass 1: row max m and row sum l of exp(s - m), online, fp32 ----
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Lk
        kt = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None] * skd,
                     mask=d_ok[:, None] & col_ok[None, :], other=0.0)  # [BLOCK_D, BLOCK_N]
        if IEEE:  # fp32 operands: true fp32 products (not tf32), as torch's fp32 bmm
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        s = s * sm_scale
        if HAS_MASK:
            s = s + tl.load(m_base + offs_m[:, None] * smm + offs_n[None, :] * smn,
                            mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row that is -inf so far (masked): subtract 0 instead of -inf, so exp gives 0, not NaN
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp(m_i - m_sub) + tl.sum(tl.exp(s - m_sub[:, None]), 1)
        m_i = m_new

    # torch's softmax multiplies exp(s - m) by 1 / l; correctly rounded reciprocal here
    # (a plain '/' may compile to an approximate division). l == 0 (a fully -inf row) gives
    # inf, then NaN probabilities, as torch gives.
    inv_l = tl.math.div_rn(tl.full([BLOCK_M], 1.0, dtype=tl.float32), l_i)
    m_sub = tl.where(m_i == float("-inf"), 0.0, m_i)

    # ---- pass 2: final p, quantized as StaticQuant does, times V ----
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Lk
        kt = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None] * skd,
                     mask=d_ok[:, None] & col_ok[None, :], other=0.0)
        # the same s as pass 1, bit for bit (same operations; fp fusion is off at launch)
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        s = s * sm_scale
        if HAS_MASK:
            s = s + tl.load(m_base + offs_m[:, None] * smm + offs_n[None, :] * smn,
                            mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        s = tl.where(col_ok[None, :], s, float("-inf"))
        p = tl.exp(s - m_sub[:, None]) * inv_l[:, None]

        # StaticQuant.forward, in its float32 order: x * inv_scale (one rounding), round half
        # to even, + zero point, clamp (NaN stays NaN as in torch.clamp), - zero point, * scale.
        # The rounding is a separate instruction (rint / the magic add) applied to the rounded
        # product, never fused with it.
        x = p * p_inv_scale
        if USE_RINT:
            c = libdevice.rint(x)
        else:
            # the interpreter (numpy) has no libdevice. 12582912 = 1.5 * 2**23: for
            # 0 <= x < 2**22 the fp32 sum has ulp 1, so the add rounds x half to even
            # (x >= 2**22 means codes far above any qmax, clamped anyway)
            c = (x + 12582912.0) - 12582912.0
        c = tl.clamp(c + p_zero, p_min, p_max, propagate_nan=tl.PropagateNan.ALL)
        pq = (c - p_zero) * p_scale
        # columns past Lk: their code is clamp(zp) - zp, 0 unless zp lies outside [qmin, qmax]
        pq = tl.where(col_ok[None, :], pq, 0.0)

        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :] * svd,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        # the simulation casts the quantized map to the activations' dtype before bmm: same
        # here (a no-op for fp32; for fp16 / bf16 the same rounding of code * scale)
        pv = pq.to(v.dtype)
        if IEEE:
            acc += tl.dot(pv, v, input_precision="ieee")
        else:
            acc += tl.dot(pv, v)

    tl.store(Out + bh * sob + offs_m[:, None] * som + offs_d[None, :] * sod, acc.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
