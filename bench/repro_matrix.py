"""The reproducibility matrix of docs/reproducibility.md: compile one recipe under environment variations, compare.

    python bench/repro_matrix.py exact [--recipe examples/loan-triage/recipe.toml] [--cells a,b,...]
    python bench/repro_matrix.py torch [--train 200]            # a small full fine-tune of the same example
    python bench/repro_matrix.py generate [--example]           # tiny generator (every algorithm) | bank-replies

Every cell is a fresh process (so environment variables reach torch, MKL, OpenBLAS and oneDNN at start-up) that
runs :func:`kolm_audit.compile.build.build` and writes the unsigned artifact. Each cell is compared with the first
(the baseline) by artifact digest and, when they differ, by ``kolm-audit diff``'s tensor-level comparison: how many
tensors and elements differ and by how much. The table printed is the one in docs/reproducibility.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

# name -> (description, environment changes, compile options, torch pin overrides (None unsets a pin))
EXACT_CELLS: dict[str, tuple[str, dict[str, str], list[str], dict[str, str | None]]] = {
    "baseline": ("torch CPU backend, default threads", {}, ["--backend", "cpu"], {}),
    "threads-1": ("1 thread", {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, ["--backend", "cpu", "--threads", "1"],
                  {}),
    "aten-default": ("ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"}, ["--backend", "cpu"], {}),
    "aten-avx2": ("ATEN_CPU_CAPABILITY=avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, ["--backend", "cpu"], {}),
    "mkl-cbwr-compatible": ("MKL_CBWR=COMPATIBLE", {"MKL_CBWR": "COMPATIBLE"}, ["--backend", "cpu"], {}),
    "mkl-cbwr-avx2": ("MKL_CBWR=AVX2", {"MKL_CBWR": "AVX2"}, ["--backend", "cpu"], {}),
    "openblas-prescott": ("OPENBLAS_CORETYPE=Prescott", {"OPENBLAS_CORETYPE": "Prescott"}, ["--backend", "cpu"], {}),
    "openblas-skylakex": ("OPENBLAS_CORETYPE=SkylakeX", {"OPENBLAS_CORETYPE": "SkylakeX"}, ["--backend", "cpu"], {}),
    "onednn-sse41": ("ONEDNN_MAX_CPU_ISA=SSE41", {"ONEDNN_MAX_CPU_ISA": "SSE41"}, ["--backend", "cpu"], {}),
    "numpy": ("features on the numpy reference", {}, ["--backend", "numpy"], {}),
}
TORCH_CELLS: dict[str, tuple[str, dict[str, str], list[str], dict[str, str | None]]] = {
    "baseline": ("pinned (1 thread, ATEN default, MKL_CBWR=COMPATIBLE, oneDNN SSE41)", {}, [], {}),
    "again": ("the same, another process", {}, [], {}),
    "threads-2": ("2 threads", {}, ["--torch-threads", "2"], {}),
    "aten-avx2": ("ATEN_CPU_CAPABILITY=avx2", {}, [], {"ATEN_CPU_CAPABILITY": "avx2"}),
    "aten-avx512": ("ATEN_CPU_CAPABILITY=avx512", {}, [], {"ATEN_CPU_CAPABILITY": "avx512"}),
    "mkl-cbwr-auto": ("MKL_CBWR=AUTO", {}, [], {"MKL_CBWR": "AUTO"}),
    "onednn-all": ("ONEDNN_MAX_CPU_ISA unset (all ISAs)", {}, [], {"ONEDNN_MAX_CPU_ISA": None}),
    "unpinned": ("no pins at all, 1 thread", {}, [], {"ATEN_CPU_CAPABILITY": None, "MKL_CBWR": None,
                                                      "ONEDNN_MAX_CPU_ISA": None}),
    "openblas-prescott": ("OPENBLAS_CORETYPE=Prescott (numpy's BLAS)", {"OPENBLAS_CORETYPE": "Prescott"}, [], {}),
    "numpy-runtime": ("V and probes on the numpy reference only", {}, ["--backend", "numpy"], {}),
}

GENERATE_CELLS = {k: v for k, v in TORCH_CELLS.items() if k not in ("openblas-prescott",)}


def cell_main(argv: list[str]) -> int:
    """One cell (a fresh process): build the recipe, write the unsigned artifact, print JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cell-recipe", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--overrides", default="{}")
    args = parser.parse_args(argv)
    from kolm_audit.artifact import write_artifact
    from kolm_audit.canonical import digest_of
    from kolm_audit.compile.build import build
    from kolm_audit.compile.recipe import load_recipe

    recipe = load_recipe(args.cell_recipe)
    trainer = None
    if recipe.task == "generate":
        from kolm_audit.compile.gen_trainer import GenerateTrainer

        trainer = GenerateTrainer(env_overrides=json.loads(args.overrides))
    elif recipe.trainer["kind"] == "torch":
        from kolm_audit.compile.torch_trainer import TorchTrainer

        trainer = TorchTrainer(env_overrides=json.loads(args.overrides))
    clock = time.perf_counter()
    b = build(recipe, backend=args.backend, threads=args.threads, trainer=trainer)
    write_artifact(args.out, manifest=b.manifest, tensors=b.tensors)
    print(json.dumps({"digest": digest_of(b.manifest), "seconds": round(time.perf_counter() - clock, 1),
                      "k": b.kscore["k"], "A": b.kscore["components"]["A"]}))
    return 0


