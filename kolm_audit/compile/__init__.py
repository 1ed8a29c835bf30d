"""The compile stage: from an HF checkpoint (and, with a recipe, training data) to the tensors of a ``.kolm``.

Two entry points:

* :func:`import_checkpoint` (``kolm-audit quantize``): read an HF directory strictly (:mod:`~kolm_audit.compile.hf`),
  quantize it with the family's quantizer (:mod:`~kolm_audit.compile.bert`, :mod:`~kolm_audit.compile.llama`, both
  over :mod:`~kolm_audit.compile.quantize`), add the integer tables the runtime reads
  (:mod:`~kolm_audit.compile.tables`): a manifest and tensors for :func:`kolm_audit.artifact.write_artifact`.
* :func:`kolm_audit.compile.build.compile_recipe` (``kolm-audit compile``): a recipe
  (:mod:`~kolm_audit.compile.recipe`) with pinned data (:mod:`~kolm_audit.compile.data`) and base
  (:mod:`~kolm_audit.compile.features`) → a trainer (:mod:`~kolm_audit.compile.trainer`: the exact integer trainer
  :mod:`~kolm_audit.compile.exact` over :mod:`~kolm_audit.compile.exact_math`, or the pinned float trainer
  :mod:`~kolm_audit.compile.torch_trainer`; for ``task.kind = "generate"`` the staged generator trainer
  :mod:`~kolm_audit.compile.gen_trainer` with :mod:`~kolm_audit.compile.losses`, docs/compile.md) → V
  (:mod:`~kolm_audit.compile.crosscheck`, :mod:`~kolm_audit.compile.gen_build`) and the K-score gate
  (:mod:`~kolm_audit.compile.kscore`) → a signed artifact and its provenance statement
  (:mod:`~kolm_audit.compile.provenance`); :mod:`~kolm_audit.compile.rebuild` builds again in a fresh process and
  compares. Specification: docs/training-spec.md (generators: docs/compile.md).

The runtime only loads and runs what compile builds; compile may use the runtime, never the reverse.

Example::

    >>> from kolm_audit.compile import quantize_linear
    >>> import numpy as np
    >>> quantize_linear(np.eye(2, dtype=np.float32), None, "x", scheme="int8")["x.weight"].tolist()
    [[127, 0], [0, 127]]
"""

from __future__ import annotations

from kolm_audit.compile.hf import HFCheckpoint, import_checkpoint, quantize_checkpoint, read_hf_checkpoint
from kolm_audit.compile.quantize import QuantizedModel, quantize_linear

__all__ = ["HFCheckpoint", "QuantizedModel", "import_checkpoint", "quantize_checkpoint", "quantize_linear",
           "read_hf_checkpoint"]
