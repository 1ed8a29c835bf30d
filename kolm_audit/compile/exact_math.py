"""The integer arithmetic of the exact trainer ``kolm.train-exact/1`` (normative text: docs/training-spec.md).

Everything here is integer arithmetic on numpy ``int64`` (or Python ints) with bounds that make overflow impossible
(each function states them; :func:`check_features` and the saturations enforce them), so the same inputs give
the same integers on every machine, BLAS, thread count and numpy version. Rounding uses the runtime's one rule
(docs/runtime-spec.md §2: ``rnd(r) = ⌊r + 1/2⌋``) through :mod:`kolm_audit.runtime.fixedpoint`; the softmax is the
runtime's integer softmax (§5.2) over its own exp table.

Formats (spec §2):

* features ``x``: Q.16 (the runtime's mean-pooled embeddings), ``|x| < 2^21``, plus a bias column of ``2^16``;
* master weights ``W`` (bias in the last column) and the momentum ``V``: Q.24 in int64,
  ``|W| ≤ 2^30 - 1`` and ``|V| ≤ 2^40 - 1`` (saturated);
* logits Q.16, probabilities Q.16, learning rate and momentum Q.16, weight decay Q.32.

Example (one SGD step on two examples with two labels, from zero weights)::

    >>> import numpy as np
    >>> from kolm_audit.compile.tables import exp_table
    >>> x = augment(np.array([[1 << 16, 0], [0, 1 << 16]]))            # two one-hot features, Q.16
    >>> w, v = np.zeros((2, 3), dtype=np.int64), np.zeros((2, 3), dtype=np.int64)
    >>> g = gradient(w, x, np.array([0, 1]), exp_table())               # Q.24 mean cross-entropy gradient
    >>> g.tolist()
    [[-4194304, 4194304, 0], [4194304, -4194304, 0]]
    >>> w, v = sgd_momentum(w, v, g, lr=1 << 16, momentum=0, decay=0)
    >>> logits(w, x).tolist()                                           # Q.16: +0.25 / -0.25
    [[16384, -16384], [-16384, 16384]]
"""

from __future__ import annotations

import hashlib
import re
from fractions import Fraction

import numpy as np

from kolm_audit.errors import InputError, UnsupportedModel
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.reference import softmax
from kolm_audit.runtime.weights import MAX_SHIFT, MIN_SHIFT

TRAIN_SPEC = "kolm.train-exact/1"
W_FRAC = 24                        # master weights, momentum and gradients are Q.24
LR_FRAC = MOMENTUM_FRAC = 16       # learning rate and momentum are Q.16
DECAY_FRAC = 32                    # weight decay is Q.32
X_LIMIT = 1 << 21                  # |feature| < 2^21 (real < 32)
W_LIMIT = (1 << 30) - 1            # |W| <= 2^30 - 1 (real < 64), saturated after every step
V_LIMIT = (1 << 40) - 1            # |V| <= 2^40 - 1, saturated after every step
MAX_COLUMNS = 1 << 11              # features + bias column
MAX_BATCH = 1 << 12
MAX_LR = 1 << 20                   # learning rate <= 16
BIAS_INPUT = 1 << fp.ACT_FRAC_BITS   # the bias column: 1.0 in Q.16
RNG_DOMAIN = b"kolm.train-exact/1\x00"
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")


# ---- numbers in the recipe ------------------------------------------------------------------------------------

def decimal_fixed(text: str, frac_bits: int, *, field: str, low: int = 0, high: int | None = None) -> int:
    """``rnd(d · 2^frac_bits)`` of the decimal string ``d`` (exact rational arithmetic), checked to lie in
    ``[low, high]``; :class:`InputError` naming ``field`` otherwise.

    >>> decimal_fixed("0.9", 16, field="momentum")
    58982
    """
    if not isinstance(text, str) or not _DECIMAL.match(text):
        raise InputError("expected a non-negative decimal number written as a string", field=field,
                         expected='e.g. "0.05" or "1e-3"', actual=repr(text)[:40])
    q = fp.rnd_fraction(Fraction(text) * (1 << frac_bits))
    if q < low or (high is not None and q > high):
        hi = "" if high is None else f", at most {Fraction(high, 1 << frac_bits)}"
        raise InputError("value out of range", field=field,
                         expected=f"at least {Fraction(low, 1 << frac_bits)}{hi} (after rounding to Q.{frac_bits})",
                         actual=text)
    return q


