"""The exact integer runtime ``kolm-int/1`` (spec: ``docs/runtime-spec.md``).

* :mod:`~kolm_audit.runtime.fixedpoint` — the one rounding rule, requantization, per-token quantization.
* :mod:`~kolm_audit.runtime.reference` — numpy integer building blocks (matmul, norms, softmax, attention).
* :mod:`~kolm_audit.runtime.tables` — build-time construction of the ``tables.*`` tensors.
* :mod:`~kolm_audit.compile.quantize` — int8 / int4 / NVFP4 weight quantizers, ``quantize_checkpoint``.
* :mod:`~kolm_audit.runtime.tokenize` — the artifact's own tokenizer.
* :mod:`~kolm_audit.runtime.models` — the forward passes (``bert``, ``llama``).
* :mod:`~kolm_audit.runtime.ops` — backend selection (``numpy`` | ``cpu`` | ``cuda`` | ``auto``): the reference
  (``NumpyOps``) and the fast exact backends — plain torch (:mod:`~kolm_audit.runtime.torch_backend`,
  :mod:`~kolm_audit.runtime.torch_matmul`) and fused kernels (:mod:`~kolm_audit.runtime.fused_ops`; numba on CPU,
  :mod:`~kolm_audit.runtime.cpu_kernels`; Triton on CUDA, :mod:`~kolm_audit.runtime.triton_kernels`).

Example::

    >>> from kolm_audit.runtime import SPEC
    >>> SPEC
    'kolm-int/1'
"""

from __future__ import annotations

SPEC = "kolm-int/1"

__all__ = ["SPEC"]
