"""The exact integer runtime ``kolm-int/1`` (spec: ``docs/runtime-spec.md``).

* :mod:`~kolm_audit.runtime.fixedpoint` — the one rounding rule, requantization, per-token quantization.
* :mod:`~kolm_audit.runtime.reference` — numpy integer building blocks (matmul, norms, softmax, attention).
* :mod:`~kolm_audit.runtime.tables` — build-time construction of the ``tables.*`` tensors.
* :mod:`~kolm_audit.runtime.quantize` — int8 / int4 / NVFP4 weight quantizers, ``quantize_checkpoint``.
* :mod:`~kolm_audit.runtime.tokenize` — the artifact's own tokenizer.
* :mod:`~kolm_audit.runtime.models` — the forward passes (``bert``, ``llama``).

Example::

    >>> from kolm_audit.runtime import SPEC
    >>> SPEC
    'kolm-int/1'
"""

from __future__ import annotations

SPEC = "kolm-int/1"

__all__ = ["SPEC"]
