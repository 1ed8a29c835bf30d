"""The KV cache of the fused CPU backend: keys, their §3.3 rows and values in buffers with spare capacity.

A decoding step appends one row per request and layer; copying the whole cache at each step (``torch.cat``) costs
more than the step's attention. :class:`KVStore` keeps, per layer, numpy buffers of capacity ``cap >= T``:
the keys after RoPE (int32), their per-row int8 quantization (spec §3.3: ``kq``, ``m``, ``e``, computed once when
the key is written, as every later step reads them) and the values (int32; every activation is saturated to
int32, spec §3.1). The cache handed to the model is a pair of tensor *views* of the first ``T`` rows; rows below
``used`` are never written again, so an older view stays valid, and growing from a view that is not the newest
copies instead of writing into shared memory. The memo ``KQ8`` on a key view holds its quantized rows (the same
tuple :meth:`~kolm_audit.runtime.torch_backend.TorchOps.take` carries along when requests are dropped).

Example::

    >>> import torch
    >>> store = KVStore.empty(batch=2, heads=1, cap=8, head_dim=4)
    >>> store.used = 3
    >>> k, v = store.views(3)
    >>> tuple(k.shape), tuple(v.shape), getattr(k, STORE) is store, len(getattr(k, KQ8))
    ((2, 1, 3, 4), (2, 1, 3, 4), True, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

KQ8 = "_kolm_kq8"       # memo on a key tensor [B, Hk, T, D]: (int8 rows [B, Hk, T, D], m [B, Hk, T], e [B, Hk, T])
STORE = "_kolm_kv"      # on the key and value views of a cache: the KVStore they are views of
_MIN_CAP = 64


@dataclass(eq=False)
class KVStore:
    """One layer's cache buffers, ``[B, Hk, cap, D]`` (``mk``/``ek`` ``[B, Hk, cap]``); rows ``< used`` are filled."""

    k: np.ndarray       # int32 keys after RoPE, Q.16
    kq: np.ndarray      # int8 §3.3 rows of the keys
    mk: np.ndarray      # int64 their step mantissas
    ek: np.ndarray      # int64 their step exponents
    v: np.ndarray       # int32 values, Q.16
    used: int

    @classmethod
    def empty(cls, *, batch: int, heads: int, cap: int, head_dim: int) -> KVStore:
        shape = (batch, heads, cap, head_dim)
        return cls(k=np.empty(shape, np.int32), kq=np.empty(shape, np.int8), mk=np.empty(shape[:3], np.int64),
                   ek=np.empty(shape[:3], np.int64), v=np.empty(shape, np.int32), used=0)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def views(self, tk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) tensor views of rows ``[0, tk)``, the keys with their ``KQ8`` memo, both tagged ``STORE``."""
        k, v = torch.from_numpy(self.k)[:, :, :tk], torch.from_numpy(self.v)[:, :, :tk]
        memo = (torch.from_numpy(self.kq)[:, :, :tk], torch.from_numpy(self.mk)[:, :, :tk],
                torch.from_numpy(self.ek)[:, :, :tk])
        setattr(k, KQ8, memo)
        setattr(k, STORE, self)
        setattr(v, STORE, self)
        return k, v


def grow_kv(ops: Any, past: tuple[torch.Tensor, torch.Tensor] | None, batch: int, heads: int, head_dim: int,
            new: int) -> KVStore:
    """The store to append ``new`` rows to: ``past``'s own when ``past`` is its newest view and has room, else a
    fresh one (capacity ``max(64, 2·(T0 + new))``) holding a copy of ``past`` (its key memo from ``ops._memo``)."""
    if past is None:
        return KVStore.empty(batch=batch, heads=heads, cap=max(_MIN_CAP, 2 * new), head_dim=head_dim)
    pk, pv = past
    t0 = pk.shape[2]
    store = getattr(pk, STORE, None)
    if (store is not None and getattr(pv, STORE, None) is store and store.used == t0 and store.k.shape[0] == batch
            and store.capacity >= t0 + new):
        return store
    fresh = KVStore.empty(batch=batch, heads=heads, cap=max(_MIN_CAP, 2 * (t0 + new)), head_dim=head_dim)
    kq, mk, ek = ops._memo(pk, KQ8)
    fresh.k[:, :, :t0], fresh.v[:, :, :t0] = pk.numpy(), pv.numpy()
    fresh.kq[:, :, :t0], fresh.mk[:, :, :t0], fresh.ek[:, :, :t0] = kq.numpy(), mk.numpy(), ek.numpy()
    fresh.used = t0
    return fresh
