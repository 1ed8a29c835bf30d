"""Exact int8 matrix products inside numba kernels: few rows (a decoding step) and packed tiles (more rows).

A linear layer's product for one token (§4.2: ``acc[n] = Σ_k q[k]·W[n, k]``, ``|q| <= 127``, int8 weights) costs a
few microseconds of arithmetic, less than a call into torch from Python. :func:`_gemv_rows` computes it inside a
kernel, so that a whole decoder layer runs as one call (:mod:`kolm_audit.runtime.cpu_decode`).

On CPUs with VNNI (``avx512vnni`` + ``avx512vl``, or ``avxvnni``) the dot products use ``vpdpbusd`` (unsigned ×
signed bytes, four products summed into each int32 lane; 64-byte vectors with AVX-512 VNNI, four weight rows per
activation load) through LLVM intrinsics: the activation is offset to
``u = q + 128`` in ``[1, 255]``, and ``Σ_k u·W - 128·Σ_k W = Σ_k q·W``. Every intermediate is an exact int32:
``|Σ u·W| <= K·255·128 < 2^31`` and ``|128·Σ W| <= K·128·128 < 2^31`` for ``K <= 2^16`` (spec §4.3), and the
difference is the exact accumulator. Elsewhere the same sums are integer loops of 16-bit products
(``|q·W| <= 127·128``). Both give the integers of ``torch._int_mm`` (tested against it). On a CPU without the
instructions the intrinsics emit nothing (the callers' branches never reach them there), so no kernel that inlines
them asks LLVM for an instruction the target lacks.

More rows (a prefill, an encoder's tokens) use :func:`_gemm_rows` on AVX-512 VNNI: the weights packed once
(:func:`pack_weights`) into panels of ``PANEL`` columns, ``wp[p, k4, c, j] = W[p·PANEL + c, 4·k4 + j]`` (zeros past
``N`` and ``K``), so that one 64-byte load holds 4 columns of 16 output columns; a tile of ``_MR`` rows × ``PANEL``
columns keeps its 16 int32 vector accumulators in registers, each ``vpdpbusd`` adding 4 products of a broadcast
activation quadruple to 16 lanes — no horizontal sums. Same identity and bounds: the zero padding adds nothing, and
``psum`` is ``128·Σ_k W`` over the whole row.

Example::

    >>> import numpy as np
    >>> w = np.arange(-64, 64, dtype=np.int8).reshape(2, 64)
    >>> q = np.ones((1, 64), dtype=np.int8)
    >>> acc = np.empty((1, 2), dtype=np.int32)
    >>> gemv_rows(q, w, weight_sums(w), acc)
    >>> acc.tolist() == (q.astype(np.int32) @ w.astype(np.int32).T).tolist()
    True
    >>> wp, psum = pack_weights(w)
    >>> q8 = np.ones((6, 64), dtype=np.int8)
    >>> acc = np.empty((6, 2), dtype=np.int32)
    >>> matmul_rows(q8, w, weight_sums(w), wp, psum, acc)
    >>> acc.tolist() == (q8.astype(np.int32) @ w.astype(np.int32).T).tolist()
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from kolm_audit.runtime.cpu_amx import K_BLOCK, _gemm_rows_amx
from kolm_audit.runtime.cpu_amx import PANEL as _AMX_PANEL
from kolm_audit.runtime.cpu_features import AMX, FEATURES
from kolm_audit.runtime.cpu_kernels import _JIT, _kernel

_FEATS = FEATURES               # what the compiled kernels will be built for
# vpdpbusd on 256-bit vectors; WIDE: bytes per vpdpbusd of the four-row products (64 with AVX-512 VNNI)
VNNI = bool(_FEATS.get("avxvnni") or (_FEATS.get("avx512vnni") and _FEATS.get("avx512vl")))
WIDE = 64 if VNNI and _FEATS.get("avx512vnni") and _FEATS.get("avx512bw") else 32
GEMM = VNNI and WIDE == 64      # the packed tiles of _gemm_rows (AVX-512 VNNI: 32 vector registers)
FEW_ROWS = 4                    # products of at most this many rows take _gemv_rows (weight rows outermost)
_MR, _NZ = 4, 4                 # a tile: _MR activation rows × _NZ vectors of 16 int32 columns
PANEL = _NZ * 16                # output columns of a packed weight panel
assert PANEL == _AMX_PANEL      # cpu_amx reads the same panels
_KC = 256                       # columns of K per block of a panel (16 KiB of weights, in L1 for every row tile)


def _data(context: Any, builder: Any, signature: Any, args: Any, i: int) -> Any:
    """The data pointer of an intrinsic's array argument ``i``."""
    return context.make_array(signature.args[i])(context, builder, args[i]).data


