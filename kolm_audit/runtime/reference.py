"""numpy reference backend of ``kolm-int/1``: the integer building blocks every model forward uses.

Integer-only: every array here is ``int64`` (values as documented per line), there is no float anywhere. All
rounding is delegated to :mod:`kolm_audit.runtime.fixedpoint`. Spec: ``docs/runtime-spec.md`` §4–§6.

Formats: activations Q.16 (integer ``a`` stands for ``a/2^16``), tables Q.30, norm weights Q.24.

Example::

    >>> import numpy as np
    >>> from kolm_audit.compile.tables import exp_table
    >>> s = np.array([[0, 0, 1 << 20]])                             # scores Q.16; 3rd key is padding
    >>> softmax(s, np.array([[True, True, False]]), exp_table()).tolist()
    [[32768, 32768, 0]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.tables import EXP_STEP_SHIFT, SIG_STEP_SHIFT, SIG_X0

GAMMA_FRAC_BITS = 24            # LayerNorm/RMSNorm weights and biases of norms: gamma Q.24, beta Q.16
PROB_FRAC_BITS = 16             # softmax probabilities Q.16 (sum ≈ 2^16)
MAX_NORM_DIM, MAX_HEAD_DIM, MAX_TOKENS = 1 << 14, 256, 1 << 16
_NEG_SENTINEL = -(1 << 62)
_I32_ACC_LIMIT = 1 << 31


@dataclass(frozen=True)
class IntLinear:
    """An integer linear layer ``y = rnd(acc · m_x · M[n] / 2^(S[n] - e_x)) + bias[n]`` (spec §4.2).

    ``weight``: int [N, K] effective integer weights (int8 values, or int4/NVFP4 values already multiplied
    by their integer group/block scales); ``wmax = max|weight|``; ``mult`` int64 [N] in [2^30, 2^31) (or 0);
    ``shift`` int64 [N]; ``bias`` int64 [N] Q.16.
    """

    weight: np.ndarray
    wmax: int
    mult: np.ndarray
    shift: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        n, k = self.weight.shape
        if self.mult.shape != (n,) or self.shift.shape != (n,) or self.bias.shape != (n,):
            raise ValueError("IntLinear: mult/shift/bias must have shape [N]")
        if self.wmax * fp.QMAX * k * (1 << fp.STEP_MANTISSA_BITS) >= 1 << 62:
            raise ValueError("IntLinear: K · 127 · max|W| · 2^15 must stay below 2^62 (spec §4.2)")


def int_matmul(a: np.ndarray, w: np.ndarray, *, wmax: int) -> np.ndarray:
    """Exact ``a @ w.T`` for int ``a`` [..., K] (|a| <= 127) and int ``w`` [N, K] → int64 [..., N].

    int32 accumulation is used when ``K · 127 · wmax < 2^31`` (then no partial sum can overflow), int64
    otherwise; both are exact, so the choice never changes a result.
    """
    k = a.shape[-1]
    a2 = a.reshape(-1, k)
    if k * fp.QMAX * wmax < _I32_ACC_LIMIT:
        out = np.einsum("mk,nk->mn", a2.astype(np.int32), w.astype(np.int32, copy=False)).astype(np.int64)
    else:
        out = np.einsum("mk,nk->mn", a2.astype(np.int64), w.astype(np.int64, copy=False))
    return out.reshape(*a.shape[:-1], w.shape[0])


def linear(x: np.ndarray, lin: IntLinear) -> np.ndarray:
    """Per-token int8 quantization of ``x`` (Q.16 [..., K]) then an integer linear layer → Q.16 [..., N]."""
    q, m, e = fp.quantize_rows(x)                               # q [...,K] int8 values; m, e [...,1]
    acc = int_matmul(q, lin.weight, wmax=lin.wmax)              # [...,N] int64, |acc| <= K·127·wmax
    y = fp.requantize(acc * m, lin.mult, lin.shift - e)         # [...,N] Q.16
    return fp.saturate_int32(y + lin.bias)                      # [...,N] Q.16, int32 range


def _norm(c: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None, eps_q32: int,
          rsqrt_table: np.ndarray) -> np.ndarray:
    h = c.shape[-1]
    if h > MAX_NORM_DIM or not 0 <= eps_q32 < 1 << 32:
        raise ValueError("norm: H <= 2^14 and 0 <= eps_q32 < 2^32 (spec §5.3 bounds)")
    cmax = np.max(np.abs(c), axis=-1, keepdims=True)            # [...,1] int64
    k = np.maximum(fp.bit_length(cmax) - 24, 0)                 # [...,1] pre-shift so |c'| <= 2^24
    c2 = fp.round_shift(c, k)                                   # [...,H] Q.(16-k)
    var = fp.rdiv(np.sum(c2 * c2, axis=-1, keepdims=True), h)   # [...,1] Q.(32-2k)
    v = np.maximum(var + fp.round_shift(np.int64(eps_q32), 2 * k), 1)   # [...,1] Q.(32-2k), >= 1
    r, p = fp.rsqrt(v, rsqrt_table)                             # 1/sqrt(v) ≈ r / 2^p
    shift = p - (16 - k) + GAMMA_FRAC_BITS                      # [...,1]
    y = fp.requantize(c * r, gamma, shift)                      # [...,H] Q.16 = c/σ · γ
    if beta is not None:
        y = y + beta
    return fp.saturate_int32(y)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, eps_q32: int,
               rsqrt_table: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis (spec §5.3). x Q.16 [..., H]; gamma Q.24 [H]; beta Q.16 [H] → Q.16."""
    mu = fp.rdiv(np.sum(x, axis=-1, keepdims=True), x.shape[-1])   # [...,1] Q.16 mean
    return _norm(x - mu, gamma, beta, eps_q32, rsqrt_table)        # [...,H] Q.16


