"""Composite CPU kernels of ``kolm-int/1`` (numba): several operations per pass, the same integers as the reference.

:mod:`kolm_audit.runtime.cpu_kernels` has one kernel per operation. At small shapes (one sentence, one decoding
step) the cost is no longer arithmetic but passes and calls, and at large ones it is memory traffic, so these
kernels chain the operations that always follow each other in a forward pass, row by row, each step the
transcription of the reference with the bounds of ``docs/runtime-spec.md``:

* ``*_quant`` kernels end with the per-token int8 quantization (§3.3) of each output row, which the next linear
  layer needs — the row is still in cache, and the quantization of a row depends on that row only;
* ``epilogue_*`` kernels start from a linear layer's exact accumulator (§4.2): the requantization, bias and
  saturation of each row, then the residual add and a norm (§6.1, Llama §3), GELU (§5.4) or SwiGLU (Llama §4);
* :func:`embedding_rows`: the Q.16 rows of the int8 word embedding (§3.1) plus position rows, saturated.

Table lookups read a *pair table* (:func:`kolm_audit.runtime.cpu_kernels.pair_table`, built once per table when its
entries and differences fit in int32, as the spec's tables do). Every kernel works on independent rows, so callers
may split the rows between threads.

Example::

    >>> import numpy as np
    >>> from kolm_audit.compile.tables import gelu_cdf_table
    >>> from kolm_audit.runtime import reference as ref, fixedpoint as fp
    >>> from kolm_audit.runtime.cpu_kernels import pair_table
    >>> x = np.array([[65536, -32768, 0, 1 << 20]])
    >>> out, q = np.empty((1, 4), np.int32), np.empty((1, 4), np.int8)
    >>> m, e = np.empty(1, np.int64), np.empty(1, np.int64)
    >>> gelu_quant(x, pair_table(gelu_cdf_table()), out, q, m, e)
    >>> out.tolist() == ref.gelu(x, gelu_cdf_table()).tolist()
    True
    >>> q.tolist() == fp.quantize_rows(out.astype(np.int64))[0].tolist()
    True
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kolm_audit.runtime.cpu_gemv import _matmul_rows
from kolm_audit.runtime.cpu_kernels import (
    _epilogue_row,
    _kernel,
    _mul32,
    _norm_row,
    _pair_lut_row,
    _quantize_row,
    _requantize,
    _sat,
)

GELU_X0, SIGMOID_X0, STEP = -(8 << 16), -(16 << 16), 9     # §5.1 / Llama §4 table origins (Q.16) and step shift


@njit(inline="always")
def _gelu_row(xr: np.ndarray, pair: np.ndarray, idx: np.ndarray, fr: np.ndarray, val: np.ndarray,
              orow: np.ndarray) -> None:
    """§5.4 ``sat(rnd(x·Φ(x) / 2^30))`` of one int32-range row: ``x`` and ``Φ`` (between two table entries) both fit
    int32, so the product is one 32-bit multiply."""
    _pair_lut_row(xr, xr.shape[0], pair, GELU_X0, STEP, idx, fr, val)                            # Φ(x) Q.30
    for j in range(xr.shape[0]):
        orow[j] = _sat((_mul32(xr[j], val[j]) + (1 << 29)) >> 30)


@njit(inline="always")
def _swiglu_row(gr: np.ndarray, ur: np.ndarray, pair: np.ndarray, idx: np.ndarray, fr: np.ndarray, val: np.ndarray,
                orow: np.ndarray) -> None:
    """Llama §4 ``sat(rnd(silu(g)·u / 2^16))``, ``silu(g) = sat(rnd(g·σ(g) / 2^30))``: every factor fits int32."""
    _pair_lut_row(gr, gr.shape[0], pair, SIGMOID_X0, STEP, idx, fr, val)                         # σ(g) Q.30
    for j in range(gr.shape[0]):
        sv = _sat((_mul32(gr[j], val[j]) + (1 << 29)) >> 30)                         # silu(g) Q.16
        orow[j] = _sat((_mul32(sv, ur[j]) + (1 << 15)) >> 16)


@_kernel
def linear_epilogue_res(acc: np.ndarray, m: np.ndarray, e: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                        bias: np.ndarray, res: np.ndarray, out: np.ndarray) -> None:
    """``out = sat(res + sat(requantize(acc·m_r, M_n, S_n - e_r) + bias_n))`` of ``acc`` [R, N], ``res`` [R, N]."""
    rows, n = acc.shape
    smin, smax = shift.min(), shift.max()
    y = np.empty(n, np.int64)
    for r in range(rows):
        _epilogue_row(acc[r], m[r], e[r], mult, shift, bias, smin, smax, y)
        for j in range(n):
            out[r, j] = _sat(np.int64(res[r, j]) + y[j])


@_kernel
def epilogue_norm_quant(acc: np.ndarray, m: np.ndarray, e: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                        bias: np.ndarray, res: np.ndarray, gamma: np.ndarray, beta: np.ndarray, center: bool,
                        eps_q32: int, table: np.ndarray, out_s: np.ndarray, out_y: np.ndarray, q: np.ndarray,
                        qm: np.ndarray, qe: np.ndarray) -> None:
    """``s = sat(res + linear epilogue of acc)`` into ``out_s``, ``y = norm(s)`` (LayerNorm with ``center``, else
    RMSNorm; §5.3) into ``out_y`` and the §3.3 rows of ``y`` into ``q``, ``qm``, ``qe``; ``acc`` [R, H]."""
    rows, n = acc.shape
    smin, smax = shift.min(), shift.max()
    y = np.empty(n, np.int64)
    for r in range(rows):
        _epilogue_row(acc[r], m[r], e[r], mult, shift, bias, smin, smax, y)
        srow = out_s[r]
        for j in range(n):
            srow[j] = _sat(np.int64(res[r, j]) + y[j])
        _norm_row(srow, gamma, beta, center, eps_q32, table, out_y[r])
        qm[r], qe[r] = _quantize_row(out_y[r], q[r])


@_kernel
def norm_quant(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, center: bool, eps_q32: int, table: np.ndarray,
               out: np.ndarray, q: np.ndarray, qm: np.ndarray, qe: np.ndarray) -> None:
    """LayerNorm (``center``) or RMSNorm of ``x`` [R, H] into ``out`` (§5.3), then §3.3 of each output row."""
    for r in range(x.shape[0]):
        _norm_row(x[r], gamma, beta, center, eps_q32, table, out[r])
        qm[r], qe[r] = _quantize_row(out[r], q[r])


@_kernel
def gelu_quant(x: np.ndarray, pair: np.ndarray, out: np.ndarray, q: np.ndarray, qm: np.ndarray,
               qe: np.ndarray) -> None:
    """§5.4 GELU of ``x`` [R, N] (int32 range) from the pair table of ``tables.gelu_cdf``, then §3.3 of each row."""
    rows, n = x.shape
    idx, fr, val = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    for r in range(rows):
        _gelu_row(x[r], pair, idx, fr, val, out[r])
        qm[r], qe[r] = _quantize_row(out[r], q[r])


@_kernel
def epilogue_gelu_quant(acc: np.ndarray, m: np.ndarray, e: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                        bias: np.ndarray, pair: np.ndarray, out: np.ndarray, q: np.ndarray, qm: np.ndarray,
                        qe: np.ndarray) -> None:
    """``gelu(linear epilogue of acc)`` into ``out`` [R, N] and its §3.3 rows (the linear output is saturated, so
    GELU's input is in the int32 range)."""
    rows, n = acc.shape
    smin, smax = shift.min(), shift.max()
    idx, fr, val, y = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    for r in range(rows):
        _epilogue_row(acc[r], m[r], e[r], mult, shift, bias, smin, smax, y)
        _gelu_row(y, pair, idx, fr, val, out[r])
        qm[r], qe[r] = _quantize_row(out[r], q[r])


@njit(inline="always")
def epilogue_gelu_span(acc: np.ndarray, m: np.ndarray, e: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                       bias: np.ndarray, pair: np.ndarray, out: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> None:
    """:func:`epilogue_gelu_quant` on a span of columns ``acc`` [R, n] (``mult``, ``shift``, ``bias`` the span's)
    without the quantization, which needs the whole row: ``gelu`` into ``out`` [R, n] and each row's largest and
    smallest output into ``hi``, ``lo`` [R] (:func:`~kolm_audit.runtime.cpu_kernels._quantize_span` then quantizes
    each span with the whole row's extremes)."""
    rows, n = acc.shape
    smin, smax = shift.min(), shift.max()
    idx, fr, val, y = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    for r in range(rows):
        _epilogue_row(acc[r], m[r], e[r], mult, shift, bias, smin, smax, y)
        orow = out[r]
        _gelu_row(y, pair, idx, fr, val, orow)
        h = w = orow[0]
        for j in range(n):
            h, w = max(h, orow[j]), min(w, orow[j])
        hi[r], lo[r] = h, w


@_kernel
def swiglu_quant(gate: np.ndarray, up: np.ndarray, pair: np.ndarray, out: np.ndarray, q: np.ndarray,
                 qm: np.ndarray, qe: np.ndarray) -> None:
    """Llama §4 SwiGLU of [R, I] rows (int32 range) from the pair table of ``tables.sigmoid``, then §3.3 of each
    output row."""
    rows, n = gate.shape
    idx, fr, val = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    gr, ur = np.empty(n, np.int64), np.empty(n, np.int64)
    for r in range(rows):
        for j in range(n):                  # gate/up are column slices of one [R, 2I] tensor: contiguous copies
            gr[j] = gate[r, j]
            ur[j] = up[r, j]
        _swiglu_row(gr, ur, pair, idx, fr, val, out[r])
        qm[r], qe[r] = _quantize_row(out[r], q[r])


@_kernel
def epilogue_swiglu_quant(acc: np.ndarray, m: np.ndarray, e: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                          bias: np.ndarray, pair: np.ndarray, out: np.ndarray, q: np.ndarray, qm: np.ndarray,
                          qe: np.ndarray) -> None:
    """``swiglu(gate, up)`` of the linear epilogue of ``acc`` [R, 2I] (gate columns ``[0, I)``, up ``[I, 2I)``) into
    ``out`` [R, I] and its §3.3 rows."""
    rows, n2 = acc.shape
    n = n2 // 2
    smin, smax = shift.min(), shift.max()
    idx, fr, val, y = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n2, np.int64)
    for r in range(rows):
        _epilogue_row(acc[r], m[r], e[r], mult, shift, bias, smin, smax, y)
        _swiglu_row(y[:n], y[n:], pair, idx, fr, val, out[r])
        qm[r], qe[r] = _quantize_row(out[r], q[r])


@njit(inline="always")
def product_norm_quant(q: np.ndarray, qm: np.ndarray, qe: np.ndarray, lin: tuple, res: np.ndarray,
                       gamma: np.ndarray, beta: np.ndarray, center: bool, eps_q32: int, table: np.ndarray,
                       out_s: np.ndarray, out_y: np.ndarray, q_out: np.ndarray, m_out: np.ndarray,
                       e_out: np.ndarray) -> None:
    """A linear layer on the §3.3 rows ``q`` [R, K] int8, ``qm``, ``qe`` — the exact product of
    :func:`~kolm_audit.runtime.cpu_gemv._matmul_rows` with ``lin = (w, wsum, mult, shift, bias, wp, psum)`` — then
    :func:`epilogue_norm_quant` with the residual ``res`` (a layer's output: the residual stream and its norm)."""
    w, wsum, mult, shift, bias, wp, psum = lin
    acc = np.empty((q.shape[0], w.shape[0]), np.int32)
    _matmul_rows(q, w, wsum, wp, psum, acc)                                   # [R,N] exact Σ q·W
    epilogue_norm_quant(acc, qm, qe, mult, shift, bias, res, gamma, beta, center, eps_q32, table, out_s, out_y,
                        q_out, m_out, e_out)


@_kernel
def embedding_rows(ids: np.ndarray, w: np.ndarray, mult: np.ndarray, shift: np.ndarray, add: np.ndarray,
                   add_rows: np.ndarray, out: np.ndarray) -> None:
    """``out[r] = sat(requantize(w[id_r], mult[id_r], shift[id_r]) + add[add_rows[r]])`` (§3.1 word embedding plus,
    for BERT, position and token-type rows summed in int64; no ``add`` when ``add`` has no rows). ``|w| <= 127``
    and ``|mult| < 2^31`` give ``|w·mult| < 2^38``: for ``1 <= s <= 62`` the rounding is one shift of that
    product, other shifts take the general §3.2 form."""
    n = out.shape[1]
    has_add = add.shape[0] > 0
    y = np.empty(n, np.int64)
    for r in range(ids.shape[0]):
        v = ids[r]
        mv, sv = np.int64(mult[v]), np.int64(shift[v])
        wrow = w[v]
        if 1 <= sv <= 62:
            half = np.int64(1) << (sv - 1)
            for j in range(n):
                y[j] = (_mul32(wrow[j], mv) + half) >> sv
        else:
            for j in range(n):
                y[j] = _requantize(np.int64(wrow[j]), mv, sv)
        if has_add:
            arow = add[add_rows[r]]
            for j in range(n):
                out[r, j] = _sat(y[j] + arow[j])
        else:
            for j in range(n):
                out[r, j] = _sat(y[j])
