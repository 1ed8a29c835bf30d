"""Load a conformance model of ``golden/conformance/<family>/models/`` (golden: written once, never regenerated).

Every stored tensor's dtype, shape and sha256 is checked against the model's JSON before the model is built, so
a changed golden file fails loudly instead of silently moving the vectors.
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
def conformance_model(family: str, name: str, backend: str = "numpy") -> tuple[Model, str]:
    """The model named ``name`` of ``family`` (``bert`` | ``llama``) on ``backend``, and its model digest."""
    doc = json.loads((ROOT / family / "models" / f"{name}.json").read_text())
    tensors = load_file(str(ROOT / family / "models" / f"{name}.safetensors"))
    assert sorted(tensors) == sorted(doc["tensors"])
    for tname, meta in doc["tensors"].items():
        arr = tensors[tname]
        assert (str(arr.dtype), list(arr.shape)) == (meta["dtype"], meta["shape"]), tname
        assert digest(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()) == meta["sha256"]
    manifest = {"runtime": doc["spec"], "architecture": doc["architecture"], "task": doc["task"],
                "quantization": doc["quantization"]}
    model = Model(manifest=manifest, digest=digest_of(doc), tensors=tensors, backend=backend)
    assert model.backend == backend
    return model, digest_of(doc)
