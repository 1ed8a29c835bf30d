"""The artifact's own tokenizer: HF ``tokenizers`` built from the ``tokenizer.json`` bytes stored in the artifact.

The tokenizer is part of the signed artifact (tensor ``tokenizer.json``, uint8), so replay tokenizes with
exactly the bytes the vendor shipped. Truncation and padding configured in the file are switched off: the
runtime refuses over-long inputs instead of silently cutting them (spec §7).

Example::

    >>> tok = Tokenizer(b'{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],'
    ...     b'"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,'
    ...     b'"model":{"type":"WordLevel","vocab":{"[UNK]":0,"hello":1,"world":2},"unk_token":"[UNK]"}}')
    >>> tok.encode(["hello world", "world"])
    [[1, 2], [2]]
    >>> tok.decode([1, 2])
    'hello world'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from kolm_audit.errors import ArtifactError, RuntimeInputError, UnsupportedModel

TOKENIZER_TENSOR = "tokenizer.json"


class Tokenizer:
    """Encode/decode with the exact ``tokenizer.json`` of an artifact (special tokens added, no truncation)."""

    def __init__(self, tokenizer_json: bytes) -> None:
        try:
            text = tokenizer_json.decode("utf-8")
        except UnicodeDecodeError:
            raise ArtifactError("tokenizer.json is not UTF-8", field=f"tensors.{TOKENIZER_TENSOR}") from None
        try:
            self._tok = _HFTokenizer.from_str(text)
        except Exception as exc:  # noqa: BLE001 - the tokenizers binding raises bare Exception, nothing narrower
            raise ArtifactError(f"tokenizer.json cannot be loaded ({type(exc).__name__}: {exc})"[:300],
                                field=f"tensors.{TOKENIZER_TENSOR}") from None
        self._tok.no_truncation()
        self._tok.no_padding()

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray]) -> Tokenizer:
        arr = tensors.get(TOKENIZER_TENSOR)
        if arr is None or arr.dtype != np.uint8 or arr.ndim != 1:
            raise ArtifactError("the artifact has no tokenizer", field=f"tensors.{TOKENIZER_TENSOR}",
                                expected="uint8 [n]")
        return cls(arr.tobytes())

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, with the tokenizer's special tokens (e.g. ``[CLS] … [SEP]``)."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise RuntimeInputError("input must be a string", field=f"inputs[{i}]", actual=type(text).__name__)
        return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=True)]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


def check_tokenizer_fits(tokenizer: Tokenizer, *, vocab_size: int, file: str | None = None) -> None:
    """Refuse a tokenizer that can produce ids the model has no embedding row for (spec §7)."""
    if tokenizer.vocab_size > vocab_size:
        raise UnsupportedModel("the tokenizer produces token ids the model has no embedding for", file=file,
                               field=TOKENIZER_TENSOR, expected=f"at most {vocab_size} tokens (vocab_size)",
                               actual=f"{tokenizer.vocab_size} tokens")


def tokenizer_tensor(tokenizer_json: bytes) -> np.ndarray:
    """The ``tokenizer.json`` bytes as the uint8 tensor stored in an artifact."""
    return np.frombuffer(tokenizer_json, dtype=np.uint8).copy()