def _vpdpbusd(builder: Any, lanes: int) -> tuple[Any, Any]:
    """``(<lanes x i32>, the vpdpbusd intrinsic on it)``: ``acc + Σ_4 u8·s8`` per int32 lane."""
    vt = ir.VectorType(ir.IntType(32), lanes)
    return vt, cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]),
                                              f"llvm.x86.avx512.vpdpbusd.{lanes * 32}")


@intrinsic
def _dot4_vnni(typingctx: Any, a: Any, b: Any, ib: Any, stride: Any, k: Any, out: Any) -> Any:
    """``out[i] = Σ_{c < k} a[c]·b[ib + i·stride + c]`` for ``i < 4`` (``a`` uint8, ``b`` int8, ``k`` a multiple of
    ``WIDE``): four weight rows against one activation row, each ``WIDE``-byte block of ``a`` loaded once for the
    four ``vpdpbusd`` (int32 lanes: every partial sum is bounded as in :func:`_gemv_rows`)."""
    sig = types.void(a, b, ib, stride, k, out)
    lanes = WIDE // 4

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if not VNNI:                                                       # never run there: nothing to emit
            return context.get_dummy_value()
        pa, pb, po = (_data(context, builder, signature, args, i) for i in (0, 1, 5))
        i32, (vt, dp) = ir.IntType(32), _vpdpbusd(builder, lanes)
        ib, st, kk = args[2], args[3], args[4]
        rows = [builder.gep(pb, [builder.add(ib, builder.mul(st, ir.Constant(st.type, i)))]) for i in range(4)]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vt, None)) for _ in range(4)]
        with cgutils.for_range(builder, builder.udiv(kk, ir.Constant(kk.type, WIDE))) as loop:
            off = builder.mul(loop.index, ir.Constant(kk.type, WIDE))
            va = builder.load(builder.bitcast(builder.gep(pa, [off]), vt.as_pointer()), align=1)
            for i in range(4):
                vb = builder.load(builder.bitcast(builder.gep(rows[i], [off]), vt.as_pointer()), align=1)
                builder.store(builder.call(dp, [builder.load(accs[i]), va, vb]), accs[i])
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [vt]),
                                                f"llvm.vector.reduce.add.v{lanes}i32")
        for i in range(4):
            builder.store(builder.call(reduce, [builder.load(accs[i])]),
                          builder.gep(po, [ir.Constant(ir.IntType(64), i)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _dot_vnni(typingctx: Any, a: Any, b: Any, ib: Any, k: Any) -> Any:
    """``Σ_{c < k} a[c]·b[ib + c]`` (``a`` uint8, ``b`` int8, ``k`` a multiple of 32) as int32, 32 bytes per
    ``vpdpbusd`` with four independent accumulators."""
    sig = types.int32(a, b, ib, k)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if not VNNI:                                                       # never run there: nothing to emit
            return ir.Constant(ir.IntType(32), 0)
        i32, (v8, dp) = ir.IntType(32), _vpdpbusd(builder, 8)
        pa = _data(context, builder, signature, args, 0)
        pb, kk = builder.gep(_data(context, builder, signature, args, 1), [args[2]]), args[3]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v8, None)) for _ in range(4)]

        def step(acc: Any, off: Any) -> None:
            va = builder.load(builder.bitcast(builder.gep(pa, [off]), v8.as_pointer()), align=1)
            vb = builder.load(builder.bitcast(builder.gep(pb, [off]), v8.as_pointer()), align=1)
            builder.store(builder.call(dp, [builder.load(acc), va, vb]), acc)

        blocks = builder.udiv(kk, ir.Constant(kk.type, 128))
        with cgutils.for_range(builder, blocks) as loop:
            base = builder.mul(loop.index, ir.Constant(kk.type, 128))
            for u in range(4):
                step(accs[u], builder.add(base, ir.Constant(kk.type, 32 * u)))
        done = builder.mul(blocks, ir.Constant(kk.type, 128))
        with cgutils.for_range(builder, builder.udiv(builder.sub(kk, done), ir.Constant(kk.type, 32))) as loop:
            step(accs[0], builder.add(done, builder.mul(loop.index, ir.Constant(kk.type, 32))))
        total = builder.add(builder.add(builder.load(accs[0]), builder.load(accs[1])),
                            builder.add(builder.load(accs[2]), builder.load(accs[3])))
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [v8]),
                                                "llvm.vector.reduce.add.v8i32")
        return builder.call(reduce, [total])

    return sig, codegen


