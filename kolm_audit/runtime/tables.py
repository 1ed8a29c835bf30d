"""Layouts of the ``tables.*`` tensors of ``kolm-int/1`` and their loader (spec: docs/runtime-spec.md §5).

The forward pass never evaluates a transcendental function: it reads integer tables from the artifact. They are
built once, at compile time, by :mod:`kolm_audit.compile.tables`; here are their fixed layouts, which the runtime
checks before it reads a single entry.

=================  ======  ==============================  ======================  =========
tensor             length  entry i is the value at          of                      format
=================  ======  ==============================  ======================  =========
tables.exp         4097    t = i / 128 (t in [0, 32])       exp(-t)                 Q.30
tables.gelu_cdf    2049    x = -8 + i / 128                 Φ(x) (normal CDF)       Q.30
tables.tanh        2049    x = -8 + i / 128                 tanh(x)                 Q.30
tables.sigmoid     4097    x = -16 + i / 128                σ(x)                    Q.30
tables.rsqrt       3073    t = 1 + i / 1024 (t in [1, 4])   1/sqrt(t)               Q.30
=================  ======  ==============================  ======================  =========

Example::

    >>> import numpy as np
    >>> load_table({"tables.attn_scale": np.array([1 << 30, 32])}, "tables.attn_scale", (2,)).tolist()
    [1073741824, 32]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kolm_audit.errors import ArtifactError

TABLE_FRAC_BITS = 30                          # every table value is Q.30
EXP_LEN, EXP_STEP_SHIFT = 4097, 9             # step 2^-7 in Q.16 units = 2^9
SIG_LEN, SIG_STEP_SHIFT = 2049, 9             # Φ and tanh on [-8, 8], step 2^-7
SIG_X0 = -8 << 16                             # Q.16 x of entry 0
SIGMOID_LEN, SIGMOID_STEP_SHIFT = 4097, 9     # sigmoid on [-16, 16], step 2^-7 (2^9 in Q.16 units)
SIGMOID_X0 = -16 << 16                        # Q.16 x of entry 0


def load_table(tensors: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The integer table ``name`` of exactly ``shape`` as int64, else :class:`ArtifactError` naming the tensor."""
    arr = tensors.get(name)
    if arr is None or arr.dtype.kind != "i" or tuple(arr.shape) != shape:
        raise ArtifactError("runtime table missing or malformed", field=f"tensors.{name}",
                            expected=f"int {list(shape)}", actual=None if arr is None else f"{arr.dtype} {arr.shape}")
    return arr.astype(np.int64)
