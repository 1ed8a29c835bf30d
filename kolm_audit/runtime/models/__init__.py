"""Forward passes of ``kolm-int/1``, one module per model family (``bert``, ``llama``), and the one list of them.

Each family's runtime is built from an artifact's manifest parts and tensors with ``from_tensors`` and answers the
:class:`FamilyRuntime` protocol; a task the family does not have raises :class:`RuntimeInputError`.

Example::

    >>> FAMILIES, MODEL_TYPES["qwen2"]
    (('bert', 'llama'), 'llama')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from kolm_audit.errors import UnsupportedModel
from kolm_audit.runtime.ops import Ops

FAMILIES = ("bert", "llama")
# HF ``model_type`` → family (the compile side imports with this; the runtime dispatches on ``family``)
MODEL_TYPES: Mapping[str, str] = {"bert": "bert", "llama": "llama", "qwen2": "llama", "mistral": "llama"}


class Generation(NamedTuple):
    """One request's result: the generated ids (an EOS that stopped it included) and why it stopped."""

    output_ids: tuple[int, ...]
    finish_reason: str            # "eos" | "length" (max_new_tokens) | "context" (max_position_embeddings)


class FamilyRuntime(Protocol):
    """What :class:`kolm_audit.model.Model` asks of a family's runtime (token ids in, integers out)."""

    ops: Ops

    def check_ids(self, batch: Sequence[Sequence[int]]) -> None: ...

    def embed(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]: ...

    def classify(self, batch: Sequence[Sequence[int]]) -> list[tuple[int, np.ndarray]]: ...

    def generate(self, batch: Sequence[Sequence[int]], *, max_new_tokens: int, seed: int | None = None,
                 temperature: int | None = None, top_k: int | None = None,
                 top_p: int | None = None) -> list[Generation]: ...


def load_runtime(*, manifest: Mapping[str, Any], tensors: Mapping[str, np.ndarray], ops: Ops,
                 file: str | None = None) -> FamilyRuntime:
    """The runtime of the artifact's ``architecture.family`` over its tensors, on backend ``ops``."""
    arch, task, quant = manifest["architecture"], manifest["task"], manifest["quantization"]
    family = arch.get("family")
    if family == "bert":
        from kolm_audit.runtime.models.bert import BertRuntime

        return BertRuntime.from_tensors(architecture=arch, quantization=quant, task=task, tensors=tensors, ops=ops)
    if family == "llama":
        from kolm_audit.runtime.models.llama import LlamaRuntime

        return LlamaRuntime.from_tensors(architecture=arch, quantization=quant, task=task, tensors=tensors, ops=ops)
    raise UnsupportedModel("unsupported architecture family", file=file, field="architecture.family",
                           expected=" | ".join(FAMILIES), actual=repr(family))
