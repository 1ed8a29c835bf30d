"""The ``kolm-audit`` command line: a thin layer over the Python API.

Only here do errors become exit codes: 0 = verified/matched, 1 = a finding, 2 = bad usage or
unreadable input. Command families live in their own modules and are imported lazily, so
``kolm-audit --help`` stays fast and a command never pays for another's imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import signal
import sys
from types import FrameType
from typing import Any

import click

from kolm_audit.errors import KolmError

# command name -> "module:attribute" (names are fixed: docs/architecture.md, "The command line").
_COMMANDS: dict[str, str] = {
    "keys": "kolm_audit.cli.keys:keys",
    "quantize": "kolm_audit.cli.artifact:quantize",
    "sign": "kolm_audit.cli.artifact:sign",
    "verify": "kolm_audit.cli.artifact:verify",
    "inspect": "kolm_audit.cli.artifact:inspect",
    "run": "kolm_audit.cli.run:run",
    "log": "kolm_audit.cli.log:log",
    "replay": "kolm_audit.cli.replay:replay",
    "diff": "kolm_audit.cli.replay:diff",
    "compile": "kolm_audit.cli.compile:compile_",
    "rebuild": "kolm_audit.cli.compile:rebuild",
    "binder": "kolm_audit.cli.binder:binder",
    "golden": "kolm_audit.cli.golden:golden",
    "demo": "kolm_audit.cli.demo:demo",
    "serve": "kolm_audit.cli.serve:serve",
}


def _available(name: str) -> bool:
    module = _COMMANDS[name].split(":")[0]
    return importlib.util.find_spec(module) is not None


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in _COMMANDS if _available(n))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS or not _available(cmd_name):
            return None
        module, attr = _COMMANDS[cmd_name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kolm-audit")
def cli() -> None:
    """kolm-audit: signed open-weight models, exact integer replay, signed receipts in a tamper-evident log.

    \b
    Exit codes (every command):
      0  verified / matched / done
      1  a finding: tampered file, bad or untrusted signature, mismatch, failed gate
      2  bad usage or unreadable input (the message names the file, the field and what was expected)
    With --json a command prints its report as JSON on stdout; a failed command prints
    {"schema": "kolm.error/1", "error": {...}} (schemas/error.schema.json).
    """


def emit(doc: Any, *, as_json: bool, text: str | None = None) -> None:
    """Print a report: canonical-ish JSON for machines, ``text`` for people."""
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False))
    elif text is not None:
        click.echo(text)


ERROR_SCHEMA = "kolm.error/1"


def error_document(error: dict[str, Any]) -> dict[str, Any]:
    """The one ``--json`` shape of a failed command (``schemas/error.schema.json``): the error object under
    ``error`` — the same object a verify report or a run's error line carries."""
    return {"schema": ERROR_SCHEMA, "error": error}


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM is an interruption like Ctrl-C: unwind, so every ``finally`` (a run's closing checkpoint) runs."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn errors into exit codes, never tracebacks."""
    args = sys.argv[1:] if argv is None else argv
    as_json = "--json" in args
    if argv is None:   # a real process (not an in-process call): SIGTERM unwinds like SIGINT
        signal.signal(signal.SIGTERM, _terminate)
    try:
        rv = cli.main(args=args, prog_name="kolm-audit", standalone_mode=False)
    except KolmError as exc:
        if as_json:
            click.echo(json.dumps(error_document(exc.to_json()), indent=2, sort_keys=True))
        click.echo(f"kolm-audit: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("kolm-audit: aborted", err=True)
        sys.exit(2)
    except click.ClickException as exc:   # bad usage: unknown option, missing argument, bad value
        if as_json:
            doc = {"error": "UsageError", "message": exc.format_message(), "exit_code": 2}
            click.echo(json.dumps(error_document(doc), indent=2, sort_keys=True))
        exc.show()
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("kolm-audit: interrupted", err=True)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)