# ---- counter-based random numbers (spec §3) --------------------------------------------------------------------

def draw_u64(seed: int, purpose: bytes, *counters: int) -> int:
    """``u64(SHA-256(domain ‖ purpose ‖ 0x00 ‖ seed ‖ counters…))``: the first 8 digest bytes, big-endian; every
    integer is 8 bytes big-endian (``0 ≤ value < 2^64``)."""
    h = hashlib.sha256(RNG_DOMAIN + purpose + b"\x00" + seed.to_bytes(8, "big"))
    for c in counters:
        h.update(c.to_bytes(8, "big"))
    return int.from_bytes(h.digest()[:8], "big")


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The visiting order of ``n`` examples in ``epoch``: indices sorted by ``(draw_u64(seed, b"shuffle", epoch, i),
    i)`` — a uniformly random permutation, the same on every machine.

    >>> epoch_order(7, 0, 5).tolist()
    [4, 3, 0, 1, 2]
    """
    keys = [draw_u64(seed, b"shuffle", epoch, i) for i in range(n)]
    return np.array(sorted(range(n), key=lambda i: (keys[i], i)), dtype=np.int64)


# ---- forward and gradient (spec §4) ---------------------------------------------------------------------------

def check_features(x: np.ndarray, *, field: str = "features") -> np.ndarray:
    """Features as int64 ``[N, K]`` after checking ``|x| < 2^21`` and ``K + 1 ≤ 2^11``
    (else :class:`UnsupportedModel`)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "iu":
        raise UnsupportedModel("features must be a 2-D integer array", field=field)
    if x.shape[1] + 1 > MAX_COLUMNS:
        raise UnsupportedModel("too many features for the exact trainer", field=field,
                               expected=f"at most {MAX_COLUMNS - 1}", actual=str(x.shape[1]))
    if x.size and int(np.abs(x.astype(np.int64)).max()) >= X_LIMIT:
        raise UnsupportedModel("feature magnitude outside the exact trainer's bound", field=field,
                               expected="|x| < 2^21 in Q.16 (real < 32)", actual=str(int(np.abs(x).max())))
    return x.astype(np.int64)


def augment(x: np.ndarray) -> np.ndarray:
    """``[x | 2^16]``: Q.16 features with the bias column appended (int64 ``[N, K+1]``)."""
    x = check_features(x)
    return np.concatenate([x, np.full((x.shape[0], 1), BIAS_INPUT, dtype=np.int64)], axis=1)


def logits(w: np.ndarray, xa: np.ndarray) -> np.ndarray:
    """``z = round_shift(xa · Wᵀ, 24)``: Q.16 logits ``[B, L]`` of augmented features ``xa`` [B, K+1] (Q.16) under
    Q.24 weights ``w`` [L, K+1]. Bound: ``|x·W| < 2^21 · 2^30`` per term, ``K + 1 ≤ 2^11`` terms: ``< 2^62``."""
    return fp.round_shift(xa @ w.T, W_FRAC)                              # [B,L] Q.16


def gradient(w: np.ndarray, xa: np.ndarray, y: np.ndarray, exp_table: np.ndarray) -> np.ndarray:
    """Mean cross-entropy gradient of a batch, Q.24 ``[L, K+1]``.

    ``P = softmax(z)`` (the runtime's integer softmax, Q.16), ``g = P - 2^16 · onehot(y)`` (Q.16, ``|g| ≤ 2^16``),
    ``G = rdiv(gᵀ · xa, B · 2^8)`` (Q.32 sum → Q.24 mean). Bound: ``|gᵀ·xa| ≤ B · 2^16 · 2^21 ≤ 2^49``.
    """
    b = xa.shape[0]
    if not 1 <= b <= MAX_BATCH:
        raise ValueError(f"batch size must be in 1..{MAX_BATCH}")
    z = logits(w, xa)                                                    # [B,L] Q.16
    p = softmax(z, np.ones(z.shape, dtype=bool), exp_table)              # [B,L] Q.16
    g = p.copy()
    g[np.arange(b), y] -= BIAS_INPUT                                     # [B,L] Q.16, dL/dz
    return fp.rdiv(g.T @ xa, b << (2 * fp.ACT_FRAC_BITS - W_FRAC))       # [L,K+1] Q.24


