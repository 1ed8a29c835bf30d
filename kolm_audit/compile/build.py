"""``compile``: recipe → checked inputs → trainer → artifact contents → K-score and gate → signed artifact.

:func:`build` does everything that determines the artifact (it never signs or writes), so ``rebuild`` can run it in
a fresh process and compare; :func:`compile_recipe` adds the gate, the signature and the two files (the artifact and
its provenance statement, each written atomically; nothing is written when any check or the gate fails).

Order of checks (all bad input is found before the long work starts): the recipe (schema, no floats), every data
file (pinned digest, schema per line, labels), the base directory (every file's pinned digest), every text's token
count. Then the trainer runs (:mod:`kolm_audit.compile.trainer`), V replays the eval cases on every backend and batch
size of the recipe (:mod:`kolm_audit.compile.crosscheck`), and the K-score is computed
(:mod:`kolm_audit.compile.kscore`).

Example::

    >>> from kolm_audit.examples import example_dir
    >>> result = compile_recipe(example_dir("loan-triage") / "recipe.toml", out="model.kolm",
    ...                         key=generate_key())                                           # doctest: +SKIP
    >>> result.report["kscore"]["gate"]["passed"], result.artifact is not None               # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kolm_audit.artifact.file import Artifact, write_artifact
from kolm_audit.artifact.manifest import artifact_statement, build_manifest
from kolm_audit.compile import kscore as ks
from kolm_audit.compile.crosscheck import CrossCheck, crosscheck, runtime_model
from kolm_audit.compile.data import TrainingData, load_data
from kolm_audit.compile.exact import probe_agreement
from kolm_audit.compile.features import load_base
from kolm_audit.compile.gen_data import GenerateData
from kolm_audit.compile.hf import HFCheckpoint
from kolm_audit.compile.progress import Bars, no_bars
from kolm_audit.compile.provenance import (
    machine_facts,
    provenance_path,
    provenance_statement,
    write_provenance,
)
from kolm_audit.compile.recipe import Recipe, load_recipe, thaw
from kolm_audit.compile.trainer import TokenizedData, TrainContext, Trained, Trainer, trainer_for
from kolm_audit.errors import InputError
from kolm_audit.keys import PrivateKey
from kolm_audit.model import Model
from kolm_audit.runtime.tokenize import Tokenizer
from kolm_audit.signing import IN_TOTO_PAYLOAD_TYPE, sign_envelope
from kolm_audit.timefmt import format_time, now

REPORT_SCHEMA = "kolm.compile-report/1"


@dataclass(frozen=True)
class Build:
    """Everything a compile determines: the manifest and tensors, and what the report and provenance say."""

    recipe: Recipe
    manifest: dict[str, Any]
    tensors: Mapping[str, np.ndarray]
    kscore: Mapping[str, Any]
    trained: Trained
    data: TrainingData | GenerateData
    check: CrossCheck
    started: str
    timings_ms: Mapping[str, int]


@dataclass(frozen=True)
class CompileResult:
    report: dict[str, Any]                     # kolm.compile-report/1
    artifact: Artifact | None                  # None when the gate failed (nothing written)
    provenance: Path | None

    @property
    def passed(self) -> bool:
        return bool(self.report["kscore"]["gate"]["passed"])


def _fields(examples_lines: Sequence[int], what: str) -> list[str]:
    return [f"line {n}: $.{what}" for n in examples_lines]


def tokenize_data(base: HFCheckpoint, data: TrainingData) -> TokenizedData:
    """Token ids of every text under the base's tokenizer; a text longer than the base can read is refused."""
    tok = Tokenizer(base.tokenizer_json)
    limit = int(base.config.get("max_position_embeddings", 512))

    def ids(texts: Sequence[str], file: Path, fields: Sequence[str]) -> list[list[int]]:
        out = tok.encode(list(texts))
        for seq, where in zip(out, fields, strict=True):
            if len(seq) > limit:
                raise InputError("text is longer than the base model can read", file=str(file), field=where,
                                 expected=f"at most {limit} tokens", actual=f"{len(seq)} tokens")
        return out
    probes: list[str] = []
    groups: list[int] = []
    fields: list[str] = []
    if data.probes is not None:
        for g, variants in enumerate(data.probes.variants):
            probes.extend(variants)
            groups.extend([g] * len(variants))
            fields.extend(f"line {data.probes.lines[g]}: $.variants[{j}]" for j in range(len(variants)))
    return TokenizedData(
        train=ids(data.train.texts, data.train.file, _fields(data.train.lines, "text")),
        eval=ids(data.eval.texts, data.eval.file, _fields(data.eval.lines, "text")),
        probes=ids(probes, data.probes.file, fields) if data.probes is not None else [],
        probe_groups=groups)


