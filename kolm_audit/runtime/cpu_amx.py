"""Exact int8 matrix products on Intel AMX tiles (``tdpbssd``), for the packed weights of ``cpu_gemv``.

One ``tdpbssd`` adds to a tile of 16 rows × 16 int32 columns the products of a 16 × 64-byte tile of signed
activations and a tile of 16 × 64 signed weight bytes in VNNI order (row ``k4`` holds, for each of 16 columns, the
four weights of columns ``4·k4 … 4·k4 + 3``): 16,384 multiply-adds an instruction, against 64 for a 512-bit
``vpdpbusd``. Each int32 lane gets ``Σ_4 a·b`` per step and wraps only past 2^31, which the spec's bounds exclude:
``|Σ_k q·W| <= K·127·128 < 2^31`` for ``K <= 2^16`` (§4.3) — the result is the exact accumulator, signed × signed,
so no offset or weight sums are needed.

The weights are ``cpu_gemv.pack_weights``' panels unchanged: panel ``p`` holds ``wp[p, k4, c, j] = W[p·64 + c,
4·k4 + j]``, so the weight tile of columns ``16z … 16z + 15`` and ``K`` bytes ``64·kc …`` is 16 rows of 64 bytes at
stride 256 from ``p·64·K + kc·4096 + 64·z``. ``K`` must be a multiple of :data:`K_BLOCK` (64; every layer of the
shipped models, ``cpu_gemv`` takes its VNNI tiles otherwise), so that no tile reads past a panel. Activations are
copied into rows padded to 16 (zeros: their products are never read).

Tiles of a call (``ldtilecfg`` at its start, ``tilerelease`` at its end; all 16 rows × 64 bytes): 0–3 the
accumulators of a 64-column panel, 4 and 7 the activation tiles of even and odd blocks, 5 and 6 the weight tiles in
turn. A tile load (1 KiB) takes about three times a ``tdpbssd`` here (16.5 vs 5.4 ns, measured in a loop), so a
block's five loads, not its four products, set the pace: ~88 ns a block from L1, a 12-row × 1152 × 384 product
15.8 µs against 23.5 µs in VNNI tiles.

Example (on a CPU with AMX; elsewhere :data:`~kolm_audit.runtime.cpu_features.AMX` is false and nothing here runs)::

    >>> import numpy as np
    >>> from kolm_audit.runtime.cpu_gemv import pack_weights, GEMM
    >>> w = np.arange(-64, 64, dtype=np.int8).reshape(2, 64)
    >>> q = np.ones((3, 64), dtype=np.int8)     # K = 64: one block
    >>> acc = np.empty((3, 2), dtype=np.int32)
    >>> if AMX and GEMM:
    ...     gemm_amx(q, pack_weights(w)[0], acc)
    ...     assert acc.tolist() == (q.astype(np.int32) @ w.astype(np.int32).T).tolist()
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from kolm_audit.runtime.cpu_features import AMX
from kolm_audit.runtime.cpu_kernels import _kernel

PANEL = 64                      # output columns of a packed weight panel (cpu_gemv.PANEL)
_TR = 16                        # rows of a tile
K_BLOCK = 64                    # K bytes of a block (a tile row); the AMX path needs K a multiple of it
_PANEL_ROW = 4 * PANEL          # bytes of one k4 row of a panel


def _fn(builder: Any, name: str, ret: Any, args: list[Any]) -> Any:
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _ptr(context: Any, builder: Any, signature: Any, args: Any, i: int) -> Any:
    """Argument ``i`` (an array) as an ``i8*`` to its data."""
    data = context.make_array(signature.args[i])(context, builder, args[i]).data
    return builder.bitcast(data, ir.IntType(8).as_pointer())


@intrinsic
def _tiles_begin(typingctx: Any, cfg: Any) -> Any:
    """``ldtilecfg`` from the 64-byte configuration ``cfg`` (uint8)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if AMX:
            i8p = ir.IntType(8).as_pointer()
            builder.call(_fn(builder, "llvm.x86.ldtilecfg", ir.VoidType(), [i8p]),
                         [_ptr(context, builder, signature, args, 0)])
        return context.get_dummy_value()
    return types.void(cfg), codegen


