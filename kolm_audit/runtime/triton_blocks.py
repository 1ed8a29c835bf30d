"""Composite Triton kernels of ``kolm-int/1``: several operations per launch, the same integers as the reference.

At the sizes where a GPU forward is bound by kernel launches, what matters is the number of launches per layer.
These kernels chain the operations that always follow each other (``docs/runtime-spec.md`` "Fast backends"), each
step the scalar transcription of the reference with the bounds of the spec, on the row helpers of
:mod:`kolm_audit.runtime.triton_kernels`:

* :func:`linear_block` — a linear layer's epilogue from the exact GEMM partial products (K-chunks × weight digits,
  summed in int64), optionally followed by SwiGLU (gate|up columns) or GELU, the saturated residual add, the next
  LayerNorm/RMSNorm, and the §3.3 quantization of the result row for the next linear layer. One program per row;
  passes over the row's column blocks, with a block barrier before re-reading what the program wrote.
* :func:`qkv_rope` — the q|k|v epilogue with RoPE on the q and k heads and the §3.3 rows of every q and k head
  (what attention quantizes); one program per (token, head).
* :func:`attention` — §5.2 for one query row and head per program: integer scores (``Σ_d qq·kq`` in int32,
  ``< 2^22``), the maximum over valid keys, ``Σ exp``, the probabilities and ``Σ_j P·V`` in int64 (``< 2^48``), the
  rounding — three passes over the keys (the maximum, then the total, are needed before the next). Keys come from
  their §3.3 memo (int8 rows, ``m``, ``e``); the key range is the whole tensor, a per-row segment (packed requests)
  or a length read from device memory (a static KV cache: no host value, so a CUDA graph can replay it).
* :func:`norm_quant`, :func:`embedding`, :func:`quantize_heads`, :func:`kv_write` — a norm with the quantization of
  its output, the int8 embedding lookup, per-head §3.3 rows, and the static KV cache write at a device slot.

Every program works on independent rows, so the grid never changes an output. Under ``TRITON_INTERPRET=1`` they run
on CPU tensors (the unit tests compare them with the numpy reference there).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kolm_audit.runtime.triton_kernels import (
    _count_at_least,
    _floordiv,
    _gelu,
    _lut,
    _norm_row,
    _norm_scale,
    _quant_apply,
    _quant_params,
    _requant,
    _rope_pair,
    _round_shift,
    _sat,
    _swiglu,
)

NEG = tl.constexpr(-(1 << 62))                                   # below every score (|s| < 2^51)


@triton.jit
def _acc(p_ptr, sp_c, row_off, cols, ok, n_lin, chunks, digits):
    """``Σ_c Σ_l p[c, r, l·N + col] · 256^l``: the exact accumulator of a linear layer from its GEMM partials
    (each an integer below 2^31 held in int32/fp32/fp64; ``|Σ| <= K·127·wmax < 2^45``)."""
    acc = (cols * 0).to(tl.int64)
    pc = p_ptr + row_off                                          # pointer steps: no 32-bit offset products
    for _c in range(chunks):
        pd = pc
        for dg in range(digits):
            acc += tl.load(pd + cols, mask=ok, other=0).to(tl.int64) << (8 * dg)
            pd += n_lin
        pc += sp_c
    return acc


@triton.jit
def _ep(acc, m, e, mult_ptr, shift_ptr, bias_ptr, cols, ok):
    """Spec §4.2 tail: ``sat(requantize(acc·m, M, S - e) + bias)``."""
    mult = tl.load(mult_ptr + cols, mask=ok, other=0)
    shift = tl.load(shift_ptr + cols, mask=ok, other=40)
    bias = tl.load(bias_ptr + cols, mask=ok, other=0)
    return _sat(_requant(acc * m, mult, shift - e) + bias)


@triton.jit
def linear_block(p_ptr, sp_c, sp_r, chunks, digits, n_lin, m_ptr, e_ptr, mult_ptr, shift_ptr, bias_ptr,
                 res_ptr, s_res, out_ptr, h_ptr, gamma_ptr, beta_ptr, eps_q32, rs_ptr, n_rs, act_ptr, n_act,
                 q_ptr, s_q, qm_ptr, qe_ptr, n_out, ACT: tl.constexpr, RES: tl.constexpr, NORM: tl.constexpr,
                 QUANT: tl.constexpr, BLOCK: tl.constexpr):
    """Row ``program_id`` of a linear layer from its partials ``p`` [C, R, L·N] (element strides ``sp_c``, ``sp_r``):
    ``y = epilogue`` (ACT 1: SwiGLU of the gate|up halves, 2: GELU); RES: ``x = sat(res + y)``; stored int32 in
    ``out`` [R, n_out]. NORM (1 RMSNorm, 2 LayerNorm): ``h = norm(x)`` int32 into ``h``. QUANT: §3.3 of the last
    result (``h`` or ``out``) into ``q`` (row stride ``s_q``, dtype of ``q_ptr``), ``qm``, ``qe``."""
    r = tl.program_id(0).to(tl.int64)
    m = tl.load(m_ptr + r).to(tl.int64)
    e = tl.load(e_ptr + r).to(tl.int64)
    poff = r * sp_r
    base = tl.arange(0, BLOCK)
    zero = tl.sum((base * 0).to(tl.int64), axis=0)
    total = zero
    amax = zero
    for j0 in range(0, n_out, BLOCK):
        cols = j0 + base
        ok = cols < n_out
        y = _ep(_acc(p_ptr, sp_c, poff, cols, ok, n_lin, chunks, digits), m, e, mult_ptr, shift_ptr, bias_ptr,
                cols, ok)
        if ACT == 1:
            up = _ep(_acc(p_ptr, sp_c, poff, cols + n_out, ok, n_lin, chunks, digits), m, e, mult_ptr, shift_ptr,
                     bias_ptr, cols + n_out, ok)
            y = _swiglu(y, up, act_ptr, n_act)
        if ACT == 2:
            y = _gelu(y, act_ptr, n_act)
        if RES:
            y = _sat(tl.load(res_ptr + r * s_res + cols, mask=ok, other=0).to(tl.int64) + y)
        y = tl.where(ok, y, 0)
        tl.store(out_ptr + r * n_out + cols, y.to(tl.int32), mask=ok)
        total += tl.sum(y, axis=0)
        amax = tl.maximum(amax, tl.max(tl.abs(y), axis=0))
    if NORM > 0:
        tl.debug_barrier()                                        # the row written above is read back below
        if NORM == 2:  # noqa: SIM108 (a constexpr branch: Triton compiles one side)
            mu = _floordiv(total + (n_out >> 1), n_out)           # rdiv(Σx, H)
        else:
            mu = zero
        cmax = zero
        for j0 in range(0, n_out, BLOCK):
            cols = j0 + base
            ok = cols < n_out
            c = tl.where(ok, tl.load(out_ptr + r * n_out + cols, mask=ok, other=0).to(tl.int64) - mu, 0)
            cmax = tl.maximum(cmax, tl.max(tl.abs(c), axis=0))
        k = _count_at_least(cmax, 24, 40)                         # max(0, bits(cmax) - 24)
        sq = zero
        for j0 in range(0, n_out, BLOCK):
            cols = j0 + base
            ok = cols < n_out
            c2 = _round_shift(tl.where(ok, tl.load(out_ptr + r * n_out + cols, mask=ok, other=0).to(tl.int64) - mu,
                                       0), k)
            sq += tl.sum(c2 * c2, axis=0)
        rr, sh = _norm_scale(sq, n_out, k, eps_q32, rs_ptr, n_rs)
        amax = zero
        for j0 in range(0, n_out, BLOCK):
            cols = j0 + base
            ok = cols < n_out
            c = tl.where(ok, tl.load(out_ptr + r * n_out + cols, mask=ok, other=0).to(tl.int64) - mu, 0)
            hy = _requant(c * rr, tl.load(gamma_ptr + cols, mask=ok, other=0).to(tl.int64), sh)
            if NORM == 2:
                hy += tl.load(beta_ptr + cols, mask=ok, other=0).to(tl.int64)
            hy = tl.where(ok, _sat(hy), 0)
            tl.store(h_ptr + r * n_out + cols, hy.to(tl.int32), mask=ok)
            amax = tl.maximum(amax, tl.max(tl.abs(hy), axis=0))
    if QUANT:
        tl.debug_barrier()
        qm, qe = _quant_params(amax)
        for j0 in range(0, n_out, BLOCK):
            cols = j0 + base
            ok = cols < n_out
            if NORM > 0:
                x = tl.load(h_ptr + r * n_out + cols, mask=ok, other=0).to(tl.int64)
            else:
                x = tl.load(out_ptr + r * n_out + cols, mask=ok, other=0).to(tl.int64)
            q = _quant_apply(x, qm, qe)
            tl.store(q_ptr + r * s_q + cols, q.to(tl.float32).to(q_ptr.dtype.element_ty), mask=ok)
        tl.store(qm_ptr + r, qm)
        tl.store(qe_ptr + r, qe)


@triton.jit
def norm_quant(x_ptr, sx, gamma_ptr, beta_ptr, out_ptr, q_ptr, s_q, qm_ptr, qe_ptr, h, eps_q32, table_ptr, nt,
               CENTER: tl.constexpr, QUANT: tl.constexpr, BLOCK: tl.constexpr):
    """Spec §5.3 LayerNorm (``CENTER``) or RMSNorm of row ``program_id`` into ``out`` (its dtype); QUANT: and the
    §3.3 row of the result into ``q``, ``qm``, ``qe``."""
    r = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < h
    x = tl.load(x_ptr + r * sx + offs, mask=ok, other=0).to(tl.int64)
    y = tl.where(ok, _norm_row(x, ok, h, gamma_ptr, beta_ptr, offs, eps_q32, table_ptr, nt, CENTER), 0)
    tl.store(out_ptr + r * h + offs, y.to(out_ptr.dtype.element_ty), mask=ok)
    if QUANT:
        qm, qe = _quant_params(tl.max(tl.abs(y), axis=0))
        q = _quant_apply(y, qm, qe)
        tl.store(q_ptr + r * s_q + offs, q.to(tl.float32).to(q_ptr.dtype.element_ty), mask=ok)
        tl.store(qm_ptr + r, qm)
        tl.store(qe_ptr + r, qe)


@triton.jit
def qkv_rope(p_ptr, sp_c, sp_r, chunks, digits, n_lin, m_ptr, e_ptr, mult_ptr, shift_ptr, bias_ptr, pos_ptr,
             cos_ptr, sin_ptr, out_ptr, q8_ptr, qm_ptr, qe_ptr, k8_ptr, km_ptr, ke_ptr, nh, nkv, half,
             ROPE: tl.constexpr, BLOCK: tl.constexpr):
    """Token ``program_id(0)``, head ``program_id(1)`` of a q|k|v linear layer (heads ``[0, nh)`` q, then ``nkv`` k,
    then ``nkv`` v, each ``2·half`` columns): epilogue, RoPE at the token's position on q and k heads (``ROPE``),
    stored int32 into ``out`` [R, (nh + 2·nkv)·D]; the §3.3 row of a q head into ``q8`` [R, nh, D] int8, ``qm``,
    ``qe`` [R, nh], of a k head into ``k8``, ``km``, ``ke``."""
    r = tl.program_id(0).to(tl.int64)
    hd = tl.program_id(1).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < half
    m = tl.load(m_ptr + r).to(tl.int64)
    e = tl.load(e_ptr + r).to(tl.int64)
    poff = r * sp_r
    ca = hd * 2 * half + offs
    ya = _ep(_acc(p_ptr, sp_c, poff, ca, ok, n_lin, chunks, digits), m, e, mult_ptr, shift_ptr, bias_ptr, ca, ok)
    yb = _ep(_acc(p_ptr, sp_c, poff, ca + half, ok, n_lin, chunks, digits), m, e, mult_ptr, shift_ptr, bias_ptr,
             ca + half, ok)
    if ROPE:
        p = tl.load(pos_ptr + r).to(tl.int64)
        c = tl.load(cos_ptr + p * half + offs, mask=ok, other=0).to(tl.int64)
        s = tl.load(sin_ptr + p * half + offs, mask=ok, other=0).to(tl.int64)
        ra, rb = _rope_pair(ya, yb, c, s)
        rot = hd < nh + nkv
        ya = tl.where(rot, ra, ya)
        yb = tl.where(rot, rb, yb)
    ya = tl.where(ok, ya, 0)
    yb = tl.where(ok, yb, 0)
    width = (nh + 2 * nkv) * 2 * half
    tl.store(out_ptr + r * width + ca, ya.to(tl.int32), mask=ok)
    tl.store(out_ptr + r * width + ca + half, yb.to(tl.int32), mask=ok)
    if hd < nh + nkv:
        qm, qe = _quant_params(tl.maximum(tl.max(tl.abs(ya), axis=0), tl.max(tl.abs(yb), axis=0)))
        qa = _quant_apply(ya, qm, qe).to(tl.int8)
        qb = _quant_apply(yb, qm, qe).to(tl.int8)
        if hd < nh:
            i = r * nh + hd
            tl.store(q8_ptr + i * 2 * half + offs, qa, mask=ok)
            tl.store(q8_ptr + i * 2 * half + half + offs, qb, mask=ok)
            tl.store(qm_ptr + i, qm)
            tl.store(qe_ptr + i, qe)
        else:
            i = r * nkv + hd - nh
            tl.store(k8_ptr + i * 2 * half + offs, qa, mask=ok)
            tl.store(k8_ptr + i * 2 * half + half + offs, qb, mask=ok)
            tl.store(km_ptr + i, qm)
            tl.store(ke_ptr + i, qe)


@triton.jit
def quantize_heads(x_ptr, s0, s1, s2, q_ptr, m_ptr, e_ptr, nh, t, d, BLOCK: tl.constexpr):
    """Spec §3.3 of row ``program_id`` of ``x`` [B, H, T, D] (element strides ``s0..s2``, unit last) into the
    contiguous ``q`` [B, H, T, D] int8, ``m``, ``e`` [B, H, T]."""
    row = tl.program_id(0).to(tl.int64)
    b = row // (nh * t)
    h = (row // t) % nh
    i = row % t
    offs = tl.arange(0, BLOCK)
    ok = offs < d
    x = tl.load(x_ptr + b * s0 + h * s1 + i * s2 + offs, mask=ok, other=0).to(tl.int64)
    m, e = _quant_params(tl.max(tl.abs(x), axis=0))
    tl.store(q_ptr + row * d + offs, _quant_apply(x, m, e).to(tl.int8), mask=ok)
    tl.store(m_ptr + row, m)
    tl.store(e_ptr + row, e)


@triton.jit
def kv_write(k_ptr, sk0, sk1, sk2, v_ptr, sv0, sv1, sv2, q8_ptr, s80, s81, s82, qm_ptr, sm0, sm1, sm2, qe_ptr,
             kb_ptr, vb_ptr, k8b_ptr, kmb_ptr, keb_ptr, slot_ptr, nkv, t, cap, d, BLOCK: tl.constexpr):
    """Row ``program_id`` of new keys/values [B, nkv, T, D] (and the keys' §3.3 memo ``q8``, ``qm``, ``qe``) into
    the contiguous buffers [B, nkv, cap, D] (memo [B, nkv, cap]) at timeline index ``slot[0] + t``."""
    row = tl.program_id(0).to(tl.int64)
    b = row // (nkv * t)
    h = (row // t) % nkv
    i = row % t
    dst = (b * nkv + h) * cap + tl.load(slot_ptr).to(tl.int64) + i
    offs = tl.arange(0, BLOCK)
    ok = offs < d
    kv = tl.load(k_ptr + b * sk0 + h * sk1 + i * sk2 + offs, mask=ok, other=0)
    tl.store(kb_ptr + dst * d + offs, kv.to(kb_ptr.dtype.element_ty), mask=ok)
    vv = tl.load(v_ptr + b * sv0 + h * sv1 + i * sv2 + offs, mask=ok, other=0)
    tl.store(vb_ptr + dst * d + offs, vv.to(vb_ptr.dtype.element_ty), mask=ok)
    tl.store(k8b_ptr + dst * d + offs, tl.load(q8_ptr + b * s80 + h * s81 + i * s82 + offs, mask=ok, other=0),
             mask=ok)
    tl.store(kmb_ptr + dst, tl.load(qm_ptr + b * sm0 + h * sm1 + i * sm2))
    tl.store(keb_ptr + dst, tl.load(qe_ptr + b * sm0 + h * sm1 + i * sm2))


@triton.jit
def embedding(ids_ptr, w_ptr, mult_ptr, shift_ptr, out_ptr, h, BLOCK: tl.constexpr):
    """Row ``program_id(0)``, column block ``program_id(1)``: the Q.16 embedding ``requantize(w[id], mult[id],
    shift[id])`` (spec §3.1) of token ``ids[row]`` as int64."""
    r = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < h
    tok = tl.load(ids_ptr + r).to(tl.int64)
    w = tl.load(w_ptr + tok * h + cols, mask=ok, other=0).to(tl.int64)
    y = _requant(w, tl.load(mult_ptr + tok).to(tl.int64), tl.load(shift_ptr + tok).to(tl.int64))
    tl.store(out_ptr + r * h + cols, y, mask=ok)


@triton.jit
def _scores(k_base, sk2, km_base, ke_base, skm2, j, okj, offs_d, okd, qq, mq, eq, scale_mult, scale_shift,
            valid_row, MASK: tl.constexpr):
    """Spec §5.2 scores of one query row against keys ``j`` (``Σ_d qq·kq`` exact in int32: ``< D·127² < 2^22``),
    and which of them are valid (in range and, with ``MASK``, allowed by the mask row)."""
    kk = tl.load(k_base + j[:, None] * sk2 + offs_d[None, :], mask=okj[:, None] & okd[None, :], other=0)
    acc = tl.sum(kk.to(tl.int32) * qq[None, :], axis=1).to(tl.int64)
    mk = tl.load(km_base + j * skm2, mask=okj, other=0).to(tl.int64)
    ek = tl.load(ke_base + j * skm2, mask=okj, other=0).to(tl.int64)
    s = _requant(acc * (mq * mk), scale_mult, scale_shift + 16 - (eq + ek))   # |acc·mq·mk| < 2^52
    valid = okj
    if MASK:
        valid = valid & (tl.load(valid_row + j, mask=okj, other=0) != 0)
    return s, valid


@triton.jit
def attention(q8_ptr, sq0, sq1, sq2, qm_ptr, qe_ptr, sm0, sm1, sm2, k8_ptr, sk0, sk1, sk2, km_ptr, ke_ptr,
              skm0, skm1, skm2, v_ptr, sv0, sv1, sv2, valid_ptr, sw0, sw1, sw2, lo_ptr, hi_ptr, len_ptr,
              out_ptr, so0, so1, so2, hq, tq, tk, d, group, scale_mult, scale_shift, table_ptr, nt,
              MASK: tl.constexpr, SEGMENTS: tl.constexpr, HAS_LEN: tl.constexpr, BLOCK_T: tl.constexpr,
              BLOCK_D: tl.constexpr):
    """Spec §5.2 for query row ``program_id`` of [B, Hq, Tq] (query head ``h`` uses KV head ``h // group``): the
    quantized query ``q8`` (int8, strides ``sq*``; ``qm``/``qe`` strides ``sm*``), quantized keys ``k8`` [B, Hk, Tk, D]
    (``km``/``ke`` strides ``skm*``), values ``v`` [B, Hk, Tk, D]; keys ``[lo, hi)``: per-row arrays (SEGMENTS),
    else ``[0, min(len[0], tk))`` (HAS_LEN) or ``[0, tk)``; with MASK only keys whose ``valid`` entry is set. The
    context row, ``sat(rnd(Σ_j P_j·V_j / 2^16))``, goes to ``out`` at ``b·so0 + t·so1 + h·so2`` as int32."""
    row = tl.program_id(0).to(tl.int64)
    b = row // (hq * tq)
    h = (row // tq) % hq
    t = row % tq
    kh = h // group
    offs_d = tl.arange(0, BLOCK_D)
    okd = offs_d < d
    qq = tl.load(q8_ptr + b * sq0 + h * sq1 + t * sq2 + offs_d, mask=okd, other=0).to(tl.int32)
    mq = tl.load(qm_ptr + b * sm0 + h * sm1 + t * sm2).to(tl.int64)
    eq = tl.load(qe_ptr + b * sm0 + h * sm1 + t * sm2).to(tl.int64)
    if SEGMENTS:
        lo = tl.load(lo_ptr + b * tq + t).to(tl.int64)
        hi = tl.load(hi_ptr + b * tq + t).to(tl.int64)
    else:
        lo = b * 0
        hi = b * 0 + tk
        if HAS_LEN:
            hi = tl.minimum(tl.load(len_ptr).to(tl.int64), hi)
    k_base = k8_ptr + b * sk0 + kh * sk1
    km_base = km_ptr + b * skm0 + kh * skm1
    ke_base = ke_ptr + b * skm0 + kh * skm1
    valid_row = valid_ptr + b * sw0 + h * sw1 + t * sw2
    steps = tl.arange(0, BLOCK_T)
    mx = lo * 0 + NEG
    for j0 in range(lo, hi, BLOCK_T):                             # pass 1: the maximum over valid keys
        j = j0 + steps
        s, valid = _scores(k_base, sk2, km_base, ke_base, skm2, j, j < hi, offs_d, okd, qq, mq, eq, scale_mult,
                           scale_shift, valid_row, MASK)
        mx = tl.maximum(mx, tl.max(tl.where(valid, s, NEG), axis=0))
    total = lo * 0
    for j0 in range(lo, hi, BLOCK_T):                             # pass 2: Σ exp(mx - s), Q.30
        j = j0 + steps
        s, valid = _scores(k_base, sk2, km_base, ke_base, skm2, j, j < hi, offs_d, okd, qq, mq, eq, scale_mult,
                           scale_shift, valid_row, MASK)
        total += tl.sum(tl.where(valid, _lut(tl.where(valid, mx - s, 0), table_ptr, nt, 0, 9), 0), axis=0)
    ctx = (offs_d * 0).to(tl.int64)
    v_base = v_ptr + b * sv0 + kh * sv1
    for j0 in range(lo, hi, BLOCK_T):                             # pass 3: P = rdiv(e·2^16, Σ), Σ_j P·V
        j = j0 + steps
        okj = j < hi
        s, valid = _scores(k_base, sk2, km_base, ke_base, skm2, j, okj, offs_d, okd, qq, mq, eq, scale_mult,
                           scale_shift, valid_row, MASK)
        ex = tl.where(valid, _lut(tl.where(valid, mx - s, 0), table_ptr, nt, 0, 9), 0)
        p = ((ex << 16) + (total >> 1)) // total                  # non-negative operands
        vv = tl.load(v_base + j[:, None] * sv2 + offs_d[None, :], mask=okj[:, None] & okd[None, :], other=0)
        ctx += tl.sum(p[:, None] * vv.to(tl.int64), axis=0)      # |Σ P·V| < 2^48
    y = _sat((ctx + (1 << 15)) >> 16)
    tl.store(out_ptr + b * so0 + t * so1 + h * so2 + offs_d, y.to(tl.int32), mask=okd)


def grid_blocks(n: int, limit: int = 1024) -> int:
    """The column block of a row kernel over ``n`` columns: the next power of two, at most ``limit``."""
    return min(triton.next_power_of_2(max(n, 1)), limit)
