"""A spin barrier between the threads that run one kernel together (numba), for the one-kernel forwards' splits.

A one-kernel forward (:mod:`~kolm_audit.runtime.cpu_encode`) can be run by several threads at once, each calling
the same kernel with its own ``part``: each computes its share of a step (its rows of a product, its heads of
the attention) into buffers all parts share, and waits at :func:`barrier` before a step that reads another part's
share. Which part computes which value never changes a value (every kernel step is exact integer arithmetic on
independent rows or heads), so a split changes no output.

The barrier is a flag per part, each on its own 64-byte line of an int64 array ``sync`` (``[parts · 8]``, zero at
the start of a call): part ``p`` arriving at barrier ``k`` (1, 2, … in order) stores ``k`` in its flag with
release ordering, then spins until every flag is at least ``k``, reading them with acquire ordering (LLVM atomics:
the compiler may neither hoist the read out of the loop nor move the shared buffers' stores past the flag's
store; on x86 both are plain moves). A part that has waited long gives its core away (``sched_yield``) so that a
partner descheduled on a loaded machine can run. Parts must all be running at the same time (one thread each):
a part waiting for a partner that is not scheduled to run would wait forever, and one that fails must
:func:`release` the others.

Example::

    >>> import numpy as np, threading
    >>> from numba import njit
    >>> @njit(nogil=True)
    ... def swap(sync, part, box):
    ...     box[part] = part + 10
    ...     barrier(sync, part, 2, 1)
    ...     return box[1 - part]
    >>> sync, box, got = np.zeros(16, np.int64), np.zeros(2, np.int64), [0, 0]
    >>> def run(p): got[p] = swap(sync, p, box)
    >>> th = threading.Thread(target=run, args=(1,)); th.start(); run(0); th.join()
    >>> got
    [11, 10]
"""

from __future__ import annotations

import sys
from typing import Any

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from kolm_audit.runtime.cpu_kernels import _kernel

LINE = 8                            # int64 slots per flag: one 64-byte cache line each
_SPINS = 256                        # pauses before a waiting part yields its core
_X86 = llvm.get_process_triple().split("-")[0] in ("x86_64", "i386", "i686")
_YIELD = sys.platform.startswith("linux")


def sync_flags(parts: int) -> np.ndarray:
    """The zeroed flags of one call split into ``parts``."""
    return np.zeros(parts * LINE, np.int64)


ALONE = sync_flags(1)               # the flags of a call that is not split (one part never writes them)


def release(sync: np.ndarray) -> None:
    """Let every part pass every barrier of ``sync`` (a part failed: the others run to their end instead of
    waiting for it forever; their outputs are not used)."""
    sync[:] = np.iinfo(np.int64).max


def _slot(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    """The address of ``sync[i]`` for an intrinsic ``(sync, i, …)``."""
    aryty = signature.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])


@intrinsic
def _load_acquire(typingctx: Any, sync: Any, i: Any) -> Any:
    """``sync[i]`` read with acquire ordering."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.load_atomic(_slot(context, builder, signature, args), "acquire", 8)
    return types.int64(sync, i), codegen


@intrinsic
def _store_release(typingctx: Any, sync: Any, i: Any, v: Any) -> Any:
    """``sync[i] = v`` with release ordering."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(value, _slot(context, builder, signature, args), "release", 8)
        return context.get_dummy_value()
    return types.void(sync, i, v), codegen