@intrinsic
def _tiles_end(typingctx: Any) -> Any:
    """``tilerelease``: the thread's tile state back to its initial (empty) one."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if AMX:
            builder.call(_fn(builder, "llvm.x86.tilerelease", ir.VoidType(), []), [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _panel_amx(typingctx: Any, qa: Any, kp: Any, r0: Any, wp: Any, p0: Any, out: Any) -> Any:
    """``out[r·64 + c] = Σ_{k < kp} qa[(r0 + r)·kp + k]·W_p[c, k]`` for ``r < 16``, ``c < 64`` (int32, exact): the
    activation rows ``qa`` (int8, ``kp`` bytes each, a multiple of 64) against the panel of ``wp`` from byte ``p0``,
    in ``kp / 64`` blocks: per block one activation tile (4 and 7 for even and odd blocks) and four weight tiles
    (5 and 6 in turn)."""
    sig = types.void(qa, kp, r0, wp, p0, out)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if not AMX:                                                        # never run there: nothing to emit
            return context.get_dummy_value()
        i8, i64 = ir.IntType(8), ir.IntType(64)
        i8p, void = i8.as_pointer(), ir.VoidType()
        pq, pw, po = (_ptr(context, builder, signature, args, i) for i in (0, 3, 5))
        kp, r0, p0 = (context.cast(builder, args[i], signature.args[i], types.int64) for i in (1, 2, 4))
        load = _fn(builder, "llvm.x86.tileloadd64", void, [i8, i8p, i64])
        dot = _fn(builder, "llvm.x86.tdpbssd", void, [i8, i8, i8])
        zero = _fn(builder, "llvm.x86.tilezero", void, [i8])

        def tile(n: int) -> Any:
            return ir.Constant(i8, n)

        def const(n: int) -> Any:
            return ir.Constant(i64, n)

        for z in range(4):
            builder.call(zero, [tile(z)])
        rows = builder.gep(pq, [builder.mul(r0, kp)])                    # the block's first activation row
        panel = builder.gep(pw, [p0])

        def block(kc: Any, a_tile: int) -> None:
            builder.call(load, [tile(a_tile), builder.gep(rows, [builder.mul(kc, const(K_BLOCK))]), kp])
            base = builder.mul(kc, const(K_BLOCK // 4 * _PANEL_ROW))
            for z in range(4):
                w_tile = 5 + z % 2
                builder.call(load, [tile(w_tile), builder.gep(panel, [builder.add(base, const(64 * z))]),
                                    const(_PANEL_ROW)])
                builder.call(dot, [tile(z), tile(a_tile), tile(w_tile)])

        blocks = builder.udiv(kp, const(K_BLOCK))
        with cgutils.for_range(builder, builder.udiv(blocks, const(2))) as loop:    # two blocks a round:
            block(builder.mul(loop.index, const(2)), 4)                           # activation tiles 4 and 7
            block(builder.add(builder.mul(loop.index, const(2)), const(1)), 7)
        with builder.if_then(builder.icmp_unsigned("!=", builder.urem(blocks, const(2)), const(0))):
            block(builder.sub(blocks, const(1)), 4)
        store = _fn(builder, "llvm.x86.tilestored64", void, [i8, i8p, i64])
        for z in range(4):
            builder.call(store, [tile(z), builder.gep(po, [const(64 * z)]), const(4 * PANEL)])
        return context.get_dummy_value()

    return sig, codegen


_CFG = np.zeros(64, np.uint8)   # palette 1; tiles 0-7: 16 rows × 64 bytes
_CFG[0] = 1
_CFG[16:32:2] = K_BLOCK
_CFG[48:56] = _TR


@njit(inline="always")
def _gemm_rows_amx(q: np.ndarray, wp: np.ndarray, acc: np.ndarray) -> None:
    """``acc[r, n] = Σ_k q[r, k]·W[n, k]`` (exact int32) for int8 ``q`` [R, K] (|q| <= 127) and the panels ``wp`` of
    ``cpu_gemv.pack_weights`` (``N = acc.shape[1]``; ``K`` a multiple of :data:`K_BLOCK`, so the panels' rows are
    ``K`` bytes with no padding): every panel against every block of 16 rows."""
    rows, k = q.shape
    n = acc.shape[1]
    rp = rows + (-rows) % _TR
    qa = np.zeros(rp * k, np.int8)                           # rows padded to 16 (zeros)
    for r in range(rows):
        for c in range(k):
            qa[r * k + c] = q[r, c]
    part = np.empty(_TR * PANEL, np.int32)
    _tiles_begin(_CFG)
    for p in range((n + PANEL - 1) // PANEL):
        c0 = p * PANEL
        cn = min(PANEL, n - c0)
        for r0 in range(0, rows, _TR):
            _panel_amx(qa, k, r0, wp, c0 * k, part)
            for r in range(min(_TR, rows - r0)):
                for c in range(cn):
                    acc[r0 + r, c0 + c] = part[r * PANEL + c]
    _tiles_end()


@_kernel
def gemm_amx(q: np.ndarray, wp: np.ndarray, acc: np.ndarray) -> None:
    """:func:`_gemm_rows_amx` as a kernel (tests; callers check :data:`~kolm_audit.runtime.cpu_features.AMX`)."""
    _gemm_rows_amx(q, wp, acc)
