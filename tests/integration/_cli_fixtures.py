"""CLI test helpers: run ``kolm-audit`` in-process, and a tiny unsigned artifact for tests needing no real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kolm_audit.artifact import build_manifest, empty_provenance, write_artifact
from kolm_audit.cli import main


def tiny_kolm(path: Path) -> Path:
    tensors = {"w": np.arange(16, dtype=np.int8).reshape(4, 4), "tokenizer.json": np.frombuffer(b"{}", np.uint8)}
    manifest = build_manifest(name="tiny", version="1", task={"kind": "embed", "labels": []},
                              architecture={"family": "bert"}, quantization={"scheme": "int8"}, tensors=tensors,
                              provenance=empty_provenance(), created="2026-01-01T00:00:00Z")
    write_artifact(path, manifest=manifest, tensors=tensors)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run ``kolm-audit ARGS`` through the real entry point; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err
