"""V of the K-score: replay every eval case on several backends at several batch sizes and demand byte equality.

Each *cell* is one backend (``numpy`` — the reference —, ``cpu``, ``cuda``) at one batch size: the eval requests
are sent in consecutive slices of that size (so padding and batch position differ between cells). A case counts as
identical when its decision (label index and every Q.16 score) is the same in every cell and equals what the
trainer computed without running the artifact, when it could. Wall-clock times of the batch-size-1 cells are
measured for the provenance statement only; they never enter the score.

The numpy reference is the slow part: its cells run in worker processes (spawned, one model each, slices of whole
batches) while the torch cells run here. Which process computes a slice changes nothing: every backend returns the
same integers alone or batched (docs/runtime-spec.md), and the slices are the cells' own batches.

Example::

    >>> cells(("numpy", "cpu"), (1, 16))
    [('numpy', 1), ('numpy', 16), ('cpu', 1), ('cpu', 16)]
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from kolm_audit.canonical import digest_of
from kolm_audit.compile.progress import Bars, no_bars
from kolm_audit.compile.trainer import Decision
from kolm_audit.model import Model
from kolm_audit.runtime import SPEC

MAX_REPORTED = 20
_SLICES = 8                                     # work units per numpy cell (whole batches each)
_WORKER: Model | None = None                    # the numpy model of a worker process


def cells(backends: Sequence[str], batch_sizes: Sequence[int]) -> list[tuple[str, int]]:
    """Every (backend, batch size) pair, backends in the given order."""
    return [(b, n) for b in backends for n in batch_sizes]


@dataclass(frozen=True)
class CrossCheck:
    """What V found: per case the reference decision, how many cases agreed everywhere, the first disagreements."""

    decisions: tuple[Decision, ...]              # the first cell's decision of each eval case
    identical: int
    mismatches: tuple[dict[str, Any], ...]       # at most MAX_REPORTED: case index and the differing cells
    latency_us: Mapping[str, tuple[int, ...]]    # per backend: wall time of each batch-size-1 request (sorted)
    wall_ms: int


def runtime_model(manifest: Mapping[str, Any], tensors: Mapping[str, np.ndarray], backend: str,
                  threads: int | None) -> Model:
    """A :class:`~kolm_audit.model.Model` over an artifact's manifest parts and tensors on ``backend``."""
    parts = {"runtime": SPEC, **{k: manifest[k] for k in ("architecture", "task", "quantization")}}
    return Model(manifest=parts, digest=digest_of(parts), tensors=tensors, backend=backend, threads=threads)


def _run(model: Model, ids: Sequence[Sequence[int]], size: int, bar: Any) -> tuple[list[Decision], list[int]]:
    out: list[Decision] = []
    times: list[int] = []
    for start in range(0, len(ids), size):
        chunk = [list(x) for x in ids[start:start + size]]
        clock = time.perf_counter_ns()
        results = model.classify(chunk)
        if size == 1:
            times.append((time.perf_counter_ns() - clock) // 1000)
        out.extend((r.label_index, r.scores) for r in results)
        bar.update(len(chunk))
    return out, times


class _Count:
    def update(self, n: int = 1) -> None:
        return None


def _init_worker(manifest: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
    global _WORKER
    _WORKER = runtime_model(manifest, tensors, "numpy", None)


def _run_slice(ids: Sequence[Sequence[int]], size: int) -> tuple[list[Decision], list[int]]:
    assert _WORKER is not None
    return _run(_WORKER, ids, size, _Count())


def _numpy_cells(pool: ProcessPoolExecutor, ids: Sequence[Sequence[int]], sizes: Sequence[int]
                 ) -> dict[int, list[tuple[int, Future[Any]]]]:
    """Submit every numpy cell as slices of whole batches; returns, per batch size, (slice length, future)."""
    jobs: dict[int, list[tuple[int, Future[Any]]]] = {}
    for size in sizes:
        step = size * max(1, -(-len(ids) // (size * _SLICES)))
        jobs[size] = [(len(ids[i:i + step]), pool.submit(_run_slice, [list(x) for x in ids[i:i + step]], size))
                      for i in range(0, len(ids), step)]
    return jobs


def crosscheck(*, manifest: Mapping[str, Any], tensors: Mapping[str, np.ndarray], ids: Sequence[Sequence[int]],
               backends: Sequence[str], batch_sizes: Sequence[int], threads: int | None = None,
               expected: Sequence[Decision] | None = None, bars: Bars = no_bars) -> CrossCheck:
    """Run every cell over ``ids`` and compare (a classifier artifact's ``manifest`` parts and ``tensors``)."""
    clock = time.perf_counter()
    grid = cells(backends, batch_sizes)
    results: dict[tuple[str, int], list[Decision]] = {}
    latency: dict[str, tuple[int, ...]] = {}
    bar = bars("verify (V)", total=len(grid) * len(ids), unit="case")
    pool = None
    if "numpy" in backends:
        workers = max(1, min(os.cpu_count() or 1, len(batch_sizes) * _SLICES))
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(dict(manifest), dict(tensors)))
    try:
        jobs = _numpy_cells(pool, ids, batch_sizes) if pool is not None else {}
        for backend in (b for b in backends if b != "numpy"):
            model = runtime_model(manifest, tensors, backend, threads)
            for size in batch_sizes:
                results[(backend, size)], times = _run(model, ids, size, bar)
                if times:
                    latency[model.backend] = tuple(sorted(times))
        for size, parts in jobs.items():
            decisions: list[Decision] = []
            times = []
            for count, future in parts:
                got, took = future.result()
                decisions.extend(got)
                times.extend(took)
                bar.update(count)
            results[("numpy", size)] = decisions
            if times:
                latency["numpy"] = tuple(sorted(times))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    reference = results[grid[0]]
    identical = 0
    mismatches: list[dict[str, Any]] = []
    for i, want in enumerate(reference):
        differ = [f"{b}@{n}" for (b, n) in grid if results[(b, n)][i] != want]
        if expected is not None and expected[i] != want:
            differ.append("trainer")
        if not differ:
            identical += 1
        elif len(mismatches) < MAX_REPORTED:
            mismatches.append({"case": i, "reference": f"{grid[0][0]}@{grid[0][1]}", "differing": differ})
    return CrossCheck(decisions=tuple(reference), identical=identical, mismatches=tuple(mismatches),
                      latency_us=latency, wall_ms=int((time.perf_counter() - clock) * 1000))
