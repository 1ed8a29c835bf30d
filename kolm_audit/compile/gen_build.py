"""``compile`` of a generator recipe (``task.kind = "generate"``): checks, training, V and the K-score.

:func:`generate_parts` is what :func:`kolm_audit.compile.build.build` runs for a generator; the manifest, the
signature and the files are then written as for a classifier. Order: the recipe's data (digests, schemas, chosen ≠
rejected, stage ↔ data entries), the base (pins; config read as a Llama model; its weights unless ``base.init =
"seed"``), every row's token count against the context; then the trainer (:mod:`kolm_audit.compile.gen_trainer`),
then V: the eval prompts are generated greedily (``task.max_new_tokens``) on every backend and batch size of the
recipe and must give the same token ids everywhere.

The K-score of a generator (docs/compile.md):

* ``A``: eval cases whose greedy generation is exactly the expected completion followed by EOS;
* ``S``: probes whose greedy reply contains none of ``task.noncompliant`` (case-folded; ``0`` without probes);
* ``L``, ``C``: as for a classifier, from :func:`kolm_audit.compile.kscore.llama_macs` of each eval generation;
* ``V``: eval cases whose output ids are identical in every cell.

Example::

    >>> from kolm_audit.examples import example_dir
    >>> from kolm_audit.compile.recipe import load_recipe
    >>> parts = generate_parts(load_recipe(example_dir("bank-replies") / "recipe.toml"))    # doctest: +SKIP
    >>> parts.kscore["components"]["V"]                                                      # doctest: +SKIP
    1000
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kolm_audit.compile import kscore as ks
from kolm_audit.compile.crosscheck import MAX_REPORTED, CrossCheck, cells, runtime_model
from kolm_audit.compile.features import check_pins
from kolm_audit.compile.gen_data import Encoder, GenerateData, load_generate_data, prompts
from kolm_audit.compile.gen_trainer import GenerateContext, GenerateTrainer
from kolm_audit.compile.hf import HFCheckpoint, read_hf_checkpoint
from kolm_audit.compile.llama import llama_architecture
from kolm_audit.compile.progress import Bars, no_bars
from kolm_audit.compile.recipe import Recipe
from kolm_audit.compile.trainer import Trained
from kolm_audit.errors import InputError

DEFAULT_MAX_NEW_TOKENS = 64
Output = tuple[tuple[int, ...], str]             # generated ids (EOS kept) and finish reason


@dataclass(frozen=True)
class GenerateParts:
    trained: Trained
    data: GenerateData
    check: CrossCheck
    kscore: dict[str, Any]
    checked_ms: int
    base_config: Mapping[str, Any]


def load_generator_base(recipe: Recipe) -> tuple[HFCheckpoint, dict[str, Any]]:
    """The base directory (pins checked) and its validated Llama architecture."""
    seeded = recipe.document["base"].get("init", "weights") == "seed"
    ckpt = read_hf_checkpoint(recipe.base_path, weights=not seeded)
    check_pins(ckpt, recipe.base_files, recipe_file=str(recipe.path), field="base.files")
    arch = llama_architecture(ckpt.config, file=str(recipe.base_path / "config.json"))
    if not arch["eos_token_ids"]:
        raise InputError("a generator needs an EOS token to end its completions",
                         file=str(recipe.base_path / "config.json"), field="eos_token_id", expected="a token id")
    return ckpt, arch


def generations(model: Any, ids: Sequence[Sequence[int]], *, size: int, max_new_tokens: int) -> list[Output]:
    """Greedy generations of ``ids`` sent in consecutive batches of ``size``."""
    out: list[Output] = []
    for start in range(0, len(ids), size):
        for r in model.generate([list(x) for x in ids[start:start + size]], max_new_tokens=max_new_tokens):
            out.append((tuple(r.output_ids), r.finish_reason))
    return out


def generate_crosscheck(*, manifest: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                        ids: Sequence[Sequence[int]], backends: Sequence[str], batch_sizes: Sequence[int],
                        max_new_tokens: int, threads: int | None = None, bars: Bars = no_bars) -> CrossCheck:
    """V of a generator: every cell generates every eval prompt; a case counts when all cells agree."""
    clock = time.perf_counter()
    grid = cells(backends, batch_sizes)
    bar = bars("verify (V)", total=len(grid), unit="cell")
    results: dict[tuple[str, int], list[Output]] = {}
    try:
        for backend in backends:
            model = runtime_model(manifest, tensors, backend, threads)
            for size in batch_sizes:
                results[(backend, size)] = generations(model, ids, size=size, max_new_tokens=max_new_tokens)
                bar.update(1)
    finally:
        bar.close()
    reference = results[grid[0]]
    identical, mismatches = 0, []
    for i, want in enumerate(reference):
        differ = [f"{b}@{n}" for (b, n) in grid if results[(b, n)][i] != want]
        if not differ:
            identical += 1
        elif len(mismatches) < MAX_REPORTED:
            mismatches.append({"case": i, "reference": f"{grid[0][0]}@{grid[0][1]}", "differing": differ})
    return CrossCheck(decisions=tuple(reference), identical=identical,  # type: ignore[arg-type]
                      mismatches=tuple(mismatches), latency_us={},
                      wall_ms=int((time.perf_counter() - clock) * 1000))


def compliant(text: str, phrases: Sequence[str]) -> bool:
    """No phrase of ``phrases`` occurs in ``text`` (both case-folded)."""
    folded = text.casefold()
    return not any(p.casefold() in folded for p in phrases)


def _kscore(recipe: Recipe, arch: Mapping[str, Any], eval_ids: Sequence[Sequence[int]],
            expected: Sequence[Sequence[int]], check: CrossCheck, probe_texts: Sequence[str] | None
            ) -> dict[str, Any]:
    k, gate = recipe.kscore, recipe.kscore["gate"]
    outputs: Sequence[Any] = check.decisions
    correct = sum(tuple(out[0]) == tuple(want) for out, want in zip(outputs, expected, strict=True))
    macs = [ks.llama_macs(arch, prompt_tokens=len(p), new_tokens=len(out[0])) for p, out in
            zip(eval_ids, outputs, strict=True)]
    by_tokens = sorted(range(len(macs)), key=lambda i: (len(eval_ids[i]) + len(outputs[i][0]), macs[i]))
    p95 = by_tokens[ks.p95_index(len(by_tokens))]
    phrases = tuple(recipe.document["task"].get("noncompliant", ()))
    passed = sum(compliant(t, phrases) for t in probe_texts) if probe_texts is not None else 0
    return ks.kscore(
        accuracy=(correct, len(expected)), probes=(passed, len(probe_texts or ())),
        latency=ks.Latency(p95_tokens=len(eval_ids[p95]) + len(outputs[p95][0]), macs=macs[p95],
                           macs_per_second=k["declared"]["macs_per_second"], budget_us=k["budgets"]["latency_us"]),
        cost=ks.Cost(total_macs=sum(macs), decisions=len(macs),
                     price_per_tera_macs=k["declared"]["price_per_tera_macs"], price_unit=k["declared"]["price_unit"],
                     budget_per_1000=k["budgets"]["cost_per_1000"]),
        verify=(check.identical, len(expected)), backends=recipe.verify_backends,
        batch_sizes=recipe.verify_batch_sizes, min_k=gate["min_k"], min_components=gate.get("min_components", {}))


def generate_parts(recipe: Recipe, *, backend: str = "auto", threads: int | None = None, bars: Bars = no_bars,
                   trainer: GenerateTrainer | None = None) -> GenerateParts:
    """Check every input, train, run V and score a generator recipe (nothing signed or written)."""
    if trainer is not None and not isinstance(trainer, GenerateTrainer):
        raise InputError("a generator recipe is trained by the generator trainer", field="trainer.kind",
                         expected="GenerateTrainer", actual=type(trainer).__name__)
    clock = time.perf_counter()
    data = load_generate_data(recipe)
    base, arch = load_generator_base(recipe)
    enc = Encoder(base.tokenizer_json, eos=arch["eos_token_ids"][0], context=arch["max_position_embeddings"])
    eval_rows = enc.rows(data.eval, reserve=1)
    probe_rows = enc.rows(data.probes, reserve=1) if data.probes is not None else None
    ctx = GenerateContext(recipe=recipe, base=base, architecture=arch, data=data, encoder=enc, bars=bars)
    for stage in recipe.trainer["stages"]:                       # every row's length, before the long work
        enc.rows(data.files[str(stage["data"])])
    checked_ms = int((time.perf_counter() - clock) * 1000)
    trained = (trainer or GenerateTrainer()).train(ctx)
    parts = {"architecture": dict(trained.architecture), "task": dict(trained.task),
             "quantization": dict(trained.quantization)}
    max_new = int(recipe.document["task"].get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    eval_ids = prompts(eval_rows)
    check = generate_crosscheck(manifest=parts, tensors=trained.tensors, ids=eval_ids,
                                backends=recipe.verify_backends, batch_sizes=recipe.verify_batch_sizes,
                                max_new_tokens=max_new, threads=threads, bars=bars)
    probe_texts = None
    if probe_rows is not None:
        model = runtime_model(parts, trained.tensors, backend, threads)
        outs = generations(model, prompts(probe_rows), size=16, max_new_tokens=max_new)
        probe_texts = [model.tokenizer.decode(list(ids)) for ids, _ in outs]
    kscore = _kscore(recipe, arch, eval_ids, [r["completion"] for r in eval_rows], check, probe_texts)
    return GenerateParts(trained=trained, data=data, check=check, kscore=kscore, checked_ms=checked_ms,
                         base_config=base.config)
