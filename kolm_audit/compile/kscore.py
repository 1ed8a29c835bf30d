"""The K-score ``kolm.kscore/1`` and its gate: five per-mille components from exactly recomputable counts.

Spec: docs/training-spec.md §8. Every input is an integer someone else can recompute from the artifact, the recipe
and the data (counts of correct decisions, probe agreements, integer op counts, declared budgets and prices);
measured wall-clock time never enters the score (it goes into the provenance statement).

* ``A`` accuracy on the eval split: ``⌊1000 · correct / total⌋``;
* ``S`` safety: share of fairness probes whose variants all get the same label, ``⌊1000 · passed / total⌋``
  (``0`` without probes: no evidence, no credit);
* ``L`` latency: ``min(1000, ⌊1000 · budget_us / estimate_us⌋)`` with ``estimate_us = ⌈macs · 10^6 / declared
  MAC/s⌉`` for the 95th-percentile eval input (nearest rank by token count);
* ``C`` cost: ``min(1000, ⌊1000 · budget / cost⌋)`` with ``cost = ⌈1000 · Σ macs · price / (n · 10^12)⌉`` per
  1,000 decisions (``1000`` when the cost is 0);
* ``V`` verifiability: ``⌊1000 · identical / total⌋``, eval cases whose output bytes agree on every backend and
  batch size tried (anything below 1000 is a bug and fails the gate whatever the recipe says);
* ``K = ⌊(400A + 150S + 150L + 150C + 150V) / 1000⌋``.

A generator's components count generations instead (docs/compile.md): ``A`` exact expected completions, ``S`` probe
replies free of the recipe's non-compliant phrases, ``L``/``C`` from :func:`llama_macs`, ``V`` identical token ids.

Example::

    >>> doc = kscore(accuracy=(95, 100), probes=(59, 60), latency=Latency(p95_tokens=40, macs=10**9,
    ...     macs_per_second=10**11, budget_us=20000), cost=Cost(total_macs=10**11, decisions=100,
    ...     price_per_tera_macs=50, price_unit="micro-EUR", budget_per_1000=100), verify=(100, 100),
    ...     backends=("numpy", "cpu"), batch_sizes=(1, 32), min_k=800, min_components={"A": 900})
    >>> doc["components"], doc["k"], doc["gate"]["passed"]
    ({'A': 950, 'S': 983, 'L': 1000, 'C': 1000, 'V': 1000}, 977, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KSCORE_SPEC = "kolm.kscore/1"
WEIGHTS = {"A": 400, "S": 150, "L": 150, "C": 150, "V": 150}
COMPONENTS = tuple(WEIGHTS)
_TERA = 10**12


@dataclass(frozen=True, kw_only=True)
class Latency:
    """Inputs of ``L``: the p95 eval input's token count and integer op count, the declared throughput, the budget."""

    p95_tokens: int
    macs: int
    macs_per_second: int
    budget_us: int

    def __post_init__(self) -> None:
        if min(self.macs, self.macs_per_second, self.budget_us) < 1 or self.p95_tokens < 1:
            raise ValueError("latency inputs must be positive")

    @property
    def estimate_us(self) -> int:
        return -(-self.macs * 10**6 // self.macs_per_second)


@dataclass(frozen=True, kw_only=True)
class Cost:
    """Inputs of ``C``: the op count of every eval decision, the declared price and the budget per 1,000."""

    total_macs: int
    decisions: int
    price_per_tera_macs: int
    price_unit: str
    budget_per_1000: int

    def __post_init__(self) -> None:
        if self.decisions < 1 or min(self.total_macs, self.price_per_tera_macs, self.budget_per_1000) < 0:
            raise ValueError("cost inputs must be non-negative (and decisions positive)")

    @property
    def per_1000(self) -> int:
        return -(-1000 * self.total_macs * self.price_per_tera_macs // (self.decisions * _TERA))


def per_mille(part: int, total: int) -> int:
    """``⌊1000 · part / total⌋`` (``0`` when ``total`` is 0)."""
    return 0 if total <= 0 else 1000 * part // total


def p95_index(n: int) -> int:
    """Nearest-rank 95th percentile: index ``⌈95 n / 100⌉ - 1`` of the ascending order."""
    return max(0, -(-95 * n // 100) - 1)


def bert_macs(architecture: Mapping[str, Any], *, tokens: int, labels: int, pooling: str) -> int:
    """Multiply-accumulates of one BERT decision over ``tokens`` tokens (the matrix products of
    docs/runtime-spec.md §4–§6): per layer ``T(4H² + 2HI) + 2T²H``, plus the head (``LH``, and ``H²`` for the
    ``cls-pooler`` head)."""
    h, inter = int(architecture["hidden_size"]), int(architecture["intermediate_size"])
    per_layer = tokens * (4 * h * h + 2 * h * inter) + 2 * tokens * tokens * h
    head = labels * h + (h * h if pooling == "cls-pooler" else 0)
    return int(architecture["num_hidden_layers"]) * per_layer + head


def llama_macs(architecture: Mapping[str, Any], *, prompt_tokens: int, new_tokens: int) -> int:
    """Multiply-accumulates of one generation (docs/runtime-spec-llama.md): every one of the ``T = prompt +
    generated`` positions goes once through each layer's projections (``H(Q + 2KV) + QH + 3HI``, ``Q``/``KV`` the
    query and key/value widths) and attends to the positions up to it (``2Q·p`` at position ``p``: scores and
    weighted sum, ``Σ = Q·T(T+1)``); the LM head (``VH``) runs once per generated token."""
    h, inter = int(architecture["hidden_size"]), int(architecture["intermediate_size"])
    q = int(architecture["num_attention_heads"]) * int(architecture["head_dim"])
    kv = int(architecture["num_key_value_heads"]) * int(architecture["head_dim"])
    t = prompt_tokens + new_tokens
    per_layer = t * (h * (q + 2 * kv) + q * h + 3 * h * inter) + q * t * (t + 1)
    return int(architecture["num_hidden_layers"]) * per_layer + new_tokens * int(architecture["vocab_size"]) * h


def kscore(*, accuracy: tuple[int, int], probes: tuple[int, int], latency: Latency, cost: Cost,
           verify: tuple[int, int], backends: Sequence[str], batch_sizes: Sequence[int], min_k: int,
           min_components: Mapping[str, int]) -> dict[str, Any]:
    """The manifest's ``kscore`` object (``schemas/manifest.schema.json#/$defs/kscore``) with its gate verdict."""
    comps = {
        "A": per_mille(*accuracy),
        "S": per_mille(*probes),
        "L": min(1000, 1000 * latency.budget_us // latency.estimate_us),
        "C": 1000 if cost.per_1000 == 0 else min(1000, 1000 * cost.budget_per_1000 // cost.per_1000),
        "V": per_mille(*verify),
    }
    k = sum(WEIGHTS[c] * comps[c] for c in COMPONENTS) // 1000
    mins = {c: int(min_components[c]) for c in COMPONENTS if c in min_components}
    failed = {c for c in COMPONENTS if comps[c] < mins.get(c, 0)}
    if comps["V"] < 1000:
        failed.add("V")                      # a backend or batch size that changes a byte is a bug: always fails
    if k < min_k:
        failed.add("k")
    inputs = {
        "A": {"correct": accuracy[0], "total": accuracy[1]},
        "S": {"passed": probes[0], "total": probes[1]},
        "L": {"p95_tokens": latency.p95_tokens, "macs": latency.macs, "macs_per_second": latency.macs_per_second,
              "estimate_us": latency.estimate_us, "budget_us": latency.budget_us},
        "C": {"total_macs": cost.total_macs, "decisions": cost.decisions,
              "price_per_tera_macs": cost.price_per_tera_macs, "price_unit": cost.price_unit,
              "cost_per_1000": cost.per_1000, "budget_per_1000": cost.budget_per_1000},
        "V": {"identical": verify[0], "total": verify[1], "backends": list(backends),
              "batch_sizes": list(batch_sizes)},
    }
    return {"spec": KSCORE_SPEC, "k": k, "components": comps, "weights": dict(WEIGHTS), "inputs": inputs,
            "gate": {"min_k": min_k, "min_components": mins, "passed": not failed,
                     "failed": sorted(failed)}}


def describe_failure(doc: Mapping[str, Any]) -> str:
    """One line naming every failing component with its value and minimum, e.g. ``A 912 < 950; k 801 < 850``."""
    gate, comps = doc["gate"], doc["components"]
    parts = []
    for name in gate["failed"]:
        if name == "k":
            parts.append(f"K {doc['k']} < {gate['min_k']}")
        elif name == "V" and gate["min_components"].get("V", 0) <= comps["V"]:
            parts.append(f"V {comps['V']} < 1000 (outputs differ between backends or batch sizes)")
        else:
            parts.append(f"{name} {comps[name]} < {gate['min_components'][name]}")
    return "; ".join(parts)