def torch_recipe(folder: Path, train: int, threads: int) -> Path:
    from _compile_fixtures import small_recipe

    return small_recipe(folder, train=train, eval_=60, probes=10, seed=11,
                        trainer={"kind": "torch", "epochs": 1, "batch_size": 16, "learning_rate": "0.00005",
                                 "max_tokens": 64, "threads": threads})


def generate_recipe(folder: Path, threads: int, *, example: bool) -> Path:
    """The tiny generator of tests/integration/_gen_fixtures.py (one stage of every algorithm), or with ``example``
    a copy of examples/bank-replies whose recipe trains with ``threads`` torch threads."""
    from _gen_fixtures import all_stages, gen_recipe, gen_world, write_teacher

    if example:
        import shutil

        shutil.copytree(ROOT / "examples" / "bank-replies", folder)
        recipe = folder / "recipe.toml"
        text = recipe.read_text()
        assert "\nthreads = 1\n" in text
        recipe.write_text(text.replace("\nthreads = 1\n", f"\nthreads = {threads}\n"))
        return recipe

    world = gen_world(folder)
    world["teacher"] = write_teacher(folder / "teacher", world["tokenizer"], world["vocab"])
    stages = all_stages(world)
    return gen_recipe(world, stages, trainer={"kind": "torch", "threads": threads, "stages": stages})


def _compare(base: Path, other: Path) -> dict[str, Any]:
    from kolm_audit.artifact import read_artifact
    from kolm_audit.replay.diff import artifact_side, diff_artifacts

    a = read_artifact(base)
    d = diff_artifacts(artifact_side(a), artifact_side(read_artifact(other)))
    changed = d["tensors"]["changed"]
    int8 = [t for t in changed if t["a"]["dtype"] == "I8"]
    int8_total = sum(int(np.prod(t["shape"])) for t in a.manifest["tensors"].values() if t["dtype"] == "I8")
    return {"identical": d["identical"], "manifest_paths": [p["path"] for p in d["manifest"]],
            "tensors_changed": len(changed), "elements_changed": sum(t["differing"] or 0 for t in changed),
            "elements": sum(t["elements"] for t in changed),
            "int8_changed": sum(t["differing"] or 0 for t in int8), "int8_total": int8_total,
            "int8_max_abs": max((int(t["max_abs_difference"]) for t in int8 if t["max_abs_difference"]), default=0),
            "max_abs": max((int(t["max_abs_difference"]) for t in changed if t["max_abs_difference"]), default=0),
            "worst": max(changed, key=lambda t: t["differing"] or 0)["name"] if changed else None}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--cell":
        return cell_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trainer", choices=("exact", "torch", "generate"))
    parser.add_argument("--recipe", type=Path, default=ROOT / "examples" / "loan-triage" / "recipe.toml")
    parser.add_argument("--cells", help="comma-separated subset of the cells")
    parser.add_argument("--train", type=int, default=200, help="torch: training messages of the small recipe")
    parser.add_argument("--example", action="store_true", help="generate: the bank-replies example (minutes a cell)")
    args = parser.parse_args()
    table = {"exact": EXACT_CELLS, "torch": TORCH_CELLS, "generate": GENERATE_CELLS}[args.trainer]
    names = args.cells.split(",") if args.cells else list(table)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kolm-matrix-") as tmp:
        recipes: dict[int, Path] = {}
        base_path: Path | None = None
        for name in names:
            desc, env_changes, options, overrides = table[name]
            recipe = args.recipe
            if args.trainer in ("torch", "generate"):
                threads = int(options[1]) if options[:1] == ["--torch-threads"] else 1
                options = options[2:] if options[:1] == ["--torch-threads"] else options
                if threads not in recipes:
                    folder = Path(tmp) / f"recipe-{threads}"
                    recipes[threads] = (torch_recipe(folder, args.train, threads) if args.trainer == "torch"
                                        else generate_recipe(folder, threads, example=args.example))
                recipe = recipes[threads]
            out = Path(tmp) / f"{name}.kolm"
            cmd = [sys.executable, __file__, "--cell", "--cell-recipe", str(recipe), "--out", str(out),
                   "--overrides", json.dumps(overrides), *options]
            clock = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  env={**os.environ, **env_changes})
            if proc.returncode != 0:
                print(f"{name}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            row = {"cell": name, "what": desc, **result, "wall_s": round(time.perf_counter() - clock, 1)}
            if base_path is None:
                base_path = out
            else:
                row.update(_compare(base_path, out))
            rows.append(row)
            print(json.dumps(row), flush=True)
        for threads, path in sorted(recipes.items()):
            trainer = tomllib.loads(path.read_text())["trainer"]
            print(f"\n({args.trainer}) recipe, threads {threads}:", json.dumps(trainer))
    print("\n| cell | artifact digest | same as baseline | K (A) | what differs |")
    print("|---|---|---|---|---|")
    for r in rows:
        same = "baseline" if "identical" not in r else ("**identical**" if r["identical"] else "differs")
        if r.get("identical", True):
            detail = ""
        elif r["tensors_changed"] == 0:
            detail = "same tensors; the manifest records another environment (" + ", ".join(
                p.removeprefix("$.provenance.build.") for p in r["manifest_paths"]) + ")"
        else:
            detail = (f"{r['tensors_changed']} tensors; int8 weights: {r['int8_changed']} of {r['int8_total']} "
                      f"values (1 in {r['int8_total'] // max(1, r['int8_changed'])}), max |diff| "
                      f"{r['int8_max_abs']}; most in {r['worst']}")
        print(f"| {r['what']} | `{r['digest'][:19]}…` | {same} | {r['k']} ({r['A']}) | {detail} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
