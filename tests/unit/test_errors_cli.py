"""The error tree's messages and exit codes, and the CLI entry point's mapping of them."""

from __future__ import annotations

import pytest

from kolm_audit import errors
from kolm_audit.cli import main


def test_message_names_file_field_and_expectation() -> None:
    err = errors.ArtifactError("digest differs", file="m.kolm", field="tensors.w", expected="sha256:aa",
                               actual="sha256:bb")
    assert str(err) == "m.kolm: tensors.w: digest differs (expected sha256:aa, got sha256:bb)"
    assert err.to_json() == {"error": "ArtifactError", "message": "digest differs", "exit_code": 1, "file": "m.kolm",
                             "field": "tensors.w", "expected": "sha256:aa", "actual": "sha256:bb"}


@pytest.mark.parametrize(("cls", "code"), [
    (errors.ArtifactError, 1), (errors.SchemaError, 1), (errors.SignatureError, 1), (errors.TrustError, 1),
    (errors.LogError, 1), (errors.GateFailed, 1), (errors.Unsigned, 1),
    (errors.InputError, 2), (errors.KeyFileError, 2), (errors.ConfigError, 2), (errors.UnsupportedModel, 2),
    (errors.RuntimeInputError, 2),
])
def test_exit_codes(cls: type[errors.KolmError], code: int) -> None:
    assert cls("x").exit_code == code
    assert issubclass(cls, errors.KolmError)


def test_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "no-such-command" in capsys.readouterr().err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "kolm-audit" in capsys.readouterr().out


@pytest.mark.parametrize("args", [
    ["verify", "/nonexistent/model.kolm", "--key", "/nonexistent/k.pub", "--json"],     # an input error
    ["log", "verify", "/nonexistent.db", "--checkpoint-only", "--key", "/nonexistent/k.pub", "--json"],
    ["replay", "--json"],                                                               # usage: missing argument
    ["inspect", "--no-such-option", "x", "--json"],                                     # usage: unknown option
])
def test_every_failure_has_one_json_shape(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    import json

    from kolm_audit.schemas import validate

    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr().out
    doc = json.loads(out)
    if doc.get("schema") == "kolm.verify-report/1":      # verify's report carries the same error object
        doc = {"schema": "kolm.error/1", "error": doc["error"]}
    validate(doc, "error")
    assert doc["error"]["exit_code"] == exc.value.code == 2


def test_group_help_explains_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "1  a finding" in out and "2  bad usage" in out and "kolm.error/1" in out
