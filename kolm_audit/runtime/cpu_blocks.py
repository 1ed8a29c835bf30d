"""Composite CPU kernels of ``kolm-int/1`` (numba): several operations per pass, the same integers as the reference.

:mod:`kolm_audit.runtime.cpu_kernels` has one kernel per operation. At small shapes (one sentence, one decoding
step) the cost is no longer arithmetic but passes and calls, so these kernels chain the operations that always
follow each other in a forward pass, each step the scalar transcription of the reference with the bounds of
``docs/runtime-spec.md``:

* ``*_quant`` variants: an operation (norm §5.3, GELU §5.4, SwiGLU Llama §4, linear epilogue §4.2) followed by the
  per-token int8 quantization of its output row (§3.3) that the next linear layer needs — the row is still in
  cache, and the quantization of a row depends on that row only;
* :func:`linear_epilogue_res`: the §4.2 epilogue plus the residual add and its saturation (§6.1, Llama §3);
* :func:`packed_attention`: the whole §5.2 block for packed requests (no padding: request ``s`` owns rows
  ``bounds[s]:bounds[s+1]`` and every one of its keys is valid) — quantize q and k rows, integer scores,
  softmax, ``Σ P·V`` in int64 (``< 2^48``), rounding, and the quantization of the context rows;
* :func:`attention_block`: the same block for a padded/causal batch with a KV cache (keys given as the cache's
  per-row quantization memo), for few query rows (decoding).

Every kernel works on independent rows or requests, so callers may split those between threads.

Example::

    >>> import numpy as np
    >>> from kolm_audit.compile.tables import gelu_cdf_table
    >>> from kolm_audit.runtime import reference as ref, fixedpoint as fp
    >>> x = np.array([[65536, -32768, 0, 1 << 20]])
    >>> out, q = np.empty((1, 4), np.int32), np.empty((1, 4), np.int8)
    >>> m, e = np.empty(1, np.int64), np.empty(1, np.int64)
    >>> gelu_quant(x, gelu_cdf_table().astype(np.int64), out, q, m, e)
    >>> out.tolist() == ref.gelu(x, gelu_cdf_table()).tolist()
    True
    >>> q.tolist() == fp.quantize_rows(out.astype(np.int64))[0].tolist()
    True
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kolm_audit.runtime.cpu_kernels import _kernel, _lut, _lut_row, _norm_row, _quantize_row, _requantize, _sat

_NEG = -(1 << 62)


@njit(inline="always")
def _epilogue_row(acc: np.ndarray, mr: int, er: int, mult: np.ndarray, shift: np.ndarray, bias: np.ndarray,
                  smin: int, smax: int, j: int) -> int:
    """``sat(requantize(acc[j]·m_r, M_j, S_j - e_r) + bias_j)`` (§4.2), the branch-free ``s >= 32`` form when every
    shift of the row is in [32, 93]."""
    x = np.int64(acc[j]) * mr
    if smin - er >= 32 and smax - er <= 93:
        xh = x >> 31
        s = shift[j] - er
        y = (xh * mult[j] + (np.int64(1) << (s - 32)) + (((x - (xh << 31)) * mult[j]) >> 31)) >> (s - 31)
    else:
        y = _requantize(x, mult[j], shift[j] - er)
    return _sat(y + bias[j])


@_kernel
def linear_epilogue_res(acc: np.ndarray, m: np.ndarray, e: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                        bias: np.ndarray, res: np.ndarray, out: np.ndarray) -> None:
    """``out = sat(res + sat(requantize(acc·m_r, M_n, S_n - e_r) + bias_n))`` of ``acc`` [R, N], ``res`` [R, N]."""
    rows, n = acc.shape
    smin, smax = shift.min(), shift.max()
    for r in range(rows):
        mr, er = m[r], e[r]
        for j in range(n):
            out[r, j] = _sat(np.int64(res[r, j]) + _epilogue_row(acc[r], mr, er, mult, shift, bias, smin, smax, j))


@_kernel
def norm_quant(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, center: bool, eps_q32: int, table: np.ndarray,
               out: np.ndarray, q: np.ndarray, qm: np.ndarray, qe: np.ndarray) -> None:
    """LayerNorm (``center``) or RMSNorm of ``x`` [R, H] into ``out`` (§5.3), then §3.3 of each output row."""
    for r in range(x.shape[0]):
        _norm_row(x[r], gamma, beta, center, eps_q32, table, out[r])
        qm[r], qe[r] = _quantize_row(out[r], q[r])


@_kernel
def gelu_quant(x: np.ndarray, table: np.ndarray, out: np.ndarray, q: np.ndarray, qm: np.ndarray,
               qe: np.ndarray) -> None:
    """§5.4 ``sat(rnd(x·Φ(x) / 2^30))`` of ``x`` [R, N], then §3.3 of each output row (table reads by row, as in
    :func:`kolm_audit.runtime.cpu_kernels.gelu`)."""
    rows, n = x.shape
    idx, fr = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    lo, df = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for r in range(rows):
        xr, orow = x[r], out[r]
        _lut_row(xr, table, -(8 << 16), 9, idx, fr, lo, df)
        for j in range(n):
            phi = lo[j] + ((df[j] * fr[j] + (1 << 8)) >> 9)                       # Φ(x) Q.30
            orow[j] = _sat((np.int64(xr[j]) * phi + (1 << 29)) >> 30)
        qm[r], qe[r] = _quantize_row(orow, q[r])


@_kernel
def swiglu_quant(gate: np.ndarray, up: np.ndarray, table: np.ndarray, out: np.ndarray, q: np.ndarray,
                 qm: np.ndarray, qe: np.ndarray) -> None:
    """Llama §4 ``sat(rnd(silu(g)·u / 2^16))`` of [R, I] rows, then §3.3 of each output row."""
    rows, n = gate.shape
    idx, fr = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    lo, df = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    gr, ur = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for r in range(rows):
        for j in range(n):                  # gate/up are column slices of one [R, 2I] tensor: contiguous copies
            gr[j] = gate[r, j]
            ur[j] = up[r, j]
        _lut_row(gr, table, -(16 << 16), 9, idx, fr, lo, df)
        orow = out[r]
        for j in range(n):
            sig = lo[j] + ((df[j] * fr[j] + (1 << 8)) >> 9)                       # σ(g) Q.30
            sv = _sat((gr[j] * sig + (1 << 29)) >> 30)                            # silu(g) Q.16
            orow[j] = _sat((sv * ur[j] + (1 << 15)) >> 16)
        qm[r], qe[r] = _quantize_row(orow, q[r])


@njit(inline="always")
def _softmax_row(sc: np.ndarray, ok: np.ndarray, t: int, mx: int, table: np.ndarray, p: np.ndarray) -> None:
    """§5.2 probabilities of one query row: ``p[j] = rdiv(exp(mx - s_j)·2^16, Σ)`` over valid keys, 0 elsewhere
    (the division in float64: operands below 2^47, exact)."""
    total = np.int64(0)
    for j in range(t):
        if ok[j]:
            ev = _lut(mx - sc[j], table, 0, 9)
            p[j] = ev
            total += ev
        else:
            p[j] = 0
    half, tf = np.float64(total >> 1), np.float64(total)
    for j in range(t):
        p[j] = np.int64(np.floor((np.float64(p[j] << 16) + half) / tf))


@_kernel
def packed_attention(qkv: np.ndarray, bounds: np.ndarray, nh: int, d: int, scale_mult: int, scale_shift: int,
                     table: np.ndarray, out: np.ndarray, q8: np.ndarray, qm: np.ndarray, qe: np.ndarray) -> None:
    """§5.2 for packed requests: ``qkv`` [N, 3·nh·d] holds q|k|v of every token, request ``s`` owns rows
    ``bounds[s]:bounds[s+1]`` (``bounds`` [S+1], absolute row numbers) and attends to all of its own keys.
    Writes the context [N, nh·d] into ``out`` and its §3.3 rows into ``q8``, ``qm``, ``qe``.

    Exact float carriers (spec "Fast backends"): the scores ``Σ_d qq·kq`` accumulate in float32 over keys (every
    partial sum an integer below 2^22), ``Σ_j P·V`` in float64 over the head dimension (below 2^48)."""
    hid = nh * d
    tmax = 0
    for s in range(bounds.shape[0] - 1):
        tmax = max(tmax, bounds[s + 1] - bounds[s])
    qf, kt = np.empty((tmax, d), np.float32), np.empty((d, tmax), np.float32)
    vf = np.empty((tmax, d), np.float64)
    mq, eq = np.empty(tmax, np.int64), np.empty(tmax, np.int64)
    mk, ek = np.empty(tmax, np.int64), np.empty(tmax, np.int64)
    dots, sc, p = np.empty(tmax, np.float32), np.empty(tmax, np.int64), np.empty(tmax, np.int64)
    ok = np.ones(tmax, np.bool_)
    acc = np.empty(d, np.float64)
    q8row = np.empty(d, np.int8)
    for s in range(bounds.shape[0] - 1):
        a, t = bounds[s], bounds[s + 1] - bounds[s]
        for h in range(nh):
            c0 = h * d
            for i in range(t):
                mq[i], eq[i] = _quantize_row(qkv[a + i, c0:c0 + d], q8row)
                for c in range(d):
                    qf[i, c] = q8row[c]
                mk[i], ek[i] = _quantize_row(qkv[a + i, hid + c0:hid + c0 + d], q8row)
                for c in range(d):
                    kt[c, i] = q8row[c]
                    vf[i, c] = qkv[a + i, 2 * hid + c0 + c]
            for i in range(t):
                for j in range(t):
                    dots[j] = 0
                for c in range(d):
                    qc = qf[i, c]
                    for j in range(t):
                        dots[j] += qc * kt[c, j]                       # |Σ| <= d·127² < 2^22: exact
                mx = np.int64(_NEG)
                for j in range(t):
                    sv = _requantize(np.int64(dots[j]) * (mq[i] * mk[j]), scale_mult,
                                     scale_shift + 16 - (eq[i] + ek[j]))
                    sc[j] = sv
                    mx = max(mx, sv)
                _softmax_row(sc, ok, t, mx, table, p)
                for c in range(d):
                    acc[c] = 0
                for j in range(t):
                    pj = np.float64(p[j])
                    for c in range(d):
                        acc[c] += pj * vf[j, c]                        # |Σ P·V| < 2^48: exact in float64
                for c in range(d):
                    out[a + i, c0 + c] = _sat((np.int64(acc[c]) + (1 << 15)) >> 16)
        for i in range(a, a + t):
            qm[i], qe[i] = _quantize_row(out[i], q8[i])


@_kernel
def attention_block(q: np.ndarray, kf: np.ndarray, mk: np.ndarray, ek: np.ndarray, v: np.ndarray,
                    valid: np.ndarray, group: int, scale_mult: int, scale_shift: int, table: np.ndarray,
                    out: np.ndarray, q8: np.ndarray, qm: np.ndarray, qe: np.ndarray) -> None:
    """§5.2 with grouped-query heads for a batch: ``q`` [B, Hq, Tq, D] Q.16; keys as their quantization memo
    ``kf`` [B, Hk, Tk, D] (exact integers in [-127, 127]) with ``mk``/``ek`` [B, Hk, Tk]; values ``v`` [B, Hk, Tk, D];
    ``valid`` [B, 1|Hq, 1|Tq, Tk]. Writes the context [B, Tq, Hq·D] into ``out`` and its §3.3 rows (row
    ``b·Tq + t``) into ``q8``, ``qm``, ``qe``."""
    b, hq, tq, d = q.shape
    tk = kf.shape[2]
    hv, tv = valid.shape[1], valid.shape[2]
    qq = np.empty(d, np.int8)
    sc, p = np.empty(tk, np.int64), np.empty(tk, np.int64)
    ok = np.empty(tk, np.bool_)
    acc = np.empty(d, np.int64)
    for bi in range(b):
        for t in range(tq):
            for h in range(hq):
                kh = h // group
                vh = h if hv > 1 else 0
                vt = t if tv > 1 else 0
                m_q, e_q = _quantize_row(q[bi, h, t], qq)
                mx = np.int64(_NEG)
                for j in range(tk):
                    ok[j] = valid[bi, vh, vt, j]
                    if ok[j]:
                        dot = 0
                        for c in range(d):
                            dot += np.int64(qq[c]) * np.int64(kf[bi, kh, j, c])
                        sv = _requantize(dot * (m_q * mk[bi, kh, j]), scale_mult,
                                         scale_shift + 16 - (e_q + ek[bi, kh, j]))
                        sc[j] = sv
                        mx = max(mx, sv)
                _softmax_row(sc, ok, tk, mx, table, p)
                for c in range(d):
                    acc[c] = 0
                for j in range(tk):
                    pj = p[j]
                    if pj != 0:
                        for c in range(d):
                            acc[c] += pj * np.int64(v[bi, kh, j, c])
                for c in range(d):
                    out[bi, t, h * d + c] = _sat((acc[c] + (1 << 15)) >> 16)
            row = bi * tq + t
            qm[row], qe[row] = _quantize_row(out[bi, t], q8[row])