def rms_norm(x: np.ndarray, gamma: np.ndarray, *, eps_q32: int, rsqrt_table: np.ndarray) -> np.ndarray:
    """RMSNorm over the last axis (spec §5.3): ``x / sqrt(mean(x²) + eps) · γ``. x Q.16; gamma Q.24 → Q.16."""
    return _norm(x, gamma, None, eps_q32, rsqrt_table)


def softmax(scores: np.ndarray, valid: np.ndarray, exp_table: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of Q.16 scores, only over ``valid`` entries (spec §5.2) → Q.16 probabilities.

    Invalid (masked/padded) entries get probability 0 and have no influence on the others. Every row must
    have at least one valid entry.
    """
    s = np.where(valid, scores, _NEG_SENTINEL)                     # [...,T] Q.16
    mx = np.max(s, axis=-1, keepdims=True)                         # [...,1] Q.16
    t = np.where(valid, mx - s, 0)                                 # [...,T] Q.16, >= 0
    e = fp.lut_interp(t, exp_table, x0=0, step_shift=EXP_STEP_SHIFT)   # [...,T] Q.30 exp(-t)
    e = np.where(valid, e, 0)
    total = np.sum(e, axis=-1, keepdims=True)                      # [...,1] Q.30, >= 2^30
    return fp.rdiv(np.left_shift(e, PROB_FRAC_BITS), total)        # [...,T] Q.16


def gelu(x: np.ndarray, cdf_table: np.ndarray) -> np.ndarray:
    """GELU(x) = x · Φ(x) (erf form), Φ from ``tables.gelu_cdf`` (spec §5.4). x Q.16 → Q.16."""
    phi = fp.lut_interp(x, cdf_table, x0=SIG_X0, step_shift=SIG_STEP_SHIFT)   # Q.30
    return fp.saturate_int32(fp.round_shift(x * phi, 30))


def tanh(x: np.ndarray, tanh_table: np.ndarray) -> np.ndarray:
    """tanh(x) from ``tables.tanh`` (spec §5.5). x Q.16 → Q.16."""
    return fp.round_shift(fp.lut_interp(x, tanh_table, x0=SIG_X0, step_shift=SIG_STEP_SHIFT), 14)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, key_valid: np.ndarray, *, scale_mult: int,
              scale_shift: int, exp_table: np.ndarray) -> np.ndarray:
    """Scaled dot-product attention per head (spec §5.2), integer-only.

    q [B, Hq, Tq, D], k and v [B, Hq, Tk, D]: Q.16. key_valid [B, 1 or Hq, Tq or 1, Tk] bool (padding and
    causal masks). ``scale_mult / 2^scale_shift ≈ 1/sqrt(D)``. Returns the context [B, Hq, Tq, D] Q.16.
    """
    if q.shape[-1] > MAX_HEAD_DIM or k.shape[-2] > MAX_TOKENS:
        raise ValueError("attention: head dim <= 256 and <= 2^16 keys (spec §5.2 bounds)")
    qq, mq, eq = fp.quantize_rows(q)                               # [B,H,Tq,D] int8 vals; [B,H,Tq,1]
    kq, mk, ek = fp.quantize_rows(k)                               # [B,H,Tk,D] int8 vals; [B,H,Tk,1]
    acc = np.einsum("bhqd,bhkd->bhqk", qq.astype(np.int32), kq.astype(np.int32)).astype(np.int64)
    mm = mq * np.swapaxes(mk, -1, -2)                              # [B,H,Tq,Tk] <= 2^30
    ee = eq + np.swapaxes(ek, -1, -2)                              # [B,H,Tq,Tk]
    scores = fp.requantize(acc * mm, scale_mult, scale_shift + 16 - ee)   # [B,H,Tq,Tk] Q.16
    probs = softmax(scores, key_valid, exp_table)                  # [B,H,Tq,Tk] Q.16
    ctx = np.einsum("bhqk,bhkd->bhqd", probs, v)                   # [B,H,Tq,D] Q.32, |.| < 2^48
    return fp.saturate_int32(fp.round_shift(ctx, PROB_FRAC_BITS))  # [B,H,Tq,D] Q.16
