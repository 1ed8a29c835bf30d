"""The OpenAI-compatible shapes: ``/v1/embeddings`` and ``/v1/completions`` requests to :class:`Request` s, and
recorded decisions back to the responses those clients parse — each item also carrying its receipt.

Numbers: an embedding is returned exactly (``Q.16 / 65536`` as JSON numbers: every such value is a float64
exactly) or, with ``encoding_format: "base64"`` (the OpenAI Python client's default), as little-endian float32,
rounded; ``embedding_q16`` always has the integers the receipt's digest covers. A ``temperature`` or ``top_p`` is
read exactly as a decimal and must be a multiple of 0.001 (receipts record per-mille integers).

    >>> permille(Decimal("0.7"), field="$.temperature"), permille(2, field="$.temperature")
    (700, 2000)
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np

from kolm_audit.errors import InputError
from kolm_audit.receipts.document import Decoding
from kolm_audit.receipts.recorder import Recorded, Request
from kolm_audit.serve.problems import InvalidRequest

DEFAULT_MAX_TOKENS = 16     # OpenAI's default for completions
_FINISH = {"eos": "stop", "length": "length", "context": "length"}


def permille(value: int | Decimal, *, field: str) -> int:
    """``value × 1000`` as an exact integer; refuses a value that is not a multiple of 0.001."""
    if isinstance(value, int):
        return value * 1000
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise InvalidRequest("not a finite number", field=field)
    if not any(digits):
        return 0
    shift = exponent + 3
    if shift < 0:
        if -shift > len(digits) or any(digits[shift:]):
            raise InvalidRequest("must be a multiple of 0.001 (receipts record per-mille integers)", field=field,
                                 actual=str(value)[:40])
        digits, shift = digits[:shift], 0
    if shift + len(digits) > 15:
        raise InvalidRequest("out of range", field=field, actual=str(value)[:40])
    number = int("".join(map(str, digits))) * 10**shift
    return -number if sign else number


def inputs(value: str | Sequence[Any], *, name: str) -> list[tuple[str | None, tuple[int, ...] | None, str]]:
    """``(text, ids, field)`` per input of an OpenAI ``input``/``prompt`` (its schema fixed the four forms)."""
    if isinstance(value, str):
        return [(value, None, f"$.{name}")]
    if all(isinstance(v, int) for v in value):
        return [(None, tuple(value), f"$.{name}")]
    return [(v, None, f"$.{name}[{i}]") if isinstance(v, str) else (None, tuple(v), f"$.{name}[{i}]")
            for i, v in enumerate(value)]


def _requests(items: list[tuple[str | None, tuple[int, ...] | None, str]], *, caller: str | None,
              decoding: Decoding | None) -> tuple[list[Request], list[str]]:
    return ([Request(text=text, ids=ids, caller=caller, decoding=decoding) for text, ids, _ in items],
            [where for _, _, where in items])


def receipt_fields(rec: Recorded) -> dict[str, Any]:
    """The receipt fields every response item carries: id, log index, digests, the signed envelope."""
    return {"receipt_id": rec.receipt_id, "log_index": rec.log_index, "input_digest": rec.result.input_digest,
            "output_digest": rec.result.output_digest, "receipt": json.loads(rec.leaf)}


def embeddings_requests(doc: Mapping[str, Any], *, dim: int) -> tuple[list[Request], list[str]]:
    if "dimensions" in doc and doc["dimensions"] != dim:
        raise InvalidRequest("this model's embeddings have a fixed dimension", field="$.dimensions",
                             expected=str(dim), actual=str(doc["dimensions"]))
    return _requests(inputs(doc["input"], name="input"), caller=doc.get("user"), decoding=None)


def embeddings_response(doc: Mapping[str, Any], done: Sequence[Recorded], *, model: str) -> dict[str, Any]:
    data = []
    for i, rec in enumerate(done):
        q16 = [int(v) for v in rec.result.embedding.tolist()]
        if doc.get("encoding_format") == "base64":
            vector: Any = base64.b64encode((np.asarray(q16, dtype=np.float64) / 65536).astype("<f4").tobytes()).decode()
        else:
            vector = [v / 65536 for v in q16]            # exact: |v| < 2^31, so v / 2^16 is a float64 exactly
        data.append({"object": "embedding", "index": i, "embedding": vector, "embedding_q16": q16,
                     **receipt_fields(rec)})
    tokens = sum(len(rec.result.input_ids) for rec in done)
    return {"object": "list", "model": model, "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _decoding(doc: Mapping[str, Any]) -> Decoding:
    max_tokens = doc.get("max_tokens")
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    temperature = doc.get("temperature")
    if temperature is not None and permille(temperature, field="$.temperature") == 0:
        return Decoding(max_new_tokens=max_tokens)       # temperature 0: greedy (a seed changes nothing)
    top_p = doc.get("top_p")
    try:
        return Decoding(max_new_tokens=max_tokens, seed=doc.get("seed"), top_k=doc.get("top_k"),
                        temperature=None if temperature is None else permille(temperature, field="$.temperature"),
                        top_p=None if top_p is None else permille(top_p, field="$.top_p"))
    except InvalidRequest:
        raise
    except InputError as exc:
        raise InvalidRequest(exc.message, field=f"$.{exc.field}" if exc.field else None, expected=exc.expected,
                             actual=exc.actual) from None


def completions_requests(doc: Mapping[str, Any]) -> tuple[list[Request], list[str]]:
    return _requests(inputs(doc["prompt"], name="prompt"), caller=doc.get("user"), decoding=_decoding(doc))


def completions_response(done: Sequence[Recorded], *, model: str) -> dict[str, Any]:
    choices = [{"index": i, "text": rec.result.text, "logprobs": None,
                "finish_reason": _FINISH.get(rec.result.finish_reason, "length"),
                "output_ids": [int(t) for t in rec.result.output_ids], **receipt_fields(rec)}
               for i, rec in enumerate(done)]
    prompt = sum(len(rec.result.input_ids) for rec in done)
    completion = sum(len(rec.result.output_ids) for rec in done)
    return {"id": f"cmpl-{done[0].receipt_id}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}
