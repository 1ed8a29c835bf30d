"""The worker side of :mod:`kolm_audit.replay`: re-run batches of recorded inputs, in-process or in local worker
processes (each loads the artifact once; with the numpy backend a forked worker inherits the auditor's already verified
model, torch backends use spawned workers).

Batches are formed by :func:`kolm_audit.replay.replay` (grouped by task and decoding parameters, similar lengths
together); the runtime is batch-invariant, so how receipts are batched or spread over workers never changes a
result. A request the runtime refuses is isolated and reported, the rest of its batch still runs.

    >>> run_batches([], model=None, artifact_path="m.kolm", digest="sha256:" + "0" * 64, backend="numpy",
    ...             workers=2, progress=None)
    {}
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from kolm_audit.artifact import read_artifact
from kolm_audit.errors import InputError, RuntimeInputError
from kolm_audit.model import Model
from kolm_audit.replay_report import error_text

Progress = Callable[[int, int], None]   # (receipts just replayed, receipts to replay)
Batch = tuple[str, tuple[tuple[str, Any], ...], list[tuple[int, tuple[int, ...]]]]   # (task, kwargs, [(index, ids)])

_MODEL: Model | None = None


def _load_model(path: str, digest: str, backend: str) -> Model:
    art = read_artifact(path, check_tensors=True)
    if art.digest != digest:
        raise InputError("the artifact changed during the replay", file=path, expected=digest, actual=art.digest)
    return Model.from_artifact(art, backend=backend)


def _init_worker(path: str, digest: str, backend: str, threads: int) -> None:
    global _MODEL
    if backend != "numpy":   # share the cores between workers instead of oversubscribing them
        import torch

        torch.set_num_threads(threads)
    if _MODEL is None or _MODEL.digest != digest:  # a forked worker inherits the parent's model
        _MODEL = _load_model(path, digest, backend)


def _result_json(task: str, result: Any) -> dict[str, Any]:
    if task == "embed":
        return {"output_digest": result.output_digest}
    if task == "classify":
        return {"output_digest": result.output_digest, "label": result.label, "scores": list(result.scores)}
    return {"output_digest": result.output_digest, "output_ids": list(result.output_ids),
            "finish_reason": result.finish_reason}


def execute(model: Model, batch: Batch) -> list[tuple[int, dict[str, Any]]]:
    """Run one batch; ``{index: result}`` pairs (``{"error": ...}`` for a refused request)."""
    task, kwargs, items = batch
    ids = [list(i) for _, i in items]
    try:
        if task == "embed":
            results: list[Any] = model.embed(ids)
        elif task == "classify":
            results = model.classify(ids)
        else:
            results = model.generate(ids, **dict(kwargs))
    except RuntimeInputError as exc:
        if len(items) == 1:
            return [(items[0][0], {"error": error_text(exc)})]
        return [out for item in items for out in execute(model, (task, kwargs, [item]))]
    return [(index, _result_json(task, r)) for (index, _), r in zip(items, results, strict=True)]


def _run_batch(batch: Any) -> list[tuple[int, dict[str, Any]]]:
    assert _MODEL is not None
    return execute(_MODEL, batch)


def run_batches(batches: list[Batch], *, model: Model | None, artifact_path: str, digest: str, backend: str,
                workers: int, progress: Progress | None) -> dict[int, dict[str, Any]]:
    """Run every batch (in order, or over ``workers`` processes) and return ``{index: result}``."""
    global _MODEL
    results: dict[int, dict[str, Any]] = {}
    total = sum(len(b[2]) for b in batches)

    def take(done: list[tuple[int, dict[str, Any]]]) -> None:
        results.update(done)
        if progress is not None:
            progress(len(done), total)

    if not batches:
        return results
    if workers <= 1 or len(batches) <= 1:
        if model is None:
            model = _load_model(artifact_path, digest, backend)
        for batch in batches:
            take(execute(model, batch))
        return results
    # the auditor already used the Rust tokenizer: keep its thread pool out of forked workers (no fork warning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # fork shares the verified numpy model for free; torch backends are not fork-safe (their OpenMP/CUDA state
    # deadlocks a forked child), so their workers are spawned and load the artifact once in the initializer
    fork = "fork" in multiprocessing.get_all_start_methods() and (model is None or model.backend == "numpy")
    ctx = multiprocessing.get_context("fork" if fork else "spawn")
    _MODEL = model if fork else None
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(artifact_path, digest, backend,
                                           max(1, (os.cpu_count() or 1) // workers))) as pool:
            for done in pool.map(_run_batch, batches):
                take(done)
    finally:
        _MODEL = None
    return results
