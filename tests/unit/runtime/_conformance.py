"""Load a conformance model of ``golden/conformance/<family>/models/`` (golden: written once, never regenerated).

Every stored tensor's dtype, shape and sha256 is checked against the model's JSON before the model is built, so
a changed golden file fails loudly instead of silently moving the vectors.

``Model(backend="cpu")`` picks the fused CPU backend when numba is installed; ``fused=False`` passes plain
:class:`~kolm_audit.runtime.torch_backend.TorchOps` as ``Model(ops=...)``, so both CPU variants run the same
vectors through the same ``Model`` wrappers (digests included).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from kolm_audit.canonical import digest, digest_of
from kolm_audit.model import Model

ROOT = Path(__file__).resolve().parents[3] / "golden" / "conformance"


@cache
def conformance_model(family: str, name: str, backend: str = "numpy", *, fused: bool = True) -> tuple[Model, str]:
    """The model named ``name`` of ``family`` (``bert`` | ``llama``) on ``backend``, and its model digest.

    On ``backend="cpu"``, ``fused`` picks :class:`~kolm_audit.runtime.cpu_fused.FusedCpuOps` (needs numba) or plain
    :class:`~kolm_audit.runtime.torch_backend.TorchOps`; the ops class actually used is asserted."""
    doc = json.loads((ROOT / family / "models" / f"{name}.json").read_text())
    tensors = load_file(str(ROOT / family / "models" / f"{name}.safetensors"))
    assert sorted(tensors) == sorted(doc["tensors"])
    for tname, meta in doc["tensors"].items():
        arr = tensors[tname]
        assert (str(arr.dtype), list(arr.shape)) == (meta["dtype"], meta["shape"]), tname
        assert digest(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()) == meta["sha256"]
    manifest = {"runtime": doc["spec"], "architecture": doc["architecture"], "task": doc["task"],
                "quantization": doc["quantization"]}
    if backend == "cpu" and not fused:
        from kolm_audit.runtime.torch_backend import TorchOps

        model = Model(manifest=manifest, digest=digest_of(doc), tensors=tensors, ops=TorchOps(device="cpu"))
        assert type(model._rt.ops) is TorchOps
    else:
        model = Model(manifest=manifest, digest=digest_of(doc), tensors=tensors, backend=backend)
    if backend == "cpu" and fused:
        from kolm_audit.runtime.cpu_fused import FusedCpuOps  # needs numba: callers skip without it

        assert type(model._rt.ops) is FusedCpuOps
    assert model.backend == backend
    return model, digest_of(doc)
