"""``kolm-audit inspect --json`` matches its schema and reports what the file claims, unverified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cli_fixtures import tiny_kolm

from kolm_audit.artifact import read_artifact
from kolm_audit.cli import main
from kolm_audit.schemas import validate


def test_inspect_json_is_schema_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_kolm(tmp_path / "m.kolm")
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(path), "--json"])
    assert exc.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    validate(doc, "inspect-report", source="inspect --json")
    validate(doc["manifest"], "manifest", source="inspect --json")
    assert doc["artifact_digest"] == read_artifact(path).digest
    assert doc["signed_by"] == [] and doc["signatures_verified"] is False
    assert doc["bytes"] == path.stat().st_size