def sgd_momentum(w: np.ndarray, v: np.ndarray, g: np.ndarray, *, lr: int, momentum: int, decay: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One SGD step with momentum and L2 weight decay (added to the gradient); returns the new ``(W, V)``.

    ``G' = G + round_shift(decay · W, 32)`` on every weight column (not the bias column);
    ``V ← sat_V(round_shift(momentum · V, 16) + G')``; ``W ← sat_W(W - round_shift(lr · V, 16))``.
    ``lr`` Q.16 in ``[0, 2^20]``, ``momentum`` Q.16 in ``[0, 2^16)``, ``decay`` Q.32 in ``[0, 2^32)``.
    Bounds: ``|decay·W| < 2^62``, ``|momentum·V| < 2^56``, ``|lr·V| < 2^60``.
    """
    if not (0 <= lr <= MAX_LR and 0 <= momentum < 1 << MOMENTUM_FRAC and 0 <= decay < 1 << DECAY_FRAC):
        raise ValueError("optimizer constant out of range (spec §5)")
    if decay:
        g = g.copy()
        g[:, :-1] += fp.round_shift(decay * w[:, :-1], DECAY_FRAC)       # [L,K] Q.24, L2 penalty gradient
    v = np.clip(fp.round_shift(momentum * v, MOMENTUM_FRAC) + g, -V_LIMIT, V_LIMIT)   # [L,K+1] Q.24
    w = np.clip(w - fp.round_shift(lr * v, LR_FRAC), -W_LIMIT, W_LIMIT)               # [L,K+1] Q.24
    return w, v


def learning_rate(lr: int, step: int, total: int, schedule: str) -> int:
    """The Q.16 learning rate of ``step`` (0-based) of ``total``: ``constant``, or ``linear`` decay
    ``rdiv(lr · (total - step), total)``."""
    if schedule == "constant":
        return lr
    if schedule == "linear":
        return int(fp.rdiv(lr * (total - step), total))
    raise ValueError(f"unknown schedule {schedule!r}")


# ---- the trained head in the runtime's int8 linear format (spec §6) --------------------------------------------

def int8_head(w: np.ndarray, prefix: str = "classifier") -> dict[str, np.ndarray]:
    """Q.24 master weights ``[L, K+1]`` (bias last) → the runtime's int8 linear tensors ``prefix.*``
    (docs/runtime-spec.md §4.1), integers only.

    Per row ``n`` with ``a = max_k |W[n,k]|`` over the weight columns: ``weight[n,k] = rdiv(127 · W[n,k], a)``,
    ``(mult, shift) = quantize_multiplier(a / (127 · 2^24))`` (exact rational, spec §3.2 of the runtime),
    ``bias[n] = round_shift(W[n, K], 8)`` (Q.24 → Q.16). A zero row stores zeros and ``(0, 0)``.
    """
    n, k1 = w.shape
    k = k1 - 1
    weight = np.zeros((n, k), dtype=np.int64)
    mult = np.zeros(n, dtype=np.int64)
    shift = np.zeros(n, dtype=np.int64)
    for row in range(n):
        a = int(np.abs(w[row, :k]).max()) if k else 0
        if a == 0:
            continue
        weight[row] = fp.rdiv(127 * w[row, :k], a)
        m, s = fp.quantize_multiplier(Fraction(a, 127 << W_FRAC))
        if not MIN_SHIFT <= s <= MAX_SHIFT:
            raise UnsupportedModel("trained weight scale outside the runtime's range", field=f"{prefix}.shift",
                                   expected=f"{MIN_SHIFT}..{MAX_SHIFT}", actual=str(s))
        mult[row], shift[row] = m, s
    bias = fp.round_shift(w[:, k], W_FRAC - fp.ACT_FRAC_BITS)
    return {f"{prefix}.weight": weight.astype(np.int8), f"{prefix}.mult": mult.astype(np.int32),
            f"{prefix}.shift": shift.astype(np.int32), f"{prefix}.bias": bias.astype(np.int32)}
