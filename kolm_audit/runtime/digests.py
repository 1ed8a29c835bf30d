"""The output digests of ``kolm-int/1`` (docs/runtime-spec.md §8): the one place they are computed.

Every digest is ``sha256`` over RFC 8785 (JCS) bytes. Receipts record them, replay recomputes them, golden suites
pin them; all three call these functions, so a digest can only mean one thing.

================  ===========================================================
what              digest of the JCS bytes of
================  ===========================================================
input             ``[id, ...]`` (the request's token ids)
embedding         ``{"embedding": [int, ...]}`` (Q.16 values)
classification    ``{"label": label, "scores": [int, ...]}`` (Q.16 logits)
generation        ``{"finish_reason": reason, "output_ids": [int, ...]}``
================  ===========================================================

Example::

    >>> input_digest([101, 7592, 102])
    'sha256:a3961465edbfcdd87077bdebaa55b46471ad735fca0316837d3b53096f602a46'
    >>> int_array_jcs([1, -2, 3])
    b'[1,-2,3]'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kolm_audit.canonical import MAX_SAFE_INT, digest, jcs


def int_array_jcs(values: Sequence[int] | np.ndarray) -> bytes:
    """JCS bytes of an integer array, fast: for I-JSON safe integers RFC 8785 writes plain decimal numbers.

    An integer numpy array is range-checked and formatted without a Python loop over its elements (``tolist``
    and ``map(str)`` run in C); anything else goes element by element, and a value beyond ``±(2^53 - 1)`` reaches
    :func:`kolm_audit.canonical.jcs`, which raises the canonical error."""
    arr = values if isinstance(values, np.ndarray) else None
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iu":
        if arr.size and (int(arr.max()) > MAX_SAFE_INT or int(arr.min()) < -MAX_SAFE_INT):
            return jcs(arr.tolist())  # raises the canonical error
        return ("[" + ",".join(map(str, arr.tolist())) + "]").encode("ascii")
    ints = [int(v) for v in values]
    if any(abs(v) > MAX_SAFE_INT for v in ints):
        return jcs(ints)  # raises the canonical error
    return ("[" + ",".join(map(str, ints)) + "]").encode("ascii")


def input_digest(ids: Sequence[int]) -> str:
    """Digest of a request's token ids: ``sha256(JCS([id, ...]))``."""
    return digest(int_array_jcs(ids))


def embedding_digest(embedding: Sequence[int] | np.ndarray) -> str:
    """``sha256(JCS({"embedding": [int, ...]}))`` of a Q.16 embedding."""
    return digest(b'{"embedding":' + int_array_jcs(embedding) + b"}")


def classification_digest(label: str, scores: Sequence[int]) -> str:
    """``sha256(JCS({"label": label, "scores": [int, ...]}))``."""
    return digest(b'{"label":' + jcs(label) + b',"scores":' + int_array_jcs(scores) + b"}")


def generation_digest(output_ids: Sequence[int], finish_reason: str) -> str:
    """``sha256(JCS({"finish_reason": reason, "output_ids": [int, ...]}))``."""
    return digest(b'{"finish_reason":' + jcs(finish_reason) + b',"output_ids":' + int_array_jcs(output_ids) + b"}")
