"""The KV cache of the fused CPU backend's one-kernel decoding steps, and a decoder that keeps it on the host.

:func:`~kolm_audit.runtime.cpu_decode.decode_forward` runs a whole decoding step as one compiled call, so at one
token per request the host work around the call is what is left to save: ~0.15 ms a step (4×256 Llama, measured
in place) against a ~0.35 ms kernel when the step goes through the model's tensor-level path (the step's host
inputs, tensor views of every layer's cache handed back to the model, the checks of every operand).
:class:`CpuDecoder` keeps a session's state between steps as numpy — each layer's :class:`KVBundle`, the real-key
mask ``key_ok`` [B, T] and the next positions ``pos`` [B] — and passes the kernel exactly the inputs the model's
path builds (``docs/runtime-spec-llama.md`` §5, §7: a step's query is its newest key, so its causal/padding mask is
``key_ok`` with the new column; its position is ``pos``; the cache holds ``T`` rows), so the integers are the same.

Example (the state a decoder grows; the model makes decoders through ``FusedCpuOps.decoder``)::

    >>> kv = KVBundle.empty(2, 1, 4, 3)
    >>> kv.buffers[0].shape, kv.used
    ((2, 1, 64, 4), 0)
    >>> kv.room(70) is kv, kv.room(70).buffers[0].shape[2]
    (False, 140)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from kolm_audit.runtime import cpu_decode as kd
from kolm_audit.runtime import cpu_sync as ks
from kolm_audit.runtime.cpu_gemv import FEW_ROWS
from kolm_audit.runtime.host_crew import StepCrew
from kolm_audit.runtime.host_threads import Workers

KQ8 = "_kolm_kq8"               # memo on a key tensor [B,Hk,T,D]: (int8 rows [B,Hk,T,D], m [B,Hk,T], e [B,Hk,T])
BUNDLE = "_kolm_kv"             # on a key tensor of a decoding cache: the KVBundle it is a view of


class KVBundle:
    """One layer's KV cache for the one-kernel decoding step: numpy buffers with spare capacity along time — keys
    after RoPE ``k`` and values ``v`` int32 [B, Hk, C, D], the keys' §3.3 rows ``kq`` int8 [B, Hk, C, D], ``mk``,
    ``ek`` int64 [B, Hk, C] — of which the first ``used`` rows are written. A key tensor handed to the model (a view
    of ``k``, :meth:`views`) carries its bundle (``BUNDLE``). Rows below ``used`` are never written again, so an
    older view stays valid; growing a view that is not the newest copies."""

    __slots__ = ("buffers", "used")

    def __init__(self, buffers: tuple[np.ndarray, ...], used: int) -> None:
        self.buffers, self.used = buffers, used

    @classmethod
    def empty(cls, b: int, hk: int, d: int, t: int) -> KVBundle:
        """A bundle with no rows and room for at least ``t`` (capacity ``max(64, 2·t)``)."""
        cap = max(64, 2 * t)
        return cls((np.empty((b, hk, cap, d), np.int32), np.empty((b, hk, cap, d), np.int8),
                    np.empty((b, hk, cap), np.int64), np.empty((b, hk, cap), np.int64),
                    np.empty((b, hk, cap, d), np.int32)), 0)

    @classmethod
    def growing(cls, ops: Any, keys: torch.Tensor, values: torch.Tensor, t: int) -> KVBundle:
        """The bundle to write ``t`` new rows after ``keys``/``values`` [B, Hk, T0, D] (int32): their own when they
        are its newest rows and it has room, else a fresh one (room for ``T0 + t`` rows) holding a copy; the keys'
        int8 rows come from ``ops._memo(keys, KQ8)``."""
        t0 = keys.shape[2]
        kv = getattr(keys, BUNDLE, None)
        if kv is not None and kv.used == t0 and kv.buffers[0].shape[2] >= t0 + t:
            return kv
        kq, mk, ek = ops._memo(keys, KQ8)
        return cls._holding(tuple(part.numpy() for part in (keys, kq, mk, ek, values)), t0, t)

    def room(self, t: int) -> KVBundle:
        """This bundle when it has room for ``t`` more rows, else a fresh one (room for ``used + t``) with a copy."""
        if self.buffers[0].shape[2] >= self.used + t:
            return self
        return KVBundle._holding(self.buffers, self.used, t)

    @classmethod
    def _holding(cls, parts: tuple[np.ndarray, ...], used: int, t: int) -> KVBundle:
        """A fresh bundle with room for ``used + t`` rows holding the first ``used`` rows of ``parts`` (``k``, ``kq``,
        ``mk``, ``ek``, ``v`` arrays of the buffers' layout)."""
        b, hk, _, d = parts[0].shape
        fresh = cls.empty(b, hk, d, used + t)
        for buf, part in zip(fresh.buffers, parts, strict=True):
            buf[:, :, :used] = part[:, :, :used]
        fresh.used = used
        return fresh

    def take(self, rows: np.ndarray) -> KVBundle:
        """A bundle of the requests ``rows`` (indices along the batch; copies)."""
        return KVBundle(tuple(np.ascontiguousarray(buf[rows]) for buf in self.buffers), self.used)

    def views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) tensor views of the ``used`` rows, the keys tagged with this bundle."""
        k, v = (torch.from_numpy(self.buffers[i][:, :, :self.used]) for i in (0, 4))
        setattr(k, BUNDLE, self)
        return k, v


class CpuDecoder:
    """The decoding steps of one batch, one token per request each, on
    :func:`~kolm_audit.runtime.cpu_decode.decode_forward`, with the state kept on the host between steps.

    ``operands``: the model's constant kernel operands (``host_operands.step_operands``: ``(emb, g_first, stack,
    head, rsqrt, cos, sin, exp_pair, sig_pair)``); ``kvs``: one :class:`KVBundle` per layer holding the ``T`` rows of
    the prefill; ``key_ok`` bool [B, T] and ``pos`` int64 [B] as in the model's cache
    (:class:`~kolm_audit.runtime.decode.KVCache`); ``scalars``: ``(eps_q32, heads, scale_mult, scale_shift)``;
    ``paths``: the backend's ``gemm_paths`` counter and this step's entry (counted once a step); ``workers``: the
    backend's threads. The requests of a step are independent: many are split between the threads by request
    (``workers.par``), one kernel call each; at most ``FEW_ROWS`` are split by output columns, every thread on every
    request (:mod:`~kolm_audit.runtime.cpu_step`), the partner thread kept in its kernel between steps
    (:class:`~kolm_audit.runtime.host_crew.StepCrew`) until :meth:`close`. Greedy runs of at most ``FEW_ROWS``
    requests (:meth:`greedy`) go through that kernel in one call, on one thread too."""

    def __init__(self, *, operands: tuple, kvs: list[KVBundle], key_ok: np.ndarray, pos: np.ndarray,
                 scalars: tuple[int, int, int, int], vocab: int, paths: tuple[Counter[str], str],
                 workers: Workers) -> None:
        self.operands, self.kvs, self.scalars, self.vocab, self.paths = operands, kvs, scalars, vocab, paths
        self.workers = workers
        self.crew: StepCrew | None = None
        stack, head = operands[2], operands[3]                              # a step's work per request: its weights
        self.weight_bytes = sum(lin[0].nbytes for layer in stack for lin in layer[:4]) + head[0].nbytes
        self.key_ok = np.ascontiguousarray(key_ok, dtype=np.bool_)                  # [B,T] real keys
        self.pos = np.ascontiguousarray(pos, dtype=np.int64)                        # [B] next positions
        if self.key_ok.ndim != 2 or self.pos.shape != self.key_ok.shape[:1] or any(
                kv.used != self.key_ok.shape[1] or kv.buffers[0].shape[0] != self.pos.shape[0] for kv in kvs):
            raise ValueError("decoder state: key_ok [B, T], pos [B] and bundles of B requests and T rows")

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Logits int32 [B, V] Q.16 of one new token per request (``tokens`` int64 [B]); every layer's cache grows
        by its key and value."""
        ids = self._tokens(tokens)
        b, t0 = self.key_ok.shape
        self.kvs = [kv.room(1) for kv in self.kvs]
        key_ok = np.concatenate([self.key_ok, np.ones((b, 1), dtype=np.bool_)], axis=1)       # [B,T+1]
        split = self._parts(b) == 2
        logits = self._crew(b, 2).step(ids, self.pos, key_ok) if split else self._rows_step(ids, t0, key_ok)
        self._grown(key_ok)
        return logits

    def greedy(self, tokens: np.ndarray, steps: int, eos: np.ndarray) -> np.ndarray | None:
        """Up to ``steps`` steps of greedy decoding from ``tokens`` (int64 [B]) run in one kernel call, each step's
        tokens chosen there (the largest logit, ties to the lowest id); they end after a step in which a request's
        token is one of ``eos``. The tokens chosen after each step run, int64 [s, B]; ``None`` for more than
        ``FEW_ROWS`` requests (their steps are split by request: the session runs them one at a time)."""
        ids = self._tokens(tokens)
        b = ids.shape[0]
        parts = self._parts(b)
        if not parts:
            return None
        self.kvs = [kv.room(steps) for kv in self.kvs]
        key_ok = np.concatenate([self.key_ok, np.ones((b, 1), dtype=np.bool_)], axis=1)       # [B,T+1]
        chosen = self._crew(b, parts).greedy(ids, self.pos, key_ok, steps, eos)               # [s,B]
        self._grown(np.concatenate([self.key_ok, np.ones((b, chosen.shape[0]), dtype=np.bool_)], axis=1))
        return chosen

    def _tokens(self, tokens: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(tokens, dtype=np.int64)
        if ids.shape != self.pos.shape:
            raise ValueError(f"a step takes one token per request: expected shape {self.pos.shape}, got {ids.shape}")
        return ids

    def _parts(self, b: int) -> int:
        """In how many parts a step of ``b`` requests runs through the crew's kernel: 2 (split between two threads
        by output columns) or 1 for at most ``FEW_ROWS`` requests, 0 (split by request instead) for more."""
        return self.workers.parts(2, b * self.weight_bytes) if b <= FEW_ROWS else 0

    def _grown(self, key_ok: np.ndarray) -> None:
        """The state after the steps that made the real keys ``key_ok`` [B, T + s]: ``s`` more rows in every cache,
        positions ``s`` on."""
        steps = key_ok.shape[1] - self.key_ok.shape[1]
        for kv in self.kvs:
            kv.used = key_ok.shape[1]
        self.key_ok, self.pos = key_ok, self.pos + steps
        self.paths[0][self.paths[1]] += steps

    def _rows_step(self, ids: np.ndarray, t0: int, key_ok: np.ndarray) -> np.ndarray:
        """The step's logits [B, V] (``key_ok`` [B, t0 + 1] with the new keys), the requests split between the
        threads (one kernel call each)."""
        b = ids.shape[0]
        emb, g_first, stack, head, rsqrt, cos, sin, exp_pair, sig_pair = self.operands
        eps_q32, heads, scale_mult, scale_shift = self.scalars
        logits = np.empty((b, self.vocab), np.int32)
        pos, valid, bufs = self.pos[:, None], key_ok[:, None, None, :], tuple(kv.buffers for kv in self.kvs)

        def run(lo: int, hi: int) -> None:                                          # requests lo … hi - 1
            caches = bufs if hi - lo == b else tuple(tuple(a[lo:hi] for a in kv) for kv in bufs)
            kd.decode_forward(ids[lo:hi], emb, g_first, stack, caches, head, eps_q32, rsqrt, pos[lo:hi], cos, sin,
                              heads, t0, valid[lo:hi], scale_mult, scale_shift, exp_pair, sig_pair, True, 0, 1,
                              ks.ALONE, step_buffers(self.operands, heads, hi - lo, 1),
                              logits[lo:hi])                                        # [hi-lo,V] int32 Q.16
        self.workers.par(b, b * self.weight_bytes, run)
        return logits

    def _crew(self, b: int, parts: int) -> StepCrew:
        """The crew of steps in ``parts`` over the current caches, started (again) when they, the batch or the parts
        changed."""
        self.workers.rest()                                 # spinning pool workers would slow the crew's partner
        caches = tuple(kv.buffers for kv in self.kvs)
        if self.crew is None or not self.crew.fits(caches, b, parts):
            self.close()
            stack, heads = self.operands[2], self.scalars[1]
            hid, inter = self.operands[0][0].shape[1], stack[0][2][0].shape[0] // 2
            shared = (*step_buffers(self.operands, heads, b, 1), np.empty((b, hid), np.int32),
                      np.empty((b, inter), np.int32), np.empty((b, hid), np.int32), np.empty((b, hid), np.int32))
            self.crew = StepCrew(operands=self.operands, scalars=self.scalars, caches=caches, b=b, vocab=self.vocab,
                                 shared=shared, parts=parts)
        return self.crew

    def close(self) -> None:
        """Stop the partner thread of split steps, if one runs (the next split step starts another)."""
        if self.crew is not None:
            self.crew.stop()
            self.crew = None

    def select(self, rows: np.ndarray) -> None:
        """Keep the requests ``rows`` (indices into the current batch, increasing); the others are dropped."""
        self.close()
        self.kvs = [kv.take(rows) for kv in self.kvs]
        self.key_ok, self.pos = self.key_ok[rows], self.pos[rows]


def step_buffers(operands: tuple, heads: int, b: int, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The buffers the parts of one :func:`~kolm_audit.runtime.cpu_decode.decode_forward` call share for ``b``
    requests of ``t`` new tokens (``operands`` as for :class:`CpuDecoder`): ``(qkv [B·T, (nh+2nkv)·D], q
    [B, nh, T, D], ctx [B, T, nh·D])`` int32."""
    n_qkv, d = operands[2][0][0][0].shape[0], 2 * operands[5].shape[1]          # q|k|v width; head size (RoPE)
    return (np.empty((b * t, n_qkv), np.int32), np.empty((b, heads, t, d), np.int32),
            np.empty((b, t, heads * d), np.int32))

