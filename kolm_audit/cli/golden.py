"""``kolm-audit golden``: golden-hash suites for QA (guide: docs/golden.md).

    kolm-audit golden run SUITE --artifact model.kolm [--backend auto|numpy|cpu|cuda] [--batch-size N] \\
        [--trust trust.toml | --artifact-key PUB] [--junit out.xml] [--json]
    kolm-audit golden bless SUITE --artifact model.kolm [--accept CASE_ID ...] [--accept-all] [--force] [--json]
    kolm-audit golden new --from-log LOG --sample N [--seed S] --artifact model.kolm --out SUITE [--name NAME] \\
        [--tenant T] [--keystore tenant-keys.json (--kek-file F | --kek-env VAR)] [--trust trust.toml] [--json]
    kolm-audit golden new --from-inputs inputs.jsonl --artifact model.kolm --out SUITE [--name NAME] [--json]

Exit codes: 0 every case passed (run) / the suite was written or needed nothing (bless, new); 1 a finding (a case
failed, the artifact pin does not hold, bless refused an unaccepted change, a logged decision does not
reproduce); 2 bad input (malformed suite — the message names the case —, unreadable artifact, a suite pinned to
another artifact without ``--force``).
"""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from kolm_audit.cli import emit
from kolm_audit.errors import InputError
from kolm_audit.runtime.ops import BACKENDS

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_OUT = click.Path(dir_okay=False, path_type=Path)


def _artifact_options(f: Any) -> Any:
    for decorator in reversed((
            click.option("--artifact", type=_FILE, required=True, help="The .kolm artifact to run the cases on."),
            click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                         help="Where to run (outputs are the same bytes on every backend)."),
            click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                         help="Cases per forward pass (a speed choice only: results are batch-invariant)."),
            click.option("--trust", type=_FILE, help="Also verify the artifact's signature against this trust file "
                         "(golden new --from-log: the log's checkpoints and receipt signatures too)."),
            click.option("--artifact-key", type=_FILE,
                         help="Also verify the artifact's signature against this public key."),
            click.option("--json", "as_json", is_flag=True, help="Machine-readable report."))):
        f = decorator(f)
    return f


def _load(artifact: Path, *, trust: Path | None, artifact_key: Path | None, backend: str) -> tuple[Any, str]:
    """The verified model and whether its signature was checked (tensor digests always are)."""
    import kolm_audit.model as kmodel

    if trust is not None and artifact_key is not None:
        raise InputError("give one way to verify the signature", field="--trust/--artifact-key",
                         expected="at most one of --trust or --artifact-key")
    signed = trust is not None or artifact_key is not None
    model = kmodel.load(artifact, trust=trust, key=artifact_key, backend=backend, require_signature=signed)
    return model, "verified" if signed else "not checked"


def _bar(total: int, *, as_json: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="case", desc=desc, disable=not sys.stderr.isatty() or as_json, file=sys.stderr)


@click.group("golden")
def golden() -> None:
    """Golden-hash suites: fail when any output byte of a model moves, and say which case and how."""


@golden.command("run")
@click.argument("suite_path", metavar="SUITE", type=_FILE)
@_artifact_options
@click.option("--junit", "junit_path", type=_OUT, help="Write deterministic JUnit XML here.")
@click.option("--failures-only", is_flag=True, help="List failing cases only (the summary still counts all).")
def run(suite_path: Path, artifact: Path, backend: str, batch_size: int, trust: Path | None,
        artifact_key: Path | None, as_json: bool, junit_path: Path | None, failures_only: bool) -> int:
    """Run every case of SUITE on the artifact; exit 1 on any changed output (or a wrong artifact)."""
    from kolm_audit.golden.junit import write_junit
    from kolm_audit.golden.runner import run_suite
    from kolm_audit.golden.suite import read_suite

    suite = read_suite(suite_path)
    model, signature = _load(artifact, trust=trust, artifact_key=artifact_key, backend=backend)
    with _bar(len(suite.cases), as_json=as_json, desc="golden") as bar:
        result = run_suite(suite, model, batch_size=batch_size, progress=bar.update, signature=signature)
    if junit_path is not None:
        write_junit(result, junit_path)
    text = result.text(show_passed=not failures_only)
    if junit_path is not None:
        text += f"\n  JUnit XML written to {junit_path}"
    emit(result.to_json(), as_json=as_json, text=text)
    return 0 if result.passed else 1


@golden.command("bless")
@click.argument("suite_path", metavar="SUITE", type=_FILE)
@_artifact_options
@click.option("--accept", "accept", multiple=True, metavar="CASE_ID",
              help="Record this case's new output although its expectation changes; repeatable.")
@click.option("--accept-all", is_flag=True, help="Record every changed expectation (each change is printed).")
@click.option("--force", is_flag=True,
              help="Bless a suite pinned to another artifact (re-pin) or following another artifact name.")