@intrinsic
def _swap_if(typingctx: Any, sync: Any, i: Any, expected: Any, v: Any) -> Any:
    """``sync[i] = v`` if it holds ``expected``, as one atomic step (sequentially consistent compare-and-swap: the
    stores before it are visible to a thread that reads the new value with acquire ordering); returns the value it
    held."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        old = context.cast(builder, args[2], signature.args[2], types.int64)
        value = context.cast(builder, args[3], signature.args[3], types.int64)
        pair = builder.cmpxchg(_slot(context, builder, signature, args), old, value, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)
    return types.int64(sync, i, expected, v), codegen


@intrinsic
def _pause(typingctx: Any) -> Any:
    """The spin-wait hint (x86 ``pause``; nothing elsewhere)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _yield(typingctx: Any) -> Any:
    """``sched_yield()`` (Linux; nothing elsewhere)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        if _YIELD:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _clock_ns(typingctx: Any) -> Any:
    """``CLOCK_MONOTONIC`` in nanoseconds (Linux ``clock_gettime``, a vDSO read); 0 elsewhere."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i32, i64 = ir.IntType(32), ir.IntType(64)
        if not _YIELD:
            return ir.Constant(i64, 0)
        spec = ir.LiteralStructType([i64, i64])                               # struct timespec {tv_sec, tv_nsec}
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32, spec.as_pointer()]),
                                            "clock_gettime")
        ts = cgutils.alloca_once(builder, spec)
        builder.call(fn, [ir.Constant(i32, 1), ts])                           # CLOCK_MONOTONIC
        sec, nsec = (builder.load(builder.gep(ts, [ir.Constant(i32, 0), ir.Constant(i32, i)])) for i in (0, 1))
        return builder.add(builder.mul(sec, ir.Constant(i64, 10**9)), nsec)
    return types.int64(), codegen


@njit(inline="always")
def waited_ns(since: int, yields: int) -> int:
    """Nanoseconds since ``since`` (a :func:`_clock_ns` reading) for a spin wait that has yielded its core
    ``yields`` times: the clock on Linux; elsewhere ~5 µs a yield (:data:`_SPINS` pauses)."""
    return _clock_ns() - since if _YIELD else yields * 5000


@njit(inline="always")
def _backoff(spins: int) -> int:
    """One round of a spin wait that has run ``spins`` rounds: a ``pause``, and every :data:`_SPINS` rounds the core
    given away; returns the new count."""
    _pause()
    if spins + 1 < _SPINS:
        return spins + 1
    _yield()
    return 0


@njit(inline="always")
def barrier(sync: np.ndarray, part: int, parts: int, k: int) -> None:
    """Part ``part`` of ``parts`` arrives at barrier ``k`` and returns once every part has (``k`` counts from 1 in
    each call; one part alone returns at once)."""
    if parts <= 1:
        return
    _store_release(sync, part * LINE, k)
    for other in range(parts):
        spins = 0
        while _load_acquire(sync, other * LINE) < k:
            spins = _backoff(spins)


@njit(inline="always")
def share(n: int, part: int, parts: int) -> tuple[int, int]:
    """The range of ``[0, n)`` that part ``part`` of ``parts`` computes (consecutive ranges in part order, sizes
    differing by one at most)."""
    return part * n // parts, (part + 1) * n // parts


@_kernel
def wait_change(flags: np.ndarray, i: int, seen: int, idle: int) -> int:
    """Spin (GIL released) until ``flags[i]`` no longer holds ``seen`` or ``idle`` ns pass (looked at whenever the
    wait gives its core away); returns what it holds then (``seen``: timed out)."""
    spins, yields, since = 0, 0, _clock_ns()
    while True:
        v = _load_acquire(flags, i)
        if v != seen:
            return v
        spins = _backoff(spins)
        if spins == 0:
            yields += 1
            if waited_ns(since, yields) >= idle:
                return seen


@_kernel
def wait_reach(flags: np.ndarray, i: int, target: int) -> None:
    """Spin (GIL released, the core given away every :data:`_SPINS` rounds) until ``flags[i] >= target``."""
    spins = 0
    while _load_acquire(flags, i) < target:
        spins = _backoff(spins)


@_kernel
def post_flag(flags: np.ndarray, i: int, v: int) -> None:
    """``flags[i] = v`` with release ordering (what was written before is visible to whoever reads ``v``)."""
    _store_release(flags, i, v)
