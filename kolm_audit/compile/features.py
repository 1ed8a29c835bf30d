"""The base model of a recipe: read with every pinned digest checked, quantized, run frozen on the exact runtime.

The exact trainer's features are the runtime's own mean-pooled Q.16 embeddings of the quantized base
(docs/runtime-spec.md §6.3). They are computed on any backend (``numpy``, ``cpu``, ``cuda``): every backend gives the
same integers, so the backend is a speed choice that never reaches the artifact.

Example::

    >>> from kolm_audit.compile.recipe import load_recipe
    >>> from kolm_audit.examples import example_dir
    >>> recipe = load_recipe(example_dir("loan-triage") / "recipe.toml")
    >>> base = load_base(recipe)                                                   # doctest: +SKIP
    >>> sorted(base.file_digests) == sorted(recipe.base_files)                     # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kolm_audit.canonical import digest_of
from kolm_audit.compile.hf import HFCheckpoint, quantize_checkpoint, read_hf_checkpoint
from kolm_audit.compile.progress import Bars, no_bars
from kolm_audit.compile.quantize import QuantizedModel
from kolm_audit.compile.recipe import Recipe
from kolm_audit.errors import InputError, UnsupportedModel
from kolm_audit.model import Model
from kolm_audit.runtime import SPEC

_CHUNK = 64            # requests per runtime call while extracting features (a progress step; never an output)


def load_base(recipe: Recipe) -> HFCheckpoint:
    """Read the recipe's base checkpoint and check that every file read is pinned with the same digest."""
    ckpt = read_hf_checkpoint(recipe.base_path)
    check_pins(ckpt, recipe.base_files, recipe_file=str(recipe.path), field="base.files")
    if ckpt.config.get("model_type") != "bert":
        raise UnsupportedModel("compile trains BERT-family bases", file=str(recipe.base_path / "config.json"),
                               field="model_type", expected="bert", actual=repr(ckpt.config.get("model_type")))
    return ckpt


def check_pins(ckpt: HFCheckpoint, pinned: Mapping[str, str], *, recipe_file: str, field: str) -> None:
    """Every file compile read from ``ckpt`` is pinned in the recipe (``field``) with the digest it has."""
    got = ckpt.file_digests
    for name in sorted(set(pinned) | set(got)):
        if name not in got:
            raise InputError("pinned base file was not found in the base directory", file=recipe_file,
                             field=f"{field}.{name}", expected=f"a file {ckpt.path / name}")
        if name not in pinned:
            raise InputError("compile reads a base file the recipe does not pin", file=recipe_file, field=field,
                             expected=f'a line "{name}" = "{got[name]}"')
        if pinned[name] != got[name]:
            raise InputError("file does not match the digest pinned in the recipe", file=str(ckpt.path / name),
                             field=f"{field}.{name}", expected=pinned[name], actual=got[name])


def encoder(ckpt: HFCheckpoint, *, scheme: str) -> QuantizedModel:
    """The base quantized with ``scheme`` as an encoder (task ``embed``, no pooler or classifier tensors)."""
    qm = quantize_checkpoint(ckpt, scheme=scheme)
    tensors = {n: a for n, a in qm.tensors.items() if not n.startswith(("pooler.", "classifier."))}
    return QuantizedModel(architecture=qm.architecture, task={"kind": "embed", "pooling": "mean", "labels": []},
                          quantization=qm.quantization, tensors=tensors)


class Featurizer:
    """Mean-pooled Q.16 embeddings of texts under a quantized encoder, on ``backend`` (any: same integers)."""

    def __init__(self, qm: QuantizedModel, *, backend: str = "auto", threads: int | None = None) -> None:
        manifest = {"runtime": SPEC, "architecture": qm.architecture, "task": qm.task,
                    "quantization": qm.quantization}
        self.model = Model(manifest=manifest, digest=digest_of({"encoder": manifest}), tensors=qm.tensors,
                           backend=backend, threads=threads)

    @property
    def backend(self) -> str:
        return self.model.backend

    def embed(self, ids: Sequence[Sequence[int]], *, bars: Bars = no_bars, desc: str = "features") -> np.ndarray:
        """int32 ``[N, H]`` Q.16 embeddings (requests grouped by length for speed; the grouping changes nothing)."""
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        hidden = int(self.model.manifest["architecture"]["hidden_size"])
        out = np.zeros((len(ids), hidden), dtype=np.int32)
        bar = bars(desc, total=len(ids), unit="text")
        try:
            for start in range(0, len(order), _CHUNK):
                chunk = order[start:start + _CHUNK]
                for i, res in zip(chunk, self.model.embed([list(ids[i]) for i in chunk]), strict=True):
                    out[i] = res.embedding
                bar.update(len(chunk))
        finally:
            bar.close()
        return out