def _probe_labels(trained: Trained, manifest: Mapping[str, Any], ids: TokenizedData, backend: str,
                  threads: int | None) -> list[int]:
    if trained.expected_probes is not None or not ids.probes:
        return list(trained.expected_probes or [])
    model: Model = runtime_model(manifest, trained.tensors, backend, threads)
    return [r.label_index for r in model.classify([list(x) for x in ids.probes])]


def _kscore(recipe: Recipe, trained: Trained, data: TrainingData, ids: TokenizedData, check: CrossCheck,
            probe_labels: Sequence[int]) -> dict[str, Any]:
    k = recipe.kscore
    arch, task = trained.architecture, trained.task
    n_labels, pooling = len(task["labels"]), str(task.get("pooling", "cls-pooler"))
    lengths = sorted(len(x) for x in ids.eval)
    p95 = lengths[ks.p95_index(len(lengths))]
    macs = ks.bert_macs(arch, tokens=p95, labels=n_labels, pooling=pooling)
    total = sum(ks.bert_macs(arch, tokens=len(x), labels=n_labels, pooling=pooling) for x in ids.eval)
    correct = sum(d[0] == y for d, y in zip(check.decisions, data.eval.labels, strict=True))
    n_probes = len(data.probes) if data.probes is not None else 0
    gate = k["gate"]
    return ks.kscore(
        accuracy=(correct, len(data.eval)), probes=(probe_agreement(probe_labels, ids.probe_groups), n_probes),
        latency=ks.Latency(p95_tokens=p95, macs=macs, macs_per_second=k["declared"]["macs_per_second"],
                           budget_us=k["budgets"]["latency_us"]),
        cost=ks.Cost(total_macs=total, decisions=len(ids.eval),
                     price_per_tera_macs=k["declared"]["price_per_tera_macs"], price_unit=k["declared"]["price_unit"],
                     budget_per_1000=k["budgets"]["cost_per_1000"]),
        verify=(check.identical, len(ids.eval)), backends=recipe.verify_backends,
        batch_sizes=recipe.verify_batch_sizes, min_k=gate["min_k"], min_components=gate.get("min_components", {}))


def _classify(recipe: Recipe, trainer: Trainer, *, backend: str, threads: int | None, bars: Bars
              ) -> tuple[Trained, TrainingData, CrossCheck, dict[str, Any], int, Mapping[str, Any]]:
    """Checks, training, V and K-score of a classifier recipe."""
    clock = time.perf_counter()
    data = load_data(recipe)
    base = load_base(recipe)
    ids = tokenize_data(base, data)
    checked_ms = int((time.perf_counter() - clock) * 1000)
    trained = trainer.train(TrainContext(recipe=recipe, base=base, data=data, ids=ids, backend=backend,
                                         threads=threads, bars=bars))
    parts = {"architecture": dict(trained.architecture), "task": dict(trained.task),
             "quantization": dict(trained.quantization)}
    check = crosscheck(manifest=parts, tensors=trained.tensors, ids=ids.eval, backends=recipe.verify_backends,
                       batch_sizes=recipe.verify_batch_sizes, threads=threads, expected=trained.expected_eval,
                       bars=bars)
    probe_labels = _probe_labels(trained, parts, ids, backend, threads)
    return trained, data, check, _kscore(recipe, trained, data, ids, check, probe_labels), checked_ms, base.config


def build(recipe: Recipe | str | Path, *, backend: str = "auto", threads: int | None = None,
          bars: Bars = no_bars, trainer: Trainer | None = None) -> Build:
    """Check every input, train, score: the artifact's manifest (with its K-score) and tensors. Signs nothing.

    ``trainer`` replaces the recipe's registered trainer object (e.g. a :class:`TorchTrainer` with environment
    overrides, to measure what they change); its ``kind`` must still be the recipe's ``trainer.kind``."""
    started = format_time(now())
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    registered = trainer_for(recipe.task, str(recipe.trainer["kind"]))
    if trainer is not None and trainer.kind != registered.kind:
        raise InputError("the trainer given does not match the recipe", field="trainer.kind",
                         expected=registered.kind, actual=trainer.kind)
    if recipe.task == "generate":
        from kolm_audit.compile.gen_build import generate_parts

        g = generate_parts(recipe, backend=backend, threads=threads, bars=bars,
                           trainer=trainer if trainer is not None else registered)  # type: ignore[arg-type]
        trained, data, check, kscore, checked_ms = g.trained, g.data, g.check, g.kscore, g.checked_ms
        base_config = g.base_config
    else:
        trained, data, check, kscore, checked_ms, base_config = _classify(recipe, trainer or registered,
                                                                          backend=backend, threads=threads,
                                                                          bars=bars)
    base_name = recipe.base_name or base_config.get("_name_or_path")
    provenance = {
        "recipe": recipe.digest,
        "base_model": {"files": dict(recipe.base_files), **({"name": base_name} if isinstance(base_name, str)
                                                             and base_name else {})},
        "data": data.digests,
        "toolchain": dict(trained.toolchain),
        "seed": recipe.seed,
        "build": {"command": "compile", "task": recipe.task, "scheme": recipe.scheme, **thaw(trained.build)},
    }
    manifest = build_manifest(name=recipe.name, version=recipe.version, task=dict(trained.task),
                              architecture=dict(trained.architecture), quantization=dict(trained.quantization),
                              tensors=trained.tensors, provenance=provenance, created=recipe.created, kscore=kscore)
    timings = {"checks": checked_ms, **trained.timings_ms, "verify": check.wall_ms}
    return Build(recipe=recipe, manifest=manifest, tensors=trained.tensors, kscore=kscore, trained=trained,
                 data=data, check=check, started=started, timings_ms=timings)


