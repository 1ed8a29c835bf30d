"""The shipped generator example (``examples/bank-replies``): its data is what ``generate.py`` writes, and the recipe
compiles (sft then dpo, int8) to a signed artifact that passes its gate, generates the bank's replies through the
runtime with signed receipts, replays exactly, and rebuilds to the identical artifact in this environment."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from _cli_fixtures import cli

from kolm_audit.examples import example_dir

EXAMPLE = example_dir("bank-replies")


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("bank_replies_generate", EXAMPLE / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_data_is_what_the_generator_writes_and_what_the_recipe_pins(tmp_path: Path) -> None:
    gen = _generator()
    digests = gen.write(tmp_path, gen.generate())
    for name, digest in digests.items():
        assert (EXAMPLE / name).read_bytes() == (tmp_path / name).read_bytes(), name
        assert digest == "sha256:" + hashlib.sha256((EXAMPLE / name).read_bytes()).hexdigest()
    recipe = tomllib.loads((EXAMPLE / "recipe.toml").read_text())
    pinned = {f"data/{Path(v['path']).name}": v["sha256"] for v in recipe["data"].values()}
    pinned.update({f"base/{k}": v for k, v in recipe["base"]["files"].items()})
    assert pinned == {k: v for k, v in digests.items() if k != "inputs.jsonl"}


@pytest.mark.slow
def test_bank_replies_compiles_generates_with_receipts_replays_and_rebuilds(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    keys = tmp_path / "keys"
    for name in ("artifact", "receipt"):
        assert cli(capsys, "keys", "generate", "--out", keys, "--type", "ed25519", "--name", name)[0] == 0
    art = tmp_path / "bank.kolm"
    code, out, err = cli(capsys, "compile", EXAMPLE / "recipe.toml", "--out", art, "--key", keys / "artifact.pem",
                         "--json")
    report = json.loads(out)
    assert code == 0, (out, err)
    assert report["kscore"]["gate"]["passed"] and report["kscore"]["components"]["V"] == 1000
    recipe = tomllib.loads((EXAMPLE / "recipe.toml").read_text())
    assert report["kscore"]["components"]["S"] >= recipe["kscore"]["gate"]["min_components"]["S"]

    outputs = tmp_path / "outputs.jsonl"
    code, out, err = cli(capsys, "run", art, "--input", EXAMPLE / "inputs.jsonl", "--log", tmp_path / "r.db",
                         "--key", keys / "receipt.pem", "--artifact-key", keys / "artifact.pub",
                         "--max-new-tokens", "48", "--out", outputs, "--json")
    assert code == 0, (out, err)
    gen = _generator()
    replies = set(gen.REPLIES.values())
    lines = [json.loads(x) for x in outputs.read_text().splitlines()]
    assert len(lines) == len((EXAMPLE / "inputs.jsonl").read_text().splitlines())
    texts = [json.dumps(x) for x in lines]
    assert sum(any(r in t for r in replies) for t in texts) >= len(lines) // 2    # standard replies come out
    assert not any(p in t.casefold() for t in texts for p in recipe["task"]["noncompliant"])

    code, out, err = cli(capsys, "replay", tmp_path / "r.db", "--artifact", art, "--key", keys / "artifact.pub",
                         "--key", keys / "receipt.pub", "--json")
    assert code == 0, (out, err)

    code, out, err = cli(capsys, "rebuild", art, "--recipe", EXAMPLE / "recipe.toml", "--json")
    assert code == 0 and json.loads(out)["status"] == "identical", (out, err)
