"""Readable differences between what a golden case expects and what the artifact returned.

One function per task, each returning :class:`Difference` values with a one-line ``message`` for people and a
``detail`` object (integers and strings only: no floats, so reports stay canonical) for machines:

* ``label`` / ``scores`` — a classifier's label changed, or only its Q.16 logits moved (how many, how far);
* ``tokens`` / ``finish_reason`` — the first divergent generated token, with the tokens and decoded text
  before it and both continuations after it;
* ``embedding`` — how many values moved, the largest move, the L2 distance and the cosine similarity, computed
  with integers (floor to 6 decimals for the distance, toward zero for the cosine);
* ``input`` — the text tokenized to other ids than when the case was blessed.

    >>> q16_text(98304)
    '1.500000'
    >>> [d.message for d in embedding_differences((65536, 0), (0, 65536))]
    ['2 of 2 values differ (first at index 0), max |Δ| 1.000000, L2 distance 1.414213, cosine similarity 0.000000']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

Decode = Callable[[Sequence[int]], str]

CONTEXT_TOKENS = 8          # tokens shown before and after the first divergent one
_Q16 = 1 << 16
_MICRO = 10**6

__all__ = ["CONTEXT_TOKENS", "Difference", "classify_differences", "embedding_differences", "first_divergence",
           "generate_differences", "input_difference", "q16_text"]


@dataclass(frozen=True)
class Difference:
    """One way an output differs from its expectation."""

    kind: str
    message: str
    detail: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", MappingProxyType(dict(self.detail)))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "detail": dict(self.detail)}


def _micro_text(micro: int) -> str:
    """A decimal string of ``micro`` / 10^6."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), _MICRO)
    return f"{sign}{whole}.{frac:06d}"


def q16_text(value: int) -> str:
    """A Q.16 integer as a decimal string with 6 places (rounded toward zero)."""
    micro = abs(int(value)) * _MICRO // _Q16
    return _micro_text(-micro if value < 0 else micro)


def first_divergence(expected: Sequence[Any], actual: Sequence[Any]) -> int | None:
    """First position where two sequences differ (a length difference counts), or None when equal."""
    for i, (a, b) in enumerate(zip(expected, actual, strict=False)):
        if a != b:
            return i
    return None if len(expected) == len(actual) else min(len(expected), len(actual))


def input_difference(expected_digest: str, actual_digest: str) -> Difference:
    """The case's input became other token ids (a text case on an artifact with another tokenizer)."""
    return Difference("input", f"the input tokenizes to other ids than when the case was blessed (input digest "
                      f"{actual_digest}, blessed {expected_digest})",
                      {"expected": expected_digest, "actual": actual_digest})


def _moved(expected: Sequence[int], actual: Sequence[int]) -> dict[str, Any]:
    """Count, first index and largest absolute move of two equally long integer vectors."""
    moves = [(i, abs(int(a) - int(b))) for i, (a, b) in enumerate(zip(expected, actual, strict=True)) if a != b]
    return {"differing": len(moves), "first_index": moves[0][0] if moves else None,
            "max_abs_difference": max((m for _, m in moves), default=0)}


