"""Integer primitives of the Llama family that :mod:`~kolm_audit.runtime.reference` does not have.

RoPE from ``tables.rope_cos``/``tables.rope_sin``, SiLU from ``tables.sigmoid``, the SwiGLU product and the
integer softmax weights used by sampling. Every rounding goes through :mod:`kolm_audit.runtime.fixedpoint`
(round half up); no float is touched (spec: docs/runtime-spec-llama.md §3–§5).

Example::

    >>> import numpy as np
    >>> from kolm_audit.compile.tables import sigmoid_table
    >>> silu(np.array([0, 1 << 16, -(1 << 16)]), sigmoid_table()).tolist()   # silu(0, 1, -1) in Q.16
    [0, 47911, -17625]
"""

from __future__ import annotations

import numpy as np

from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.tables import EXP_STEP_SHIFT, SIGMOID_STEP_SHIFT, SIGMOID_X0, TABLE_FRAC_BITS


def rope(x: np.ndarray, positions: np.ndarray, cos_table: np.ndarray, sin_table: np.ndarray) -> np.ndarray:
    """Rotary position embedding, HF ``rotate_half`` layout (pairs ``(i, i + D/2)``), integer-only.

    x int64 [B, nh, T, D] Q.16; positions int64 [B, T] (0-based, per request); tables int [P, D/2] Q.30.
    ``out_a = rnd((x_a·cos - x_b·sin) / 2^30)``, ``out_b = rnd((x_b·cos + x_a·sin) / 2^30)``; |x_a·cos ∓ x_b·sin|
    <= sqrt(2)·2^31·2^30 < 2^62. Returns int64 [B, nh, T, D] Q.16 saturated to int32.
    """
    half = x.shape[-1] // 2
    cos = cos_table[positions][:, None, :, :].astype(np.int64)      # [B,1,T,D/2] Q.30
    sin = sin_table[positions][:, None, :, :].astype(np.int64)      # [B,1,T,D/2] Q.30
    xa, xb = x[..., :half], x[..., half:]                           # [B,nh,T,D/2] Q.16 each
    out_a = fp.round_shift(xa * cos - xb * sin, TABLE_FRAC_BITS)    # [B,nh,T,D/2] Q.16
    out_b = fp.round_shift(xb * cos + xa * sin, TABLE_FRAC_BITS)    # [B,nh,T,D/2] Q.16
    return fp.saturate_int32(np.concatenate([out_a, out_b], axis=-1))   # [B,nh,T,D] Q.16


def silu(x: np.ndarray, sigmoid_table: np.ndarray) -> np.ndarray:
    """``silu(x) = x · σ(x)``: x int64 Q.16 (int32 range), σ interpolated from ``tables.sigmoid`` (Q.30).

    ``rnd(x · σ / 2^30)``: |x·σ| <= 2^31·2^30 = 2^61. Left of -16 σ is ``table[0]``, right of 16 ``table[-1]``.
    """
    sig = fp.lut_interp(x, sigmoid_table, x0=SIGMOID_X0, step_shift=SIGMOID_STEP_SHIFT)   # Q.30
    return fp.saturate_int32(fp.round_shift(x * sig, TABLE_FRAC_BITS))                    # Q.16


def swiglu(gate: np.ndarray, up: np.ndarray, sigmoid_table: np.ndarray) -> np.ndarray:
    """``silu(gate) ⊙ up``: both int64 Q.16 (int32 range) → ``rnd(silu·up / 2^16)`` Q.16 (|product| < 2^62)."""
    return fp.saturate_int32(fp.round_shift(silu(gate, sigmoid_table) * up, fp.ACT_FRAC_BITS))


def exp_weights(t: np.ndarray, exp_table: np.ndarray) -> np.ndarray:
    """``exp(-t)`` for t int64 >= 0 in Q.16, interpolated from ``tables.exp`` → int64 Q.30 (0 for t >= 32)."""
    return fp.lut_interp(t, exp_table, x0=0, step_shift=EXP_STEP_SHIFT)