@intrinsic
def _tile_vnni(typingctx: Any, u: Any, ku: Any, r0: Any, k0: Any, wp: Any, p0: Any, kc: Any, ahead: Any,
               out: Any, o0: Any) -> Any:
    """``out[o0 + r·PANEL + c] += Σ_{k < kc} u[(r0 + r)·ku + k0 + k]·W_p[c, k]`` for ``r < _MR``, ``c < PANEL`` (int32
    lanes, every partial sum bounded as in :func:`_gemv_rows`): ``u`` uint8 rows of ``ku`` bytes, ``wp`` the packed
    columns ``k0 … k0 + kc`` (``kc`` a multiple of 4) of one panel from byte ``p0``. Per 4 columns: ``_NZ`` weight
    vectors loaded, one 4-byte broadcast per row, ``_MR·_NZ`` ``vpdpbusd`` into register accumulators; the cache lines
    ``ahead`` bytes further are prefetched (the next panel while the first tile of rows reads this one; a prefetch
    never faults)."""
    sig = types.void(u, ku, r0, k0, wp, p0, kc, ahead, out, o0)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if not GEMM:                                                       # never run there: nothing to emit
            return context.get_dummy_value()
        pu, pw, po = (_data(context, builder, signature, args, i) for i in (0, 4, 8))
        ku, r0, k0, p0, kc, ahead, o0 = args[1], args[2], args[3], args[5], args[6], args[7], args[9]
        i32, (vt, dp) = ir.IntType(32), _vpdpbusd(builder, 16)
        i8p = ir.IntType(8).as_pointer()
        prefetch = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                                  "llvm.prefetch.p0i8")
        outs = [[builder.bitcast(builder.gep(po, [builder.add(o0, ir.Constant(o0.type, r * PANEL + 16 * z))]),
                                 vt.as_pointer()) for z in range(_NZ)] for r in range(_MR)]
        accs = [[cgutils.alloca_once_value(builder, builder.load(outs[r][z], align=4)) for z in range(_NZ)]
                for r in range(_MR)]
        rows = [builder.gep(pu, [builder.add(builder.mul(builder.add(r0, ir.Constant(r0.type, r)), ku), k0)])
                for r in range(_MR)]
        panel = builder.gep(pw, [p0])
        lane0 = ir.Constant(ir.VectorType(i32, 16), None)                  # shuffle mask: lane 0 everywhere
        with cgutils.for_range(builder, builder.udiv(kc, ir.Constant(kc.type, 4))) as loop:
            base = builder.mul(loop.index, ir.Constant(kc.type, 4 * PANEL))
            ws = [builder.load(builder.bitcast(builder.gep(panel, [builder.add(base, ir.Constant(kc.type, 64 * z))]),
                                               vt.as_pointer()), align=1) for z in range(_NZ)]
            for z in range(_NZ):                                           # read, high locality, data
                builder.call(prefetch, [builder.gep(panel, [builder.add(builder.add(base, ahead),
                                                                        ir.Constant(kc.type, 64 * z))]),
                                        ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            off = builder.mul(loop.index, ir.Constant(kc.type, 4))
            for r in range(_MR):
                quad = builder.load(builder.bitcast(builder.gep(rows[r], [off]), i32.as_pointer()), align=1)
                va = builder.shuffle_vector(builder.insert_element(ir.Constant(vt, ir.Undefined), quad,
                                                                   ir.Constant(i32, 0)),
                                            ir.Constant(vt, ir.Undefined), lane0)
                for z in range(_NZ):
                    builder.store(builder.call(dp, [builder.load(accs[r][z]), va, ws[z]]), accs[r][z])
        for r in range(_MR):
            for z in range(_NZ):
                builder.store(builder.load(accs[r][z]), outs[r][z], align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(**_JIT)
def _gemm_rows(q: np.ndarray, wp: np.ndarray, psum: np.ndarray, acc: np.ndarray) -> None:
    """``acc[r, n] = Σ_k q[r, k]·W[n, k]`` (exact int32) for int8 ``q`` [R, K] (|q| <= 127) and the packed weights
    ``wp``, ``psum`` of :func:`pack_weights` (``N = acc.shape[1]``; AVX-512 VNNI only: callers check :data:`GEMM`):
    on AMX tiles where the CPU has them and ``K`` is a multiple of 64
    (:func:`~kolm_audit.runtime.cpu_amx._gemm_rows_amx`), else :func:`_gemm_rows_vnni`. Both give the same
    integers.

    Compiled as a function of its own, not inlined: inlined beside :func:`_gemv_rows` under a branch on the rows
    (:func:`_matmul_rows`), the AMX tiles of 24 rows ran 2–3× slower (3 × 24 × 192 × 384 products a layer, 6
    layers: 200–230 µs against 60–95 µs out of line, same process, alternated)."""
    if AMX and q.shape[1] % K_BLOCK == 0:
        _gemm_rows_amx(q, wp, acc)
    else:
        _gemm_rows_vnni(q, wp, psum, acc)


@njit(inline="always")
def _gemm_rows_vnni(q: np.ndarray, wp: np.ndarray, psum: np.ndarray, acc: np.ndarray) -> None:
    """:func:`_gemm_rows` in tiles of ``_MR`` rows × ``PANEL`` columns of ``vpdpbusd``. A panel is the outer loop,
    read from memory once per call; its columns in blocks of ``_KC`` (a block stays in L1 for every tile of rows),
    the panel's sums in ``part``."""
    rows, k = q.shape
    n = acc.shape[1]
    kp = k + (-k) % 4
    rp = rows + (-rows) % _MR
    u = np.empty(rp * kp, np.uint8)                          # offset rows u = q + 128; pad rows/columns unused
    for r in range(rows):
        for c in range(k):
            u[r * kp + c] = np.uint8(np.int16(q[r, c]) + 128)
    part = np.empty(rp * PANEL, np.int32)
    for p in range((n + PANEL - 1) // PANEL):
        c0 = p * PANEL
        cn = min(PANEL, n - c0)
        part[:] = 0
        for k0 in range(0, kp, _KC):
            for r0 in range(0, rows, _MR):
                _tile_vnni(u, kp, r0, k0, wp, c0 * kp + k0 * PANEL, min(_KC, kp - k0), PANEL * kp if r0 == 0 else 0,
                           part, r0 * PANEL)
        for r in range(rows):
            for c in range(cn):
                acc[r, c0 + c] = part[r * PANEL + c] - psum[c0 + c]


@njit(inline="always")
def _gemv_rows(q: np.ndarray, w: np.ndarray, wsum: np.ndarray, u: np.ndarray, acc: np.ndarray) -> None:
    """``acc[r, n] = Σ_k q[r, k]·w[n, k]`` (exact int32) for int8 ``q`` [R, K] (|q| <= 127) and ``w`` [N, K] (int8,
    C-contiguous); ``wsum`` from :func:`weight_sums` (the offset's correction over the first ``K - K % WIDE``
    columns, which ``vpdpbusd`` covers; the rest are 16-bit products); ``u`` uint8 scratch of at least ``R·K``
    elements. Weight rows are the outer loop, four at a time: each is read once per call, whatever ``R`` (the
    activations stay in L1)."""
    rows, k = q.shape
    n = w.shape[0]
    wf = w.reshape(-1)
    kw = k - k % WIDE
    if VNNI:
        for r in range(rows):
            for c in range(k):
                u[r * k + c] = np.uint8(np.int16(q[r, c]) + 128)
        sums = np.empty(4, np.int32)
        n4 = n - n % 4
        for j in range(0, n4, 4):
            for r in range(rows):
                _dot4_vnni(u[r * k:(r + 1) * k], wf, j * k, k, kw, sums)
                for i in range(4):
                    s = sums[i] - wsum[j + i]
                    for c in range(kw, k):
                        s += np.int32(np.int16(q[r, c]) * np.int16(wf[(j + i) * k + c]))
                    acc[r, j + i] = s
        for j in range(n4, n):
            for r in range(rows):
                s = _dot_vnni(u[r * k:(r + 1) * k], wf, j * k, kw) - wsum[j]
                for c in range(kw, k):
                    s += np.int32(np.int16(q[r, c]) * np.int16(wf[j * k + c]))
                acc[r, j] = s
    else:
        for j in range(n):
            for r in range(rows):
                s = np.int32(0)
                for c in range(k):
                    s += np.int32(np.int16(q[r, c]) * np.int16(wf[j * k + c]))
                acc[r, j] = s


@njit(inline="always")
def _packed_size(n: int, k: int) -> int:
    """Bytes of :func:`pack_weights`' panels for ``w`` [N, K]: ``ceil(N/PANEL)·PANEL × ceil(K/4)·4``."""
    return ((n + PANEL - 1) // PANEL) * PANEL * (k + (-k) % 4)


@njit(inline="always")
def _gemm_fresh(q: np.ndarray, w: np.ndarray, acc: np.ndarray) -> None:
    """:func:`_gemm_rows` of ``q`` [R, K] against ``w`` [N, K] packed here (an attention block's keys)."""
    n, k = w.shape
    wp = np.empty(_packed_size(n, k), np.int8)
    psum = np.empty(n, np.int32)
    _pack(w, wp, psum)
    _gemm_rows(q, wp, psum, acc)


@njit(inline="always")
def _matmul_rows(q: np.ndarray, w: np.ndarray, wsum: np.ndarray, wp: np.ndarray, psum: np.ndarray,
                 acc: np.ndarray) -> None:
    """The exact product of a linear layer, whichever way is faster: :func:`_gemm_rows` for more than ``FEW_ROWS``
    rows where :data:`GEMM`, else :func:`_gemv_rows` (``w`` [N, K] with ``wsum``; ``wp``, ``psum`` from
    :func:`pack_weights`)."""
    if GEMM and q.shape[0] > FEW_ROWS:
        _gemm_rows(q, wp, psum, acc)
    else:
        _gemv_rows(q, w, wsum, np.empty(q.size, np.uint8), acc)


@njit(**_JIT)
def _matmul_cols(q: np.ndarray, w: np.ndarray, wsum: np.ndarray, wp: np.ndarray, psum: np.ndarray, c0: int, c1: int,
                 acc: np.ndarray) -> None:
    """Columns ``c0 … c1 - 1`` of :func:`_matmul_rows` into ``acc`` [R, c1 - c0] (a split forward's part computes
    its columns of a product for every row, so each part streams only its share of the weights). The packed tiles
    read the panels that hold those columns: from ``c0`` when it starts a panel (the last panel's columns past
    ``c1`` are not written), else into scratch from the panel's first column."""
    if GEMM and q.shape[0] > FEW_ROWS:
        kp = w.shape[1] + (-w.shape[1]) % 4
        p0, p1 = c0 // PANEL, (c1 + PANEL - 1) // PANEL
        a = p0 * PANEL                                       # the first panel's first column
        out = acc if c0 == a else np.empty((q.shape[0], c1 - a), np.int32)
        _gemm_rows(q, wp[a * kp:p1 * PANEL * kp], psum[a:c1], out)
        if c0 != a:
            acc[:, :] = out[:, c0 - a:]
    else:
        _gemv_rows(q, w[c0:c1], wsum[c0:c1], np.empty(q.size, np.uint8), acc)


@_kernel
def matmul_cols(q: np.ndarray, w: np.ndarray, wsum: np.ndarray, wp: np.ndarray, psum: np.ndarray, c0: int, c1: int,
                acc: np.ndarray) -> None:
    """:func:`_matmul_cols` as a kernel (tests)."""
    _matmul_cols(q, w, wsum, wp, psum, c0, c1, acc)


@_kernel
def gemm_vnni(q: np.ndarray, wp: np.ndarray, psum: np.ndarray, acc: np.ndarray) -> None:
    """:func:`_gemm_rows_vnni` as a kernel (tests: the VNNI tiles where the AMX path would be taken)."""
    _gemm_rows_vnni(q, wp, psum, acc)


@_kernel
def matmul_rows(q: np.ndarray, w: np.ndarray, wsum: np.ndarray, wp: np.ndarray, psum: np.ndarray,
                acc: np.ndarray) -> None:
    """:func:`_matmul_rows` as a kernel (linear layers of the fused CPU backend)."""
    _matmul_rows(q, w, wsum, wp, psum, acc)


@_kernel
def gemv_rows(q: np.ndarray, w: np.ndarray, wsum: np.ndarray, acc: np.ndarray) -> None:
    """:func:`_gemv_rows` as a kernel (tests, and linear layers of few rows)."""
    _gemv_rows(q, w, wsum, np.empty(q.size, np.uint8), acc)


def weight_sums(w: np.ndarray) -> np.ndarray:
    """``128·Σ_{k < K - K % WIDE} w[n, k]`` per row (int32 [N], ``|·| <= K·128·128 < 2^31``) for
    :func:`_gemv_rows`; zeros without VNNI, where they are not used."""
    kw = w.shape[1] - w.shape[1] % WIDE
    if not VNNI:
        return np.zeros(w.shape[0], dtype=np.int32)
    return (128 * np.asarray(w[:, :kw], dtype=np.int64).sum(axis=1)).astype(np.int32)


@njit(inline="always")
def _pack(w: np.ndarray, wp: np.ndarray, psum: np.ndarray) -> None:
    """:func:`pack_weights` into ``wp`` (zeros where the panels pass ``N`` and ``K``) and ``psum``."""
    n, k = w.shape
    kp = k + (-k) % 4
    wp[:] = 0
    for j in range(n):
        base = (j // PANEL) * kp * PANEL + (j % PANEL) * 4
        t = np.int32(0)
        for c in range(k):
            wp[base + (c >> 2) * 4 * PANEL + (c & 3)] = w[j, c]
            t += np.int32(w[j, c])
        psum[j] = t * 128


@_kernel
def _pack_kernel(w: np.ndarray, wp: np.ndarray, psum: np.ndarray) -> None:
    _pack(w, wp, psum)


def pack_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(wp, psum)`` for :func:`_gemm_rows`: ``w`` int8 [N, K] as panels ``[ceil(N/PANEL), ceil(K/4), PANEL, 4]``
    (flat, zeros past ``N`` and ``K``) and ``128·Σ_k w[n, k]`` per row (int32 [N], ``|·| <= K·2^14 < 2^31``); empty
    arrays where :data:`GEMM` is off (not used there)."""
    if not GEMM:
        return np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.int32)
    n, k = w.shape
    wp, psum = np.empty(_packed_size(n, k), dtype=np.int8), np.empty(n, dtype=np.int32)
    _pack_kernel(np.ascontiguousarray(w, dtype=np.int8), wp, psum)
    return wp, psum
