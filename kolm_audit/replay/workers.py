"""The worker side of :mod:`kolm_audit.replay.engine`: re-run batches of recorded inputs, in-process, in local worker
processes (each loads the artifact once; with the numpy backend a forked worker inherits the auditor's already verified
model, torch backends use spawned workers), or on Ray actors (:func:`ray_cluster`, optional extra ``kolm-audit[ray]``:
the artifact travels once as bytes through Ray's object store, each actor checks its digest and loads it once; the log
never leaves the auditor, only batches of token ids do).

Batches are formed by :func:`kolm_audit.replay.engine.replay` (grouped by task and decoding parameters, similar lengths
together); the runtime is batch-invariant, so how receipts are batched or spread over workers never changes a
result. A request the runtime refuses is isolated and reported, the rest of its batch still runs.

    >>> run_batches([], model=None, artifact_path="m.kolm", digest="sha256:" + "0" * 64, backend="numpy",
    ...             workers=2, progress=None)
    {}
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kolm_audit.artifact import read_artifact
from kolm_audit.errors import InputError, RuntimeInputError
from kolm_audit.model import Model
from kolm_audit.replay.report import error_text

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


@dataclass(frozen=True)
class RayCluster:
    """The Ray runtime a replay runs on (see :func:`ray_cluster`); informational only, never part of ``results``."""

    requested: str      # what --ray said: local | auto | an address
    address: str        # the GCS address actually joined
    nodes: int
    cpus: int
    started_here: bool  # a local Ray this replay started (and stops)
    version: str

    def describe(self, *, actors: int) -> dict[str, Any]:
        return {"requested": self.requested, "address": self.address, "nodes": self.nodes, "cpus": self.cpus,
                "actors": actors, "started_here": self.started_here, "version": self.version}


@contextmanager
def ray_cluster(address: str, *, workers: int) -> Iterator[RayCluster]:
    """Join Ray for the length of a replay: the runtime this process already joined if any; else ``local`` starts a
    local Ray bounded to ``workers`` CPUs, ``auto`` joins the running cluster Ray finds (``RAY_ADDRESS`` or
    ``ray start`` on this machine) and falls back to a local one, anything else is a cluster address."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs the optional extra: pip install 'kolm-audit[ray]'", field="--ray",
                         actual=address) from None
    started = not ray.is_initialized()
    if started:
        local = {"num_cpus": workers, "include_dashboard": False, "log_to_driver": False,
                 "logging_level": logging.WARNING}
        try:
            if address == "local":   # a new local Ray, even where RAY_ADDRESS names a cluster
                ray.init(address="local", **local)
            elif address == "auto":
                try:
                    ray.init(address="auto", logging_level=logging.WARNING)
                except ConnectionError:
                    ray.init(address="local", **local)
            else:
                ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise InputError(f"cannot join the Ray cluster ({exc})", field="--ray", actual=address) from None
    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        yield RayCluster(requested=address, address=str(ray.get_runtime_context().gcs_address), nodes=len(alive),
                         cpus=int(ray.cluster_resources().get("CPU", 0)), started_here=started,
                         version=str(ray.__version__))
    finally:
        if started:
            ray.shutdown()


class _RayWorker:
    """One Ray actor: loads the artifact from the bytes it is sent (digest checked) once, then runs batches."""

    def __init__(self, blob: bytes, digest: str, backend: str) -> None:
        if backend != "numpy":   # one CPU per actor (its Ray resource)
            import torch

            torch.set_num_threads(1)
        with tempfile.TemporaryDirectory(prefix="kolm-replay-") as tmp:
            path = Path(tmp) / "artifact.kolm"
            path.write_bytes(blob)
            # tensors are read through a memory map, which outlives the file's name (POSIX)
            self.model = _load_model(str(path), digest, backend)

    def run(self, batch: Batch) -> list[tuple[int, dict[str, Any]]]:
        return execute(self.model, batch)


def _run_on_ray(batches: list[Batch], *, artifact_path: str, digest: str, backend: str, workers: int,
                take: Callable[[list[tuple[int, dict[str, Any]]]], None]) -> None:
    """Run ``batches`` on ``min(workers, len(batches))`` Ray actors; ``take`` sees the results in batch order."""
    import ray
    from ray.util import ActorPool

    try:
        blob = Path(artifact_path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read artifact ({exc.strerror})", file=artifact_path) from None
    remote = ray.remote(num_cpus=1)(_RayWorker)
    ref = ray.put(blob)
    actors = [remote.remote(ref, digest, backend) for _ in range(min(workers, len(batches)))]
    try:
        for done in ActorPool(actors).map(lambda actor, batch: actor.run.remote(batch), batches):
            take(done)
    except ray.exceptions.RayActorError as exc:
        raise InputError(f"a Ray worker failed to load the artifact or died ({exc})", file=artifact_path) from None
    finally:
        for actor in actors:
            ray.kill(actor)


def run_batches(batches: list[Batch], *, model: Model | None, artifact_path: str, digest: str, backend: str,
                workers: int, progress: Progress | None,
                cluster: RayCluster | None = None) -> dict[int, dict[str, Any]]:
    """Run every batch (in order, over ``workers`` processes, or over ``workers`` actors on a joined Ray
    ``cluster``) and return ``{index: result}``."""
    global _MODEL
    results: dict[int, dict[str, Any]] = {}
    total = sum(len(b[2]) for b in batches)

    def take(done: list[tuple[int, dict[str, Any]]]) -> None:
        results.update(done)
        if progress is not None:
            progress(len(done), total)

    if not batches:
        return results
    if cluster is not None:
        _run_on_ray(batches, artifact_path=artifact_path, digest=digest, backend=backend, workers=workers, take=take)
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
