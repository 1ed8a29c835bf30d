"""The compile stage: from an HF checkpoint (and, with a recipe, training data) to the tensors of a ``.kolm``.

Start at :func:`import_checkpoint` (``kolm-audit quantize``): it reads an HF directory strictly
(:mod:`~kolm_audit.compile.hf`), quantizes it with the family's quantizer (:mod:`~kolm_audit.compile.bert`,
:mod:`~kolm_audit.compile.llama`, both over :mod:`~kolm_audit.compile.quantize`), adds the integer tables the
runtime reads (:mod:`~kolm_audit.compile.tables`) and returns a manifest and tensors for
:func:`kolm_audit.artifact.write_artifact`. The runtime only loads and runs what compile builds; compile may use the
runtime, never the reverse.

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
