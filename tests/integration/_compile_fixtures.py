"""Small recipes for compile tests: the shipped loan-triage generator and recipe, at a size a test can afford.

``small_recipe(folder)`` writes ``train/eval/probes.jsonl`` from ``examples/loan-triage/generate.py`` with few rows
and a ``recipe.toml`` that is the shipped recipe with those files pinned (and any field overridden), so every test
compiles the real example pipeline — real MiniLM base, real runtime, real trainer — in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tomllib
from pathlib import Path
from typing import Any

from kolm_audit.examples import example_dir


def generator() -> Any:
    spec = importlib.util.spec_from_file_location("loan_triage_generate", example_dir("loan-triage") / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any], prefix: str = "") -> str:
    """A TOML text of ``doc`` (nested tables as [sections], leaf dicts of a file/digest as inline tables)."""
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict) or k in ("train", "eval", "probes")}
    tables = {k: v for k, v in doc.items() if k not in scalars}
    out = "".join(f"{json.dumps(k) if '.' in k else k} = {_value(v)}\n" for k, v in scalars.items())
    for k, v in tables.items():
        name = f"{prefix}.{k}" if prefix else k
        out += f"\n[{name}]\n" + to_toml(v, name)
    return out


def small_recipe(folder: Path, *, train: int = 60, eval_: int = 20, probes: int = 6, seed: int = 5,
                 **overrides: Any) -> Path:
    """Write small data and a recipe in ``folder``; ``overrides`` replace top-level tables or keys of the recipe
    (e.g. ``trainer={...}``)."""
    gen = generator()
    folder.mkdir(parents=True, exist_ok=True)
    digests = gen.write(folder, gen.generate(seed=seed, n_train=train, n_eval=eval_, n_probes=probes))
    doc = tomllib.loads((example_dir("loan-triage") / "recipe.toml").read_text())
    doc["data"] = {name: {"path": f"{name}.jsonl", "sha256": digests[name]} for name in ("train", "eval", "probes")}
    doc["trainer"]["epochs"] = 4
    doc["trainer"]["batch_size"] = 8
    doc["kscore"]["gate"] = {"min_k": 0}
    doc.update(overrides)
    path = folder / "recipe.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    return path


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
