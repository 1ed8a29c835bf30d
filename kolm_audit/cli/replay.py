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

from kolm_audit._atomic import write_atomic
from kolm_audit.cli import emit
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
    data = (json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    write_atomic(path, data, what="report")


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
@click.option("--require-checkpointed", is_flag=True,
              help="Receipts after the latest signed checkpoint are a finding (exit 1), not a warning.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def replay(log: Path, artifact: Path, trust: Path | None, keys: tuple[Path, ...], backend: str, batch_size: int,
           workers: int, ray_address: str | None, selects: tuple[str, ...], checkpoint_file: Path | None,
           report_path: Path | None, keystore: Path | None, kek_file: Path | None, kek_env: str | None,
           replay_mismatched: bool, require_checkpointed: bool, as_json: bool) -> int:
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
                            keystore=store, kek=kek, replay_mismatched=replay_mismatched, ray=ray_address,
                            require_checkpointed=require_checkpointed)
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


def _shown(value: Any) -> str:
    """A JSON-text value of a diff for people: ``(absent)`` instead of ``None``."""
    return "(absent)" if value is None else str(value)


def _paths(title: str, diffs: list[dict[str, Any]], limit: int) -> list[str]:
    if not diffs:
        return []
    lines = [f"  {title}:"]
    lines.extend(f"    {f['path']}: {_shown(f['a'])} -> {_shown(f['b'])}" for f in diffs[:limit])
    if len(diffs) > limit:
        lines.append(f"    ... {len(diffs) - limit} more (see --json)")
    return lines


def _receipt_text(d: dict[str, Any], identical: bool) -> list[str]:
    lines = [f"  output digest a {_shown(d['output_digest']['a'])}",
             f"                b {_shown(d['output_digest']['b'])}"]
    if identical:
        return lines
    fd = d["first_divergence"]
    if fd is not None:
        lines.append(f"  first divergent output token at position {fd['position']}: "
                     f"a {_shown(fd['a_token'])} b {_shown(fd['b_token'])}")
        lines.append(f"    a tokens @{fd['window_start']}: {fd['a_tokens']}")
        lines.append(f"    b tokens @{fd['window_start']}: {fd['b_tokens']}")
        if fd["a_text"] is not None:
            lines.append(f"    a text: {fd['a_text']!r}")
            lines.append(f"    b text: {fd['b_text']!r}")
    if d["label"] is not None:
        lines.append(f"  label: a {_shown(d['label']['a'])}  b {_shown(d['label']['b'])}")
    if d["scores"] is not None:
        s = d["scores"]
        lines.append(f"  scores: {s['differing']} differ, first at index {s['first_index']}, "
                     f"max |a-b| {s['max_abs_difference']}")
    title = (f"{d['decision_fields']} decision field(s) and {d['bookkeeping_fields']} bookkeeping field(s) "
             "differ")
    return lines + _paths(title, d["fields"], 40)


def _integrity_line(side: str, info: dict[str, Any]) -> str:
    if info["tensors_verified"]:
        return f"  {side}: every tensor matches its manifest digest (file {info['file_digest']})"
    return (f"  {side}: TAMPERED: {len(info['tampered_tensors'])} tensor(s) do not match its own manifest: "
            + ", ".join(info["tampered_tensors"][:10]))


def _artifact_text(d: dict[str, Any]) -> list[str]:
    lines = [f"  digest a {d['a_digest']}", f"         b {d['b_digest']}",
             _integrity_line("a", d["integrity"]["a"]), _integrity_line("b", d["integrity"]["b"])]
    lines += _paths(f"manifest: {len(d['manifest'])} difference(s)", d["manifest"], 40)
    t = d["tensors"]
    if t["changed"] or t["only_in_a"] or t["only_in_b"]:
        lines.append(f"  tensors: {len(t['changed'])} changed, {t['unchanged']} unchanged, "
                     f"{len(t['only_in_a'])} only in a, {len(t['only_in_b'])} only in b")
    lines.extend(f"    - {n} (only in a)" for n in t["only_in_a"])
    lines.extend(f"    + {n} (only in b)" for n in t["only_in_b"])
    for c in t["changed"]:
        if c["differing"] is None:
            lines.append(f"    ~ {c['name']}: {c['a']['dtype']}{c['a']['shape']} -> {c['b']['dtype']}{c['b']['shape']}")
        else:
            lines.append(f"    ~ {c['name']}: {c['differing']}/{c['elements']} elements differ, max |a-b| "
                         f"{c['max_abs_difference']}, first at {c['first_index']} ({c['a_value']} -> {c['b_value']})")
    if d["signers"]["a"] != d["signers"]["b"]:
        lines.append(f"  signed by a {d['signers']['a'] or 'nobody'}  b {d['signers']['b'] or 'nobody'}")
    return lines


def _row_change(row: dict[str, Any]) -> str:
    a, b = row["a"], row["b"]
    if a is None or b is None:
        return f"    #{row['index']}: only in {'b' if a is None else 'a'}"
    keys = [k for k in ("status", "reasons", "expected_digest", "actual_digest", "replayed", "receipt_id", "tenant",
                        "task") if a.get(k) != b.get(k)]
    return f"    #{row['index']}: " + "; ".join(f"{k} {_shown(a.get(k))} -> {_shown(b.get(k))}" for k in keys)


def _report_text(d: dict[str, Any]) -> list[str]:
    lines = [f"  verdict a {d['verdict']['a']}  b {d['verdict']['b']}",
             f"  results digest a {d['a_results_digest']}", f"                 b {d['b_results_digest']}"]
    if d["receipts_changed"]:
        lines.append(f"  {d['receipts_changed']} receipt line(s) differ:")
        lines.extend(_row_change(r) for r in d["receipts"][:20])
    only_a, only_b = d["findings"]["only_in_a"], d["findings"]["only_in_b"]
    if only_a or only_b:
        lines.append(f"  findings only in a: {len(only_a)}, only in b: {len(only_b)}")
    lines += _paths("other results fields that differ", d["results"], 20)
    lines += _paths(f"environment (informational): {len(d['environment'])} difference(s)", d["environment"], 20)
    return lines


def _diff_text(doc: dict[str, Any]) -> str:
    d, kind = doc["details"], doc["kind"]
    lines = [f"{kind}s {'IDENTICAL' if doc['identical'] else 'DIFFERENT'}: {doc['a']}  vs  {doc['b']}"]
    if kind == "receipt":
        lines += _receipt_text(d, doc["identical"])
    elif kind == "artifact":
        lines += _artifact_text(d)
    else:
        lines += _report_text(d)
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
