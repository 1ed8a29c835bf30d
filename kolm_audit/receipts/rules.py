"""The rules a ``kolm.receipt/1`` reader enforces: the schema, plus what a schema cannot say.

* ``input_digest`` is the digest of the clear input ids, ``output_digest`` that of the clear outputs (runtime
  spec §8: sha256 of RFC 8785 bytes), the period does not end before it starts;
* sealed and clear fields match the receipt's privacy mode, sealed values name the receipt's data key;
* long integer arrays (token ids, scores) are checked here in one pass and emptied before the JSON Schema
  validator sees the document (it would otherwise spend milliseconds per receipt on every token id).

    >>> input_digest([101, 7592, 102])
    'sha256:a3961465edbfcdd87077bdebaa55b46471ad735fca0316837d3b53096f602a46'
    >>> from kolm_audit.canonical import digest
    >>> recorded_output_digest("classify", {"label": "a", "scores": [1, 2]}) == digest(b'{"label":"a","scores":[1,2]}')
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kolm_audit.canonical import MAX_SAFE_INT
from kolm_audit.errors import InputError, SchemaError
from kolm_audit.receipts.privacy import is_sealed
from kolm_audit.runtime.digests import classification_digest, generation_digest, input_digest
from kolm_audit.schemas import validate
from kolm_audit.timefmt import parse_time

_MAX_ID = 2**31 - 1


def receipt_time(value: str, *, source: str | None, field: str) -> datetime:
    """Parse a time inside a receipt; an impossible one is a finding (:class:`SchemaError`), not a usage error."""
    try:
        return parse_time(value, file=source, field=field)
    except (InputError, ValueError):  # a bad time inside evidence is a finding, not a usage error
        raise SchemaError("not a valid RFC 3339 UTC date and time", file=source, field=field,
                          actual=value[:40]) from None


def recorded_output_digest(task: str, resp: Mapping[str, Any]) -> str | None:
    """The output digest (runtime spec §8) of the outputs a receipt holds in clear; None when sealed/absent."""
    if task == "embed":
        return resp["embedding_digest"]
    if task == "classify":
        if is_sealed(resp["label"]) or is_sealed(resp["scores"]):
            return None
        return classification_digest(resp["label"], resp["scores"])
    if is_sealed(resp["output_ids"]):
        return None
    return generation_digest(resp["output_ids"], resp["finish_reason"])


_INT_ARRAYS = (("request", "input_ids", 0, _MAX_ID, 10_000_000), ("response", "output_ids", 0, _MAX_ID, 10_000_000),
               ("response", "scores", -MAX_SAFE_INT, MAX_SAFE_INT, 100_000))  # as schemas/receipt.schema.json


def _skeleton(doc: Any, *, source: str | None, field: str) -> Any:
    """``doc`` with its long integer arrays checked here (fast) and emptied for the schema validator, which
    would otherwise spend milliseconds per receipt descending into every token id. Same rules as the schema."""
    if not isinstance(doc, dict):
        return doc
    out = dict(doc)
    for part, name, low, high, longest in _INT_ARRAYS:
        section = out.get(part)
        if not isinstance(section, dict) or not isinstance(section.get(name), list):
            continue
        values = section[name]
        if len(values) > longest or not all(type(v) is int and low <= v <= high for v in values):  # no bools
            raise SchemaError("expected an array of integers in range", file=source, field=f"{field}.{part}.{name}",
                              expected=f"at most {longest} integers in [{low}, {high}]")
        out[part] = {**section, name: []}
    return out


def check_receipt(doc: Any, *, source: str | None, field: str) -> None:
    """Schema plus the rules a schema cannot say (digests of clear ids, time order, privacy consistency)."""
    validate(_skeleton(doc, source=source, field=field), "receipt", source=source)
    where = f"{field}."
    start, end = (receipt_time(doc["period"][k], source=source, field=f"{where}period.{k}") for k in ("start", "end"))
    if end < start:
        raise SchemaError("period ends before it starts", file=source, field=f"{where}period")
    req = doc["request"]
    if not is_sealed(req["input_ids"]) and input_digest(req["input_ids"]) != req["input_digest"]:
        raise SchemaError("input_digest does not match input_ids", file=source, field=f"{where}request.input_digest",
                          expected=input_digest(req["input_ids"]), actual=req["input_digest"])
    resp = doc["response"]
    recorded = recorded_output_digest(doc["task"], resp)
    if recorded is not None and recorded != resp["output_digest"]:
        raise SchemaError("output_digest does not match the recorded output", file=source,
                          field=f"{where}response.output_digest", expected=recorded, actual=resp["output_digest"])
    privacy = doc["privacy"]
    mode = privacy["mode"]
    if (mode == "clear") != (privacy["data_key_id"] is None):
        raise SchemaError("data_key_id must be null exactly in clear mode", file=source, field=f"{where}privacy")
    texts = {"request.text": req["text"], "response.text": resp.get("text")}
    ids = {"request.input_ids": req["input_ids"], "response.output_ids": resp.get("output_ids"),
           "response.label": resp.get("label"), "response.scores": resp.get("scores")}
    for name, value in [*texts.items(), *ids.items()]:
        if value is None:
            continue
        must_seal = mode == "encrypt-all" or (mode == "encrypt-text" and name in texts)
        if is_sealed(value) != must_seal:
            raise SchemaError(f"field must be {'sealed' if must_seal else 'in clear'} in privacy mode {mode}",
                              file=source, field=f"{where}{name}")
        if must_seal and value["key_id"] != privacy["data_key_id"]:
            raise SchemaError("sealed under a key other than the receipt's data key", file=source,
                              field=f"{where}{name}", expected=privacy["data_key_id"], actual=value["key_id"])
    for name, text_field in (("request", req), ("response", resp)):
        if (text_field.get("text") is None) != (text_field.get("text_digest") is None):
            raise SchemaError("text and text_digest go together", file=source, field=f"{where}{name}.text_digest")
        tdig = text_field.get("text_digest")
        if tdig is not None and tdig.startswith("hmac-") != (privacy["salt_id"] is not None):
            raise SchemaError("text digest kind does not match the privacy salt", file=source,
                              field=f"{where}{name}.text_digest")
