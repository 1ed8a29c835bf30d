"""``kolm-audit replay`` and ``kolm-audit diff``.

    kolm-audit replay receipts.db --artifact model.kolm --trust trust.toml [--backend auto|numpy|cpu|cuda] \\
        [--batch-size N] [--workers N] [--ray local|auto|ADDRESS] [--select index=10..20] [--checkpoint kept.note] \\
        [--report report.json] [--keystore tenant-keys.json (--kek-file F | --kek-env VAR)] [--replay-mismatched] \\
        [--json]
    kolm-audit diff A B [--json]        # two receipts (file or LOG#INDEX), two artifacts, or two replay reports

Exit codes: 0 everything matched / identical; 1 a finding (mismatch, bad signature, different); 2 bad input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from kolm_audit.cli import emit
from kolm_audit.errors import InputError
from kolm_audit.log.checkpoint import read_note_file
from kolm_audit.runtime.ops import BACKENDS

_PATH = click.Path(path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _policy(trust: Path | None, keys: tuple[Path, ...]) -> Any:
    from kolm_audit.trust import load_policy

    return load_policy(trust=trust, keys=keys, what="signatures (replay verifies them)")


def _keystore(keystore: Path | None, kek_file: Path | None, kek_env: str | None) -> tuple[Any, Any]:
    from kolm_audit.cli._options import open_keystore

    return open_keystore(keystore, kek_file=kek_file, kek_env=kek_env)


def write_report(report: dict[str, Any], path: Path) -> None:
    try:
        path.write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write report ({exc.strerror})", file=str(path)) from None


@click.command("replay")
@click.argument("log", type=_PATH)
@click.option("--artifact", type=_FILE, required=True, help="The .kolm artifact the receipts name.")
@click.option("--trust", type=_PATH, help="Trust policy (roles artifact, receipt, checkpoint).")
@click.option("--key", "keys", type=_PATH, multiple=True, help="A trusted public key (all roles); repeatable.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Receipts per forward pass (a speed choice only: results are batch-invariant).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes, or Ray actors with --ray (each loads the artifact once).")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Run the workers on Ray (extra kolm-audit[ray]): local (a local Ray of --workers CPUs), auto "
                   "(the running cluster, else local) or a cluster address. Results are the same bytes.")
@click.option("--select", "selects", multiple=True, metavar="FILTER",
              help="index=A..B | time=T1..T2 | tenant=NAME[,NAME] | id=RECEIPT_ID[,ID]; repeatable (AND).")
@click.option("--checkpoint", "checkpoint_file", type=_FILE, help="A checkpoint you kept; the log must extend it.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the replay report (kolm.replay-report/1) here.")
@click.option("--keystore", type=_FILE, help="Tenant key store, to open sealed ids and texts.")
@click.option("--kek-file", type=_FILE, help="Key-encryption key file for --keystore.")
@click.option("--kek-env", help="Env var holding the base64 key-encryption key for --keystore.")
@click.option("--replay-mismatched", is_flag=True,
              help="Also re-run receipts that name another artifact (shows which outputs the change affects).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def replay(log: Path, artifact: Path, trust: Path | None, keys: tuple[Path, ...], backend: str, batch_size: int,
           workers: int, ray_address: str | None, selects: tuple[str, ...], checkpoint_file: Path | None,
           report_path: Path | None, keystore: Path | None, kek_file: Path | None, kek_env: str | None,
           replay_mismatched: bool, as_json: bool) -> int:
    """Re-run every recorded decision of LOG (database or bundle) on ARTIFACT and prove it matches."""
    from tqdm import tqdm

    from kolm_audit.replay.engine import ReplayOptions
    from kolm_audit.replay.engine import replay as run_replay
    from kolm_audit.replay.report import summary_text
    from kolm_audit.replay.selection import Selection

    policy = _policy(trust, keys)
    store, kek = _keystore(keystore, kek_file, kek_env)
    options = ReplayOptions(backend=backend, batch_size=batch_size, workers=workers, selection=Selection.parse(selects),
                            supplied_checkpoint=None if checkpoint_file is None else read_note_file(checkpoint_file),
                            keystore=store, kek=kek, replay_mismatched=replay_mismatched, ray=ray_address)
    bar = tqdm(total=0, unit="receipt", desc="replay", disable=not sys.stderr.isatty() or as_json, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done)

    inputs = {"trust": str(trust) if trust is not None else ",".join(str(k) for k in keys),
              "checkpoint": None if checkpoint_file is None else str(checkpoint_file)}
    try:
        report = run_replay(log, artifact=artifact, policy=policy, options=options, progress=progress, inputs=inputs)
    finally:
        bar.close()
    if report_path is not None:
        write_report(report, report_path)
    text = summary_text(report)
    if report_path is not None:
        text += f"\n  report written to {report_path}"
    emit(report, as_json=as_json, text=text)
    return 0 if report["results"]["verdict"] == "matched" else 1


def _diff_text(doc: dict[str, Any]) -> str:
    d, kind = doc["details"], doc["kind"]
    lines = [f"{kind}s {'IDENTICAL' if doc['identical'] else 'DIFFERENT'}: {doc['a']}  vs  {doc['b']}"]
    if kind == "receipt":
        lines.append(f"  output digest a {d['output_digest']['a']}")
        lines.append(f"                b {d['output_digest']['b']}")
        fd = d["first_divergence"]
        if fd is not None:
            lines.append(f"  first divergent output token at position {fd['position']}: "
                         f"a {fd['a_token']} b {fd['b_token']}")
            lines.append(f"    a tokens @{fd['window_start']}: {fd['a_tokens']}")
            lines.append(f"    b tokens @{fd['window_start']}: {fd['b_tokens']}")
            if fd["a_text"] is not None:
                lines.append(f"    a text: {fd['a_text']!r}")
                lines.append(f"    b text: {fd['b_text']!r}")
        if d["label"] is not None:
            lines.append(f"  label: a {d['label']['a']}  b {d['label']['b']}")
        if d["scores"] is not None:
            s = d["scores"]
            lines.append(f"  scores: {s['differing']} differ, first at index {s['first_index']}, "
                         f"max |a-b| {s['max_abs_difference']}")
        lines.append(f"  {d['decision_fields']} decision field(s), {d['bookkeeping_fields']} bookkeeping "
                     "field(s) differ:")
        lines.extend(f"    {f['path']}: {f['a']} -> {f['b']}" for f in d["fields"][:40])
    elif kind == "artifact":
        lines.append(f"  digest a {d['a_digest']}\n         b {d['b_digest']}")
        lines.append(f"  manifest: {len(d['manifest'])} difference(s)")
        lines.extend(f"    {f['path']}: {f['a']} -> {f['b']}" for f in d["manifest"][:40])
        t = d["tensors"]
        lines.append(f"  tensors: {len(t['changed'])} changed, {t['unchanged']} unchanged, "
                     f"{len(t['only_in_a'])} only in a, {len(t['only_in_b'])} only in b")
        lines.extend(f"    - {n} (only in a)" for n in t["only_in_a"])
        lines.extend(f"    + {n} (only in b)" for n in t["only_in_b"])
        for c in t["changed"]:
            if c["differing"] is None:
                lines.append(f"    ~ {c['name']}: {c['a']['dtype']}{c['a']['shape']} -> "
                             f"{c['b']['dtype']}{c['b']['shape']}")
            else:
                lines.append(f"    ~ {c['name']}: {c['differing']}/{c['elements']} elements differ, max |a-b| "
                             f"{c['max_abs_difference']}, first at {c['first_index']} "
                             f"({c['a_value']} -> {c['b_value']})")
        if d["signers"]["a"] != d["signers"]["b"]:
            lines.append(f"  signed by a {d['signers']['a']}  b {d['signers']['b']}")
    else:
        lines.append(f"  verdict a {d['verdict']['a']}  b {d['verdict']['b']}; results digest a {d['a_results_digest']}"
                     f" b {d['b_results_digest']}")
        lines.append(f"  {d['receipts_changed']} receipt(s) changed status or digest")
        for r in d["receipts"][:20]:
            a, b = r["a"] or {}, r["b"] or {}
            lines.append(f"    #{r['index']}: {a.get('status')} {a.get('reasons')} -> "
                         f"{b.get('status')} {b.get('reasons')}")
        lines.append(f"  findings only in a: {len(d['findings']['only_in_a'])}, only in b: "
                     f"{len(d['findings']['only_in_b'])}")
        lines.extend(f"    {f['path']}: {f['a']} -> {f['b']}" for f in d["results"][:20])
        if d["environment"]:
            lines.append(f"  environment (informational): {len(d['environment'])} difference(s)")
            lines.extend(f"    {f['path']}: {f['a']} -> {f['b']}" for f in d["environment"][:20])
    return "\n".join(lines)


@click.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print the diff report as JSON.")
def diff(a: str, b: str, as_json: bool) -> int:
    """Explain how A and B differ: two receipts (file or LOG#INDEX), two artifacts, or two replay reports."""
    from kolm_audit.replay.diff import diff as run_diff

    doc = run_diff(a, b)
    emit(doc, as_json=as_json, text=_diff_text(doc))
    return 0 if doc["identical"] else 1
