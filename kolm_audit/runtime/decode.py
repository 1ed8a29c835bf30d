"""KV caches and decoding sessions of the Llama-family runtime: growing, static (bucketed), and CUDA graphs.

Three ways to run the same decode (``docs/runtime-spec-llama.md`` §7, §9), all with the same integers:

* :class:`DynamicSession` — the cache grows by concatenation along time; finished requests are dropped. Where the
  backend has a decoder of one-token steps (the fused CPU backend's
  :class:`~kolm_audit.runtime.host_decoder.CpuDecoder`) it holds the cache after the prefill.
* :class:`StaticSession` — every layer's keys and values live in a buffer of fixed length (a *length bucket*,
  :func:`length_bucket`) for a batch padded to a *batch bucket* (:func:`batch_bucket`) with dummy requests.
  A step writes its keys at a timeline index (``ops.kv_write``) and attends over the whole buffer with the unfilled
  and dummy positions masked. Masked keys contribute exactly 0 and are excluded from the maximum (core spec §5.2),
  and every operation is per token or per request (a dummy request is another request), so the integers are those
  of the dynamic cache; finished requests stay in the batch as dummies.
* :class:`GraphSession` — a static session whose decode step (shapes fixed by the two buckets, inputs read from
  device buffers, no host synchronization) is captured once per (batch bucket, length bucket) as a CUDA graph and
  replayed every step. It needs CUDA and a backend whose forward never synchronizes (``FusedTritonOps``); on any
  other device it is the static session, run eagerly.

Example::

    >>> batch_bucket(3), batch_bucket(100), batch_bucket(300)
    (4, 128, 512)
    >>> length_bucket(10), length_bucket(65), length_bucket(1000)
    (64, 128, 1024)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

import numpy as np

from kolm_audit.runtime.ops import NumpyOps, Ops
from kolm_audit.runtime.sampling import greedy_token

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MIN_LENGTH = 64
DECODE_MODES = ("dynamic", "static", "graphs")


class Decoder(Protocol):
    """A backend's decoder of one-token steps (``FusedCpuOps.decoder``), holding the cache itself."""

    def step(self, tokens: np.ndarray) -> np.ndarray: ...
    def greedy(self, tokens: np.ndarray, steps: int, eos: np.ndarray) -> np.ndarray | None: ...
    def select(self, rows: np.ndarray) -> None: ...
    def close(self) -> None: ...


class LlamaRuntime(Protocol):
    """What a session needs of :class:`kolm_audit.runtime.models.llama.LlamaRuntime` (its step in three parts)."""

    ops: Ops
    decode: str
    graphs: GraphPool

    def _prefill(self, batch: Sequence[Sequence[int]], *, all_logits: bool) -> tuple[np.ndarray, KVCache]: ...
    def _left_pad(self, batch: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]: ...
    def _step(self, ids: np.ndarray, new_ok: np.ndarray, cache: KVCache, *, all_logits: bool) -> np.ndarray: ...
    def _prepare(self, ids: np.ndarray, new_ok: np.ndarray, cache: KVCache) -> dict[str, np.ndarray]: ...
    def _forward(self, *, ids: Any, pos: Any, mask: Any, slot: Any, key_len: Any, cache: KVCache,
                 all_logits: bool) -> Any: ...
    def _finish(self, new_ok: np.ndarray, cache: KVCache) -> None: ...
    def _decoder(self, cache: KVCache) -> Decoder | None: ...


