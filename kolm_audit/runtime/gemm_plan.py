"""Which exact matrix product runs a linear layer: chosen from the shapes and the device, refused when not proven.

A linear layer's product ``acc = q · Wᵀ`` (``docs/runtime-spec.md`` §4.2) has ``|q| <= 127`` and the weight split at
load into balanced base-256 digits ``W = Σ_l D_l · 256^l`` (``|D_l| <= dmax <= 128``). Every path below computes
``q · D_lᵀ`` over K-chunks of ``c`` columns on hardware that is exact while every partial sum of a chunk, in any
order, is an integer its accumulator represents exactly: bounded by ``c · 127 · dmax`` (the sum of the absolute
products). Chunks and digits are then combined in int64.

=============  ==========================================================  ===================  =============
path           product                                                     accumulator limit    operands
=============  ==========================================================  ===================  =============
``int_mm``     ``torch._int_mm`` (int8 × int8 → int32)                     ``2^31``             int8
``bf16_fp32``  ``torch.mm/bmm(..., out_dtype=torch.float32)`` on bf16      ``2^24``             bf16 (exact ≤ 256)
``fp32``       fp32 GEMM at full precision (no TF32, precision "highest")  ``2^24``             fp32
``fp64``       fp64 GEMM                                                   ``2^53``             fp64
=============  ==========================================================  ===================  =============

:func:`plan_gemm` picks, for one layer, the first path of a preference order that is *available* (the device
supports it for these shapes, :class:`GemmCaps`) and *exact* (fp32 only at full precision; a chunk size ``c``
dividing K with ``c · 127 · dmax`` below the limit). A path named alone is required: if it is unavailable or cannot
be proven exact for the layer, :class:`~kolm_audit.errors.InputError` says why, instead of running something else
or something inexact; so is an explicit chunk cap that breaks the bound. :func:`check_runtime` re-checks, before
each product, the global settings an fp32 plan depends on.

Example::

    >>> cuda = GemmCaps(device="cuda", int_mm=True, bf16_fp32=True, fp32_exact=True)
    >>> p = plan_gemm(k=2048, n=6144, digits=1, dmax=127, caps=cuda)
    >>> p.path, p.chunk, p.chunks, p.bound < p.limit
    ('bf16_fp32', 1024, 2, True)
    >>> print(p.description)
    bf16_fp32 K=2048 as 2 chunks of 1024, 1 digit, N=6144 (partial sums <= 16,516,096 < 2^24)
    >>> plan_gemm(k=2048, n=6144, digits=1, dmax=127, caps=cuda, prefer="int_mm").path
    'int_mm'
    >>> try:                                       # a chunk of 2048 would reach 2^24: refused
    ...     plan_gemm(k=2048, n=6144, digits=1, dmax=127, caps=cuda, prefer="fp32", max_chunk=2048)
    ... except InputError as exc:
    ...     print(exc.field, "|", exc.expected)
    gemm | chunks of at most 1040 columns
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from kolm_audit.errors import InputError

PATHS = ("int_mm", "bf16_fp32", "fp32", "fp64")
LIMIT_BITS = {"int_mm": 31, "bf16_fp32": 24, "fp32": 24, "fp64": 53}
Q_MAX = 127                      # |q| of a quantized activation (spec §3.3)
BF16_EXACT = 256                 # every integer of magnitude <= 256 is exact in bf16 (8 significant bits)
DEFAULT_ORDER = {"cpu": ("int_mm", "fp32", "fp64"), "cuda": ("bf16_fp32", "fp32", "fp64")}


@dataclass(frozen=True, kw_only=True)
class GemmCaps:
    """What the device and torch build can run (probed once by the backend; injected in tests).

    ``int_mm_min_k``: smallest K ``torch._int_mm`` is trusted for (on torch 2.13 CPU it returns wrong sums for
    ``K = 1``, measured; 8 is used). ``int_mm_multiple``: K and N must be multiples of it (CUDA: 8).
    ``int_mm_min_rows``: the operand needs more rows than this (CUDA: 16; the backend pads the operand with rows
    whose results it never reads).
    """

    device: str
    int_mm: bool
    bf16_fp32: bool
    fp32_exact: bool
    int_mm_min_k: int = 8
    int_mm_multiple: int = 1
    int_mm_min_rows: int = 0

    def __post_init__(self) -> None:
        if self.device not in DEFAULT_ORDER:
            raise ValueError(f"device must be one of {sorted(DEFAULT_ORDER)}")


@dataclass(frozen=True, kw_only=True)
class GemmPlan:
    """The exact product of one linear layer: ``chunks`` K-chunks of ``chunk`` columns on ``path``."""

    path: str
    k: int                       # input features
    n: int                       # output features (of one digit)
    digits: int                  # base-256 digits of the weight (1 for int8, 3 for int4/NVFP4)
    chunk: int                   # columns per chunk (divides k)
    chunks: int                  # k // chunk
    bound: int                   # chunk · 127 · dmax: no partial sum exceeds it in magnitude
    limit: int                   # 2^24 (fp32 accumulators), 2^31 (int32) or 2^53 (fp64)
    pad_rows: int                # the operand has at least this many rows (extra rows are never read)

    @cached_property
    def description(self) -> str:
        """One line for benchmark output and logs (computed once)."""
        split = f"as {self.chunks} chunks of {self.chunk}" if self.chunks > 1 else "in one chunk"
        digits = f"{self.digits} digit" + ("s" if self.digits > 1 else "")
        bits = self.limit.bit_length() - 1
        pad = f", operand padded to >= {self.pad_rows} rows" if self.pad_rows else ""
        return f"{self.path} K={self.k} {split}, {digits}, N={self.n}{pad} (partial sums <= {self.bound:,} < 2^{bits})"

    @property
    def operand(self) -> str:
        """The dtype name of both operands: ``int8``, ``bfloat16``, ``float32`` or ``float64``."""
        return {"int_mm": "int8", "bf16_fp32": "bfloat16", "fp32": "float32", "fp64": "float64"}[self.path]


def _largest_divisor(k: int, at_most: int) -> int:
    """The largest divisor of ``k`` that is ``<= at_most`` (at least 1)."""
    best = 1
    for c in range(1, int(k ** 0.5) + 1):
        if k % c == 0:
            for d in (c, k // c):
                if best < d <= at_most:
                    best = d
    return best


def _unavailable(path: str, *, k: int, n: int, digits: int, dmax: int, caps: GemmCaps) -> str | None:
    """Why ``path`` cannot run this layer on this device (``None``: it can)."""
    if path == "int_mm":
        if not caps.int_mm:
            return "torch._int_mm is not available on this device"
        if k < caps.int_mm_min_k:
            return f"torch._int_mm is not trusted for K={k} < {caps.int_mm_min_k}"
        m = caps.int_mm_multiple
        if m > 1 and (k % m or (n * digits) % m):
            return f"torch._int_mm on {caps.device} needs K and N multiples of {m} (K={k}, N={n * digits})"
        if dmax > 128:
            return f"weight digits up to {dmax} do not fit int8"
    if path == "bf16_fp32" and not caps.bf16_fp32:
        return "bf16 GEMM with fp32 output (out_dtype) is not available on this device"
    return None


def _inexact(path: str, *, digits: int, dmax: int, caps: GemmCaps) -> str | None:
    """Why ``path`` is not exact whatever the chunking (``None``: a small enough chunk makes it exact)."""
    if path == "fp32" and not caps.fp32_exact:
        return ("fp32 GEMM is not at full precision (torch.get_float32_matmul_precision() != 'highest' or "
                "torch.backends.cuda.matmul.allow_tf32 is set)")
    if path == "bf16_fp32" and dmax > BF16_EXACT:
        return f"weight digits up to {dmax} are not exact in bf16 (at most {BF16_EXACT})"
    return None


def plan_gemm(*, k: int, n: int, digits: int, dmax: int, caps: GemmCaps, prefer: str = "auto",
              max_chunk: int | None = None) -> GemmPlan:
    """The exact GEMM for a layer with ``k`` inputs, ``n`` outputs and ``digits`` weight digits of magnitude at most
    ``dmax``.

    ``prefer``: ``"auto"`` (the device's default order: CPU ``int_mm, fp64``; CUDA ``bf16_fp32, fp32, fp64``), one
    path name (required: refused if unavailable or inexact), or a comma-separated order (the first path that is
    available and exact, e.g. fp32 only while it is at full precision; refused if none is). ``max_chunk`` caps the
    chunk size (default: the largest exact one); a cap that makes a chunk's partial sums reach the accumulator's
    limit is refused, as is an unknown path.
    """
    order = DEFAULT_ORDER[caps.device] if prefer == "auto" else tuple(p.strip() for p in prefer.split(","))
    bad = [p for p in order if p not in PATHS]
    if bad or not order:
        raise InputError("unknown GEMM path", field="gemm", expected="auto or a comma-separated order of "
                         + " | ".join(PATHS), actual=prefer)
    if k < 1 or n < 0 or digits < 1 or dmax < 0:
        raise InputError("bad layer shape for a GEMM plan", field="gemm", actual=f"K={k} N={n} digits={digits}")
    reasons = []
    for path in order:
        why = _unavailable(path, k=k, n=n, digits=digits, dmax=dmax, caps=caps)
        if why is not None:
            reasons.append(f"{path}: {why}")
            continue
        why = _inexact(path, digits=digits, dmax=dmax, caps=caps)
        if why is not None and len(order) == 1:
            raise InputError(f"{path} is not proven exact: {why}", field="gemm", expected="another path")
        if why is not None:                                             # an order: the next path
            reasons.append(f"{path}: {why}")
            continue
        limit = 1 << LIMIT_BITS[path]
        exact_max = (limit - 1) // (Q_MAX * max(dmax, 1))              # largest chunk with bound < limit
        want = min(k, exact_max if max_chunk is None else max_chunk)
        chunk = _largest_divisor(k, want)
        bound = chunk * Q_MAX * dmax
        if bound >= limit:
            raise InputError(f"{path} is not proven exact for K={k}: a chunk of {chunk} columns gives partial sums "
                             f"up to {bound:,} >= 2^{LIMIT_BITS[path]}", field="gemm",
                             expected=f"chunks of at most {exact_max} columns")
        pad = caps.int_mm_min_rows + 1 if path == "int_mm" and caps.int_mm_min_rows else 0
        return GemmPlan(path=path, k=k, n=n, digits=digits, chunk=chunk, chunks=k // chunk, bound=bound,
                        limit=limit, pad_rows=pad)
    raise InputError("no exact GEMM path is available for this layer", field="gemm",
                     expected=" or ".join(order), actual="; ".join(reasons))


def check_runtime(plan: GemmPlan, *, fp32_exact: bool) -> None:
    """Refuse to run an fp32 plan once fp32 GEMMs stopped being full precision (TF32 or a lower matmul precision
    enabled after the model was loaded): its partial sums would no longer be exact."""
    if plan.path == "fp32" and not fp32_exact:
        raise InputError("fp32 GEMM is no longer at full precision, so this linear layer would not be exact",
                         field="torch.backends.cuda.matmul.allow_tf32 / torch.get_float32_matmul_precision()",
                         expected="allow_tf32 False and precision 'highest' (as when the model was loaded)")