def embedding_differences(expected: Sequence[int], actual: Sequence[int]) -> list[Difference]:
    """How far a Q.16 embedding moved: values moved, largest move, L2 distance, cosine similarity."""
    if len(expected) != len(actual):
        return [Difference("embedding", f"embedding has {len(actual)} values, {len(expected)} expected",
                           {"expected_dim": len(expected), "actual_dim": len(actual)})]
    moved = _moved(expected, actual)
    exp = [int(v) for v in expected]
    act = [int(v) for v in actual]
    sq = sum((a - b) ** 2 for a, b in zip(exp, act, strict=True))
    l2_micro = math.isqrt(sq * _MICRO * _MICRO) // _Q16          # floor(L2 * 10^6), L2 in real units
    dot = sum(a * b for a, b in zip(exp, act, strict=True))
    norms = sum(a * a for a in exp) * sum(b * b for b in act)
    cosine = None
    if norms:
        magnitude = math.isqrt((abs(dot) * _MICRO) ** 2 // norms)  # floor(|cos| * 10^6)
        cosine = _micro_text(magnitude if dot >= 0 else -magnitude)
    detail = {**moved, "max_abs_difference": q16_text(moved["max_abs_difference"]),
              "max_abs_difference_q16": moved["max_abs_difference"], "l2_distance": _micro_text(l2_micro),
              "cosine_similarity": cosine, "dim": len(exp)}
    message = (f"{moved['differing']} of {len(exp)} values differ (first at index {moved['first_index']}), "
               f"max |Δ| {detail['max_abs_difference']}, L2 distance {detail['l2_distance']}, cosine similarity "
               f"{cosine if cosine is not None else 'undefined (zero vector)'}")
    return [Difference("embedding", message, detail)]


def classify_differences(expected_label: str, expected_scores: Sequence[int], actual_label: str,
                         actual_scores: Sequence[int]) -> list[Difference]:
    """A changed label first, then how the Q.16 logits moved."""
    out = []
    if expected_label != actual_label:
        out.append(Difference("label", f"label changed: {expected_label!r} -> {actual_label!r}",
                              {"expected": expected_label, "actual": actual_label}))
    if len(expected_scores) != len(actual_scores):
        out.append(Difference("scores", f"{len(actual_scores)} scores, {len(expected_scores)} expected",
                              {"expected_count": len(expected_scores), "actual_count": len(actual_scores)}))
    elif list(expected_scores) != list(actual_scores):
        moved = _moved(expected_scores, actual_scores)
        i = moved["first_index"]
        out.append(Difference(
            "scores", f"{moved['differing']} of {len(expected_scores)} scores moved, max |Δ| "
            f"{q16_text(moved['max_abs_difference'])}; first at index {i}: {q16_text(expected_scores[i])} -> "
            f"{q16_text(actual_scores[i])}" + ("" if out else f" (label {actual_label!r} unchanged)"),
            {**moved, "expected": [int(v) for v in expected_scores], "actual": [int(v) for v in actual_scores]}))
    return out


def _show(ids: Sequence[int], decode: Decode | None) -> str:
    return repr(decode([int(t) for t in ids])) if decode is not None else "(no tokenizer)"


def generate_differences(expected_ids: Sequence[int], expected_finish: str, actual_ids: Sequence[int],
                         actual_finish: str, *, decode: Decode | None) -> list[Difference]:
    """The first divergent generated token with the context before it and both continuations."""
    pos = first_divergence(list(expected_ids), list(actual_ids))
    out = []
    if pos is not None:
        lo = max(0, pos - CONTEXT_TOKENS)
        before = [int(t) for t in expected_ids[lo:pos]]
        exp_next = [int(t) for t in expected_ids[pos:pos + CONTEXT_TOKENS]]
        act_next = [int(t) for t in actual_ids[pos:pos + CONTEXT_TOKENS]]
        detail = {"position": pos, "expected_count": len(expected_ids), "actual_count": len(actual_ids),
                  "context_start": lo, "context_ids": before, "expected_ids": exp_next, "actual_ids": act_next,
                  "context_text": None if decode is None else decode(before),
                  "expected_text": None if decode is None else decode(exp_next),
                  "actual_text": None if decode is None else decode(act_next)}
        where = "at the start" if pos == 0 else f"after {'…' if lo else ''}{_show(before, decode)}"
        message = (f"generated tokens diverge at output position {pos} ({len(expected_ids)} expected, "
                   f"{len(actual_ids)} generated): {where} expected {_show(exp_next, decode)} {exp_next}, got "
                   f"{_show(act_next, decode)} {act_next}")
        out.append(Difference("tokens", message, detail))
    if expected_finish != actual_finish:
        out.append(Difference("finish_reason", f"finish reason changed: {expected_finish} -> {actual_finish}",
                              {"expected": expected_finish, "actual": actual_finish}))
    return out
