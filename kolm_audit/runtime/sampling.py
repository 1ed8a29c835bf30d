"""Token selection for ``kolm-int/1``: greedy, or seeded sampling with integer temperature/top-k/top-p.

Everything here is integer arithmetic on the integer logits the forward pass returns (spec:
``docs/runtime-spec-llama.md`` §8). The random numbers come from a stateless counter-based generator: one
SHA-256 per draw, keyed by ``(seed, request key, step)``, so a request draws the same numbers alone or in any
batch, and a replay years later draws them again from the receipt alone.

Example::

    >>> import numpy as np
    >>> from kolm_audit.compile.tables import exp_table
    >>> logits = np.array([5 << 16, 7 << 16, 7 << 16, -3 << 16], dtype=np.int64)   # Q.16
    >>> key = request_key([1, 2])
    >>> select_token(logits, params=DecodingParams(), key=key, step=0, exp_table=exp_table())
    1
    >>> p = DecodingParams(seed=42, temperature=700, top_k=3, top_p=900)
    >>> select_token(logits, params=p, key=key, step=0, exp_table=exp_table()) in (0, 1, 2)
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kolm_audit.canonical import MAX_SAFE_INT, jcs
from kolm_audit.errors import RuntimeInputError
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.llama_ops import exp_weights

U64 = 1 << 64
MAX_SEED = MAX_SAFE_INT                   # seeds are recorded in JCS documents: I-JSON safe integers only
RNG_DOMAIN = b"kolm-int/1/sample\x00"   # domain-separation prefix of every random draw
MAX_TEMPERATURE = 100_000                # per-mille, i.e. T <= 100.0


@dataclass(frozen=True)
class DecodingParams:
    """Decoding parameters, all integers. ``seed is None`` means greedy decoding.

    ``temperature`` is per-mille (1000 = T 1.0), ``top_p`` per-mille (1000 = keep everything), ``top_k`` a count
    (``None`` = whole vocabulary). Sampling parameters without a seed are refused: the seed is what makes a
    sampled decision replayable.
    """

    seed: int | None = None
    temperature: int | None = None
    top_k: int | None = None
    top_p: int | None = None

    def __post_init__(self) -> None:
        for name in ("seed", "temperature", "top_k", "top_p"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer)):
                raise RuntimeInputError("decoding parameters are integers", field=name,
                                        expected="an integer or null", actual=repr(value))
        if self.seed is None:
            for name in ("temperature", "top_k", "top_p"):
                if getattr(self, name) is not None:
                    raise RuntimeInputError("sampling parameters need a seed (seed=null means greedy)",
                                            field=name, expected="null when seed is null",
                                            actual=str(getattr(self, name)))
            return
        if not 0 <= self.seed <= MAX_SEED:
            raise RuntimeInputError("seed out of range", field="seed", expected="0 <= seed <= 2**53 - 1",
                                    actual=str(self.seed))
        if self.temperature is not None and not 1 <= self.temperature <= MAX_TEMPERATURE:
            raise RuntimeInputError("temperature is per-mille", field="temperature",
                                    expected=f"1..{MAX_TEMPERATURE}", actual=str(self.temperature))
        if self.top_k is not None and self.top_k < 1:
            raise RuntimeInputError("top_k is a token count", field="top_k", expected=">= 1",
                                    actual=str(self.top_k))
        if self.top_p is not None and not 1 <= self.top_p <= 1000:
            raise RuntimeInputError("top_p is per-mille", field="top_p", expected="1..1000",
                                    actual=str(self.top_p))

    @property
    def greedy(self) -> bool:
        return self.seed is None

    def to_json(self) -> dict[str, int | None]:
        """The canonical record of these parameters (what a receipt stores)."""
        return {"seed": self.seed, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


def request_key(input_ids: Sequence[int]) -> bytes:
    """The 32-byte request key: SHA-256 of the RFC 8785 bytes of the prompt's token id list."""
    return hashlib.sha256(jcs([int(t) for t in input_ids])).digest()


def random_u64(*, seed: int, key: bytes, step: int) -> int:
    """Draw number ``step`` of request ``key`` under ``seed``: the first 8 bytes (big-endian) of
    SHA-256(``RNG_DOMAIN`` ‖ u64be(seed) ‖ key(32 bytes) ‖ u64be(step))."""
    if len(key) != 32 or not 0 <= seed < U64 or not 0 <= step < U64:
        raise RuntimeInputError("bad random key", field="seed", expected="u64 seed, 32-byte key, u64 step")
    block = RNG_DOMAIN + seed.to_bytes(8, "big") + key + step.to_bytes(8, "big")
    return int.from_bytes(hashlib.sha256(block).digest()[:8], "big")


def greedy_token(logits: np.ndarray) -> int:
    """Index of the largest logit; ties go to the lowest index."""
    return int(np.argmax(logits))


def candidate_order(logits: np.ndarray) -> np.ndarray:
    """Token ids sorted by logit descending, ties by id ascending ([V] int64)."""
    return np.lexsort((np.arange(logits.shape[0]), -logits.astype(np.int64)))


def sampling_weights(logits: np.ndarray, *, params: DecodingParams, exp_table: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The kept candidates and their integer weights, in candidate order (spec §8.3).

    ``logits`` int [V] Q.16 (int32 range). Order candidates by (logit desc, id asc); keep the first ``top_k``;
    ``t_i = rdiv((z_0 - z_i) · 1000, temperature)`` (Q.16, >= 0); weight ``w_i = exp(-t_i)`` from ``tables.exp``
    (Q.30, ``w_0 = 2^30``); keep the shortest prefix with ``1000 · Σw >= top_p · W`` (W = all top-k weights).
    Returns ``(ids [n] int64, weights [n] int64 Q.30)``.
    """
    order = candidate_order(logits)                                       # [V] int64 token ids
    if params.top_k is not None:
        order = order[: params.top_k]                                     # [k] int64
    z = logits[order].astype(np.int64)                                    # [k] int64 Q.16
    temperature = 1000 if params.temperature is None else int(params.temperature)
    t = fp.rdiv((z[0] - z) * 1000, temperature)                           # [k] int64 Q.16, >= 0, < 2^42
    w = exp_weights(t, exp_table)                                         # [k] int64 Q.30, w[0] = 2^30
    if params.top_p is not None and params.top_p < 1000:
        csum = np.cumsum(w)                                               # [k] int64, < 2^49
        need = int(params.top_p) * int(csum[-1])                          # top_p · W
        n = int(np.searchsorted(csum * 1000, need, side="left")) + 1      # shortest prefix: 1000·C_n >= need
        order, w = order[:n], w[:n]
    return order.astype(np.int64), w


def select_token(logits: np.ndarray, *, params: DecodingParams, key: bytes, step: int,
                 exp_table: np.ndarray) -> int:
    """The next token: greedy when ``params.seed is None``, else one seeded integer draw (spec §8.4).

    ``r = (u64 · S) >> 64`` with ``S`` the kept weights' sum; the token is the first kept candidate whose
    cumulative weight exceeds ``r`` (zero-weight candidates are never chosen).
    """
    if params.greedy:
        return greedy_token(logits)
    ids, w = sampling_weights(logits, params=params, exp_table=exp_table)
    csum = np.cumsum(w)                                                   # [n] int64
    total = int(csum[-1])                                                 # >= 2^30: w[0] = 2^30
    r = (random_u64(seed=int(params.seed), key=key, step=step) * total) >> 64   # uniform in [0, total)
    return int(ids[int(np.searchsorted(csum, r, side="right"))])