def batch_bucket(b: int) -> int:
    """The padded batch size of ``b`` requests: the smallest of ``BATCH_BUCKETS`` that holds them, beyond the
    largest a multiple of it."""
    for size in BATCH_BUCKETS:
        if b <= size:
            return size
    top = BATCH_BUCKETS[-1]
    return -(-b // top) * top


def length_bucket(n: int) -> int:
    """The static buffer length for a timeline of ``n`` tokens: a power of two, at least ``MIN_LENGTH``."""
    return max(MIN_LENGTH, 1 << max(n - 1, 0).bit_length())


@dataclass
class KVCache:
    """Per-layer keys (after RoPE) and values of a left-padded batch, [B, nkv, T, D] Q.16 in the backend's arrays.

    Dynamic (``capacity`` None): ``T`` is the timeline length, grown by concatenation. Static: ``T = capacity``
    buffers, of which the first ``length`` timeline positions are written. ``key_ok`` [B, length] and ``pos`` [B]
    are host numpy (masks and positions are built on the host).
    """

    keys: list[Any] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    key_ok: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))   # [B, length] real token?
    pos: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))        # [B] next position
    capacity: int | None = None

    @property
    def length(self) -> int:
        """Timeline positions written so far."""
        return int(self.key_ok.shape[1])

    @property
    def width(self) -> int:
        """The key axis the attention sees: ``capacity`` (static) or ``length``."""
        return self.length if self.capacity is None else self.capacity

    def select(self, rows: np.ndarray, ops: Ops | None = None) -> KVCache:
        """The cache of a subset of the requests (dropping finished ones never changes the others)."""
        take = (ops or NumpyOps()).take
        return KVCache([take(k, rows) for k in self.keys], [take(v, rows) for v in self.values],
                       self.key_ok[rows], self.pos[rows], self.capacity)

    def reserve(self, ops: Ops, written: int) -> None:
        """Static: make room for ``length`` positions, moving the ``written`` first ones into longer buffers (the
        next length bucket) when needed."""
        if self.capacity is None or self.length <= self.capacity:
            return
        self.capacity = length_bucket(self.length)
        zero = ops.const(np.zeros(1, dtype=np.int64))
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            nk, nv = ops.kv_buffer(k, self.capacity), ops.kv_buffer(v, self.capacity)
            ops.kv_write(nk, nv, k[:, :, :written], v[:, :, :written], zero)
            self.keys[i], self.values[i] = nk, nv

    def append(self, i: int, k: Any, v: Any, slot: Any, ops: Ops) -> tuple[Any, Any]:
        """Add layer ``i``'s new keys and values [B, nkv, T, D] at timeline index ``slot`` (a backend array [1]);
        returns the layer's keys and values to attend over."""
        if self.capacity is None:
            if i < len(self.keys):
                self.keys[i] = ops.cat([self.keys[i], k], axis=2)
                self.values[i] = ops.cat([self.values[i], v], axis=2)
            else:
                self.keys.append(k)
                self.values.append(v)
        else:
            if i == len(self.keys):
                self.keys.append(ops.kv_buffer(k, self.capacity))
                self.values.append(ops.kv_buffer(v, self.capacity))
            ops.kv_write(self.keys[i], self.values[i], k, v, slot)
        return self.keys[i], self.values[i]


