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

from kolm_audit.errors import RuntimeInputError, UnsupportedModel
from kolm_audit.runtime.ops import Ops

FAMILIES = ("bert", "llama")
# HF ``model_type`` → family (the compile side imports with this; the runtime dispatches on ``family``)
MODEL_TYPES: Mapping[str, str] = {"bert": "bert", "llama": "llama", "qwen2": "llama", "mistral": "llama"}


class Generation(NamedTuple):
    """One request's result: the generated ids (an EOS that stopped it included) and why it stopped."""

    output_ids: tuple[int, ...]
    finish_reason: str            # "eos" | "length" (max_new_tokens) | "context" (max_position_embeddings)


def _is_list(value: object, ndim: int) -> bool:
    """A sequence that is not text, or a numpy array of ``ndim`` dimensions (a batch may also be a 1-D array of
    objects: ragged requests)."""
    if isinstance(value, np.ndarray):
        return value.ndim == ndim or (ndim == 2 and value.ndim == 1 and value.dtype == object)
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def check_token_ids(batch: Sequence[Sequence[int]], *, limit: int, vocab: int, field_name: str = "inputs") -> None:
    """Refuse inputs that are not a list of requests, a request that is not a list of token ids (a string is not),
    an empty request, one of more than ``limit`` tokens, or a token that is not an integer in ``[0, vocab)`` (a
    ``bool`` is not): :class:`RuntimeInputError` naming ``field_name``, ``field_name[i]`` or ``field_name[i][j]``.

    >>> check_token_ids([[1, 2], [3]], limit=4, vocab=8)
    >>> try:
    ...     check_token_ids([[1, True]], limit=4, vocab=8)
    ... except RuntimeInputError as err:
    ...     print(err)
    inputs[0][1]: token id out of range (expected integer in [0, 8), got True)
    """
    if not _is_list(batch, 2):
        raise RuntimeInputError("the inputs are not a list of requests", field=field_name,
                                expected="a list of token-id lists", actual=type(batch).__name__)
    for i, ids in enumerate(batch):
        if not _is_list(ids, 1):
            raise RuntimeInputError("a request is not a list of token ids", field=f"{field_name}[{i}]",
                                    expected="a list of token ids", actual=type(ids).__name__)
        if len(ids) == 0:
            raise RuntimeInputError("empty input", field=f"{field_name}[{i}]", expected="at least one token")
        if len(ids) > limit:
            raise RuntimeInputError("sequence longer than the artifact's limit", field=f"{field_name}[{i}]",
                                    expected=f"at most {limit} tokens (max_position_embeddings)",
                                    actual=f"{len(ids)} tokens")
        if set(map(type, ids)) == {int} and min(ids) >= 0 and max(ids) < vocab:   # the common case, in C loops
            continue
        for j, tok in enumerate(ids):
            if isinstance(tok, bool) or not isinstance(tok, int | np.integer) or not 0 <= tok < vocab:
                raise RuntimeInputError("token id out of range", field=f"{field_name}[{i}][{j}]",
                                        expected=f"integer in [0, {vocab})", actual=repr(tok))


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