def report(b: Build, *, artifact: Artifact | None = None, provenance: Path | None = None,
           key_id: str | None = None) -> dict[str, Any]:
    """The ``kolm.compile-report/1`` document of a build (``schemas/compile-report.schema.json``)."""
    from kolm_audit.schemas import validate

    doc = {
        "schema": REPORT_SCHEMA,
        "recipe": {"file": str(b.recipe.path), "digest": b.recipe.digest},
        "trainer": {"kind": b.manifest["provenance"]["build"]["trainer"],
                    "spec": b.manifest["provenance"]["build"]["trainer_spec"], "promise": b.trained.promise},
        "data": {"train": len(b.data.train), "eval": len(b.data.eval),
                 "probes": len(b.data.probes) if b.data.probes is not None else 0,
                 "eval_overlap": b.data.eval_overlap},
        "warnings": list(b.data.warnings),
        "artifact_digest": artifact.digest if artifact is not None else _digest(b.manifest),
        "kscore": b.kscore,
        "crosscheck": {"cells": [f"{x}@{n}" for x in b.recipe.verify_backends for n in b.recipe.verify_batch_sizes],
                       "mismatches": list(b.check.mismatches)},
        "written": None if artifact is None else {"artifact": str(artifact.path), "provenance": str(provenance),
                                                  "signed_by": key_id},
        "timings_ms": dict(b.timings_ms),
    }
    validate(doc, "compile-report")
    return doc


def _digest(manifest: Mapping[str, Any]) -> str:
    from kolm_audit.canonical import digest_of

    return digest_of(manifest)


def _latency_byproduct(check: CrossCheck) -> dict[str, Any]:
    annotations: dict[str, Any] = {}
    for backend, times in check.latency_us.items():
        if times:
            annotations[backend] = {"requests": len(times), "p50_us": times[len(times) // 2],
                                    "p95_us": times[ks.p95_index(len(times))], "max_us": times[-1]}
    return {"name": "measured-latency", "annotations": {"batch_size": 1, "backends": annotations}}


def _statement(b: Build, digest: str, finished: str) -> dict[str, Any]:
    import platform

    from kolm_audit import __version__

    deps = {f"base/{n}": d for n, d in b.recipe.base_files.items()}
    deps.update({f"data/{n}": d for n, d in b.data.digests.items()})
    params = {"trainer": b.manifest["provenance"]["build"]["trainer"], **dict(b.trained.machine)}
    builder = {"kolm_audit": __version__, "python": platform.python_version(), "numpy": np.__version__}
    return provenance_statement(
        name=b.recipe.name, artifact_digest=digest, recipe_file=str(b.recipe.path), recipe=thaw(b.recipe.document),
        recipe_digest=b.recipe.digest, dependencies=deps, parameters=params, builder=builder, started=b.started,
        finished=finished,
        byproducts=[{"name": "build-machine", "annotations": machine_facts()}, _latency_byproduct(b.check),
                    {"name": "timings", "annotations": {f"{k}_ms": v for k, v in b.timings_ms.items()}}])


def compile_recipe(recipe: str | Path, *, out: str | Path, key: PrivateKey, backend: str = "auto",
                   threads: int | None = None, bars: Bars = no_bars) -> CompileResult:
    """Build, gate, sign and write ``out`` and ``out.provenance.json`` — or write nothing when the gate fails."""
    out = Path(out)
    if not out.parent.is_dir():
        raise InputError("output folder does not exist", file=str(out.parent), field="--out")
    b = build(recipe, backend=backend, threads=threads, bars=bars)
    if not b.kscore["gate"]["passed"]:
        return CompileResult(report=report(b), artifact=None, provenance=None)
    env = sign_envelope(artifact_statement(b.manifest), payload_type=IN_TOTO_PAYLOAD_TYPE, key=key)
    prov = provenance_path(out)
    statement = _statement(b, _digest(b.manifest), format_time(now()))
    write_provenance(prov, statement, key)
    try:
        art = write_artifact(out, manifest=b.manifest, tensors=b.tensors, signatures=[env.to_json()])
    except BaseException:
        prov.unlink(missing_ok=True)       # both files or neither
        raise
    return CompileResult(report=report(b, artifact=art, provenance=prov, key_id=key.key_id), artifact=art,
                         provenance=prov)