class _Session:
    """A session is used as a context manager: its end releases what its steps hold (:meth:`close`). Each kind has
    ``step(active, tokens) -> logits [len(active), V]``, one token per request still ``active``."""

    def greedy(self, active: np.ndarray, tokens: np.ndarray, steps: int, eos: np.ndarray) -> np.ndarray:
        """Up to ``steps`` steps of greedy decoding (``docs/runtime-spec-llama.md`` §8: each request's next token is
        its largest logit, ties to the lowest id) from ``tokens`` of the requests ``active``; they end after a step
        in which a request's token is one of ``eos``. The tokens chosen after each step run, int64 [s, len(active)]
        (``1 <= s <= steps``)."""
        chosen = []
        for _ in range(steps):
            logits = self.step(active, tokens)                        # type: ignore[attr-defined]  # [B',V] Q.16
            tokens = np.array([greedy_token(row) for row in logits], dtype=np.int64)
            chosen.append(tokens)
            if np.isin(tokens, eos).any():
                break
        return np.stack(chosen)

    def close(self) -> None:
        """Release what the steps hold (the base holds nothing beyond memory)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DynamicSession(_Session):
    """Prefill, then one step per generated token with a growing cache; finished requests are dropped. Its
    :meth:`close` closes the backend's decoder (the fused CPU backend's may keep a thread waiting for steps)."""

    def __init__(self, rt: LlamaRuntime) -> None:
        self.rt = rt
        self.cache = KVCache()
        self.rows = np.zeros(0, dtype=np.int64)                   # request index of each cache row
        self.decoder: Decoder | None = None                      # the backend's, from the first step on
        self._asked = False

    def prefill(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Logits [B, V] Q.16 of each request's last prompt token."""
        self.close()
        logits, self.cache = self.rt._prefill(batch, all_logits=False)
        self.rows = np.arange(len(batch))
        self._asked = False
        return logits

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None

    def step(self, active: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per still-active request (``active``: request indices, a subsequence of the previous
        step's); logits [len(active), V] Q.16. Where the backend has a decoder (``rt._decoder``: the fused CPU
        backend's keeps the cache on the host) it takes over the cache at the first step."""
        self._follow(active)
        tokens = np.asarray(tokens, dtype=np.int64)
        if self.decoder is not None:
            return self.decoder.step(tokens)
        ok = np.ones((active.size, 1), dtype=bool)
        return self.rt._step(tokens[:, None], ok, self.cache, all_logits=False)

    def greedy(self, active: np.ndarray, tokens: np.ndarray, steps: int, eos: np.ndarray) -> np.ndarray:
        """:meth:`_Session.greedy`, in one call of the backend's decoder where it can (``CpuDecoder.greedy``)."""
        self._follow(active)
        if self.decoder is not None:
            chosen = self.decoder.greedy(tokens, steps, eos)
            if chosen is not None:
                return chosen
        return super().greedy(active, tokens, steps, eos)

    def _follow(self, active: np.ndarray) -> None:
        """Drop the requests no longer ``active``; hand the cache to the backend's decoder at the first step."""
        if active.size < self.rows.size:
            keep = np.flatnonzero(np.isin(self.rows, active))
            if self.decoder is not None:
                self.decoder.select(keep)
            else:
                self.cache = self.cache.select(keep, self.rt.ops)
            self.rows = self.rows[keep]
        if not self._asked:
            self.decoder, self._asked = self.rt._decoder(self.cache), True


class StaticSession(_Session):
    """Prefill and steps over static buffers: ``batch_bucket(B)`` rows (dummy requests after the real ones) and
    ``length_bucket(max_len)`` timeline positions. Finished requests stay as dummies (their new keys are masked)."""

    def __init__(self, rt: LlamaRuntime, *, batch: int, max_len: int) -> None:
        self.rt, self.batch = rt, batch
        self.rows, self.capacity = batch_bucket(batch), length_bucket(max_len)
        self.cache = KVCache(key_ok=np.zeros((self.rows, 0), dtype=bool), pos=np.zeros(self.rows, dtype=np.int64),
                             capacity=self.capacity)

    def prefill(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        padded = [list(seq) for seq in batch] + [[]] * (self.rows - len(batch))   # dummies: no real token
        ids, ok = self.rt._left_pad(padded)
        return self.rt._step(ids, ok, self.cache, all_logits=False)[:len(batch)]

    def step(self, active: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        ids = np.zeros((self.rows, 1), dtype=np.int64)
        ok = np.zeros((self.rows, 1), dtype=bool)
        ids[active, 0] = tokens
        ok[active, 0] = True
        return self._run(ids, ok)[active]

    def _run(self, ids: np.ndarray, ok: np.ndarray) -> np.ndarray:
        return self.rt._step(ids, ok, self.cache, all_logits=False)


class GraphSession(StaticSession):
    """A static session whose decode steps replay a CUDA graph (captured on first use of its bucket pair).

    The graphs, their input buffers and the KV buffers they read are kept per runtime and per (batch bucket, length
    bucket) in ``rt.graphs`` (a :class:`GraphPool`) and reused by later sessions: a graph holds the addresses it was
    captured with. Only the timeline positions of the current session are ever read (the rest are masked)."""

    def __init__(self, rt: LlamaRuntime, *, batch: int, max_len: int) -> None:
        super().__init__(rt, batch=batch, max_len=max_len)
        self.entry = rt.graphs.entry(self.rows, self.capacity)
        self.cache.keys, self.cache.values = self.entry.keys, self.entry.values   # the pool's buffers

    def _run(self, ids: np.ndarray, ok: np.ndarray) -> np.ndarray:
        return self.rt.graphs.replay(self.entry, ids, ok, self.cache)


@dataclass
class _GraphEntry:
    keys: list[Any]
    values: list[Any]
    inputs: dict[str, Any] = field(default_factory=dict)       # static device inputs of the captured step
    replay: Callable[[], Any] | None = None
    out: Any = None


Capture = Callable[[Callable[[], Any]], tuple[Callable[[], Any], Any]]


def cuda_capture(step: Callable[[], Any], pool: Any) -> tuple[Callable[[], Any], Any]:
    """Capture ``step`` (a decode step reading only device buffers) as a CUDA graph: ``(replay, output)``.

    The step runs once eagerly on a side stream first (Triton compiles its kernels, cuBLAS allocates its
    workspace); that run writes this step's keys and values, which the capture and every replay write again
    identically (a step's writes depend only on its inputs and on earlier timeline positions)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = step()
    return graph.replay, out


class GraphPool:
    """CUDA graphs of one runtime's decode step, one per (batch bucket, length bucket), sharing one memory pool.

    ``capture`` turns a step into ``(replay, output)`` (default :func:`cuda_capture`; the tests give a stand-in
    that re-runs the step, to check this bookkeeping on CPU)."""

    def __init__(self, rt: LlamaRuntime, capture: Capture | None = None) -> None:
        self.rt = rt
        self._entries: dict[tuple[int, int], _GraphEntry] = {}
        self._capture = capture
        self._pool: Any = None
        self.captured = 0                                          # graphs captured so far (for the benchmark)

    def entry(self, rows: int, capacity: int) -> _GraphEntry:
        return self._entries.setdefault((rows, capacity), _GraphEntry(keys=[], values=[]))

    def clear(self) -> None:
        """Drop every graph and KV buffer (frees their device memory)."""
        self._entries.clear()

    def replay(self, entry: _GraphEntry, ids: np.ndarray, ok: np.ndarray, cache: KVCache) -> np.ndarray:
        """One decode step (one token per row) through the entry's graph; logits [rows, V] Q.16 on the host."""
        import torch

        rt = self.rt
        host = rt._prepare(ids, ok, cache)                        # updates cache.key_ok (host)
        if entry.replay is None:
            entry.inputs = {name: rt.ops.mask(arr) if name == "mask" else rt.ops.const(arr)
                            for name, arr in host.items()}

            def step() -> Any:
                return rt._forward(cache=cache, all_logits=False, **entry.inputs)

            if self._capture is None:
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                entry.replay, entry.out = cuda_capture(step, self._pool)
            else:
                entry.replay, entry.out = self._capture(step)
            self.captured += 1
        else:
            for name, arr in host.items():
                entry.inputs[name].copy_(torch.from_numpy(np.ascontiguousarray(arr)))
        entry.replay()
        rt._finish(ok, cache)
        return rt.ops.numpy(entry.out)[:, -1, :]


def open_session(rt: LlamaRuntime, *, batch: int, max_len: int) -> DynamicSession | StaticSession:
    """The session of ``rt.decode``. ``graphs`` needs CUDA and a backend that declares its forward capture-safe
    (``graph_safe``: nothing synchronizes with the host; ``FusedTritonOps``); otherwise it is ``static`` — the same
    integers, run eagerly."""
    if rt.decode == "dynamic":
        return DynamicSession(rt)
    if rt.decode == "graphs" and rt.ops.name == "cuda" and getattr(rt.ops, "graph_safe", False):
        return GraphSession(rt, batch=batch, max_len=max_len)
    return StaticSession(rt, batch=batch, max_len=max_len)