def bless(suite_path: Path, artifact: Path, backend: str, batch_size: int, trust: Path | None,
          artifact_key: Path | None, as_json: bool, accept: tuple[str, ...], accept_all: bool, force: bool) -> int:
    """Record the artifact's outputs as SUITE's expectations: new cases freely, changes only when accepted."""
    from kolm_audit.golden.bless import plan_bless, update_report
    from kolm_audit.golden.suite import read_suite

    suite = read_suite(suite_path, canonical=False)   # a suite edited by hand is rewritten canonically
    model, signature = _load(artifact, trust=trust, artifact_key=artifact_key, backend=backend)
    plan = plan_bless(suite, model, accept=accept, accept_all=accept_all, force=force, batch_size=batch_size)
    written = False
    if plan.writable and plan.suite.canonical_bytes() != suite_path.read_bytes():
        plan.suite.write(suite_path)
        written = True
    report = update_report(command="bless", suite=plan.suite, model=model, signature=signature, written=written,
                           changes=plan.changes, repinned_from=plan.repinned_from)
    emit(report, as_json=as_json, text=plan.text(written=written))
    return 0 if plan.writable else 1


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _default_name(out: Path) -> str:
    name = out.name
    for suffix in (".json", ".golden"):
        name = name.removesuffix(suffix)
    if not _NAME_RE.match(name):
        raise InputError("cannot make a suite name from the output file name", field="--name",
                         expected="--name NAME (1-128 of A-Z a-z 0-9 . _ -)", actual=repr(name))
    return name


@golden.command("new")
@click.option("--from-log", "log_path", type=click.Path(exists=True, path_type=Path),
              help="Receipt log (database or exported bundle) to sample production decisions from.")
@click.option("--from-inputs", "inputs_path", type=_FILE,
              help="JSONL requests (the kolm-audit run input format): one case per line.")
@click.option("--sample", type=click.IntRange(min=1), help="How many logged decisions to sample (--from-log).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Sampling seed (--from-log).")
@click.option("--out", "out_path", type=_OUT, required=True, help="The suite to write (must not exist).")
@click.option("--name", default=None, help="Suite name [default: from --out].")
@click.option("--tenant", default=None, help="Sample only this tenant's decisions (--from-log).")
@click.option("--keystore", type=_FILE, help="Tenant key store: without it, encrypted tenants are skipped.")
@click.option("--kek-file", type=_FILE, help="Key-encryption key file for --keystore.")
@click.option("--kek-env", help="Env var holding the base64 key-encryption key for --keystore.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Default for generate input lines that do not set their own (--from-inputs).")
@_artifact_options
def new(log_path: Path | None, inputs_path: Path | None, sample: int | None, seed: int, out_path: Path,
        name: str | None, tenant: str | None, keystore: Path | None, kek_file: Path | None, kek_env: str | None,
        max_new_tokens: int, artifact: Path, backend: str, batch_size: int, trust: Path | None,
        artifact_key: Path | None, as_json: bool) -> int:
    """A new suite pinned to the artifact: SAMPLE real decisions it made (--from-log), or one case per request
    line (--from-inputs)."""
    from kolm_audit.cli._options import open_keystore
    from kolm_audit.golden.bless import Change, update_report

    if (log_path is None) == (inputs_path is None):
        raise InputError("say where the cases come from", field="--from-log/--from-inputs",
                         expected="exactly one of --from-log LOG or --from-inputs FILE")
    if log_path is not None and sample is None:
        raise InputError("--from-log needs --sample N", field="--sample")
    if inputs_path is not None and (sample is not None or tenant is not None or keystore is not None):
        raise InputError("--sample, --tenant and --keystore apply to --from-log only", field="--from-inputs")
    if out_path.exists():
        raise InputError("refusing to overwrite an existing suite", file=str(out_path), field="--out",
                         expected="a new file (add cases to an existing suite with golden bless)")
    suite_name = name if name is not None else _default_name(out_path)
    store, kek = open_keystore(keystore, kek_file=kek_file, kek_env=kek_env)
    model, signature = _load(artifact, trust=trust, artifact_key=artifact_key, backend=backend)
    info = None
    if inputs_path is not None:
        from kolm_audit.golden.from_inputs import suite_from_inputs

        suite = suite_from_inputs(inputs_path, model, name=suite_name, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size)
        text = f"golden new: wrote {out_path} — {len(suite.cases)} cases from {inputs_path}"
    else:
        assert log_path is not None and sample is not None
        suite, info, text = _from_log(log_path, model, sample=sample, seed=seed, name=suite_name, tenant=tenant,
                                      store=store, kek=kek, trust=trust, batch_size=batch_size, out_path=out_path)
    suite.write(out_path)
    suite = replace(suite, path=out_path)
    changes = [Change(c.id, "new", True, None, c.expected) for c in suite.cases]
    report = update_report(command="new", suite=suite, model=model, signature=signature, written=True,
                           changes=changes, log=info)
    emit(report, as_json=as_json, text=text)
    return 0


def _from_log(log_path: Path, model: Any, *, sample: int, seed: int, name: str, tenant: str | None, store: Any,
              kek: Any, trust: Path | None, batch_size: int, out_path: Path) -> tuple[Any, dict[str, Any], str]:
    from kolm_audit.golden.from_log import suite_from_log
    from kolm_audit.trust import load_policy

    policy = None if trust is None else load_policy(trust=trust, keys=(), what="the log's checkpoints and receipts")
    suite, info = suite_from_log(log_path, model, sample=sample, seed=seed, name=name, tenant=tenant,
                                 keystore=store, kek=kek, policy=policy, batch_size=batch_size)
    skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in info["skipped"].items() if v) or "none"
    if not suite.cases:
        raise InputError("no decision of this artifact in the log is eligible; nothing written", file=str(log_path),
                         expected=f"receipts of artifact {model.digest}", actual=f"skipped: {skipped}")
    text = (f"golden new: wrote {out_path} — {len(suite.cases)} cases sampled (seed {seed}) from "
            f"{info['eligible']} eligible of {info['receipts']} receipts in {log_path} "
            f"({'log verified' if info['verified'] else 'log not verified: give --trust'}); skipped: {skipped}")
    if len(suite.cases) < sample:
        text += f"\n  note: only {len(suite.cases)} eligible decisions, fewer than --sample {sample}"
    return suite, info, text
