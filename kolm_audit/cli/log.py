"""``kolm-audit log``: verify a receipt log or bundle, sign a checkpoint, prove a receipt, export a bundle.

    kolm-audit log verify receipts.db --trust trust.toml [--checkpoint kept.note] [--checkpoint-only] [--json]
    kolm-audit log checkpoint receipts.db --key log-key.pem
    kolm-audit log prove receipts.db --index 41 [--size 1000] [--json]
    kolm-audit log export receipts.db --out bundle/

Exit codes: 0 verified, 1 a finding (tampered leaf, bad signature, forked log), 2 bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kolm_audit.cli import emit
from kolm_audit.errors import InputError, LogError
from kolm_audit.keys import load_private_key
from kolm_audit.log import ReceiptLog, export_bundle, open_log_source, verify_log
from kolm_audit.log.checkpoint import parse_checkpoint, read_note_file
from kolm_audit.log.merkle import leaf_hash, verify_inclusion
from kolm_audit.log.verify import unanchored_text
from kolm_audit.schemas import validate
from kolm_audit.trust import TrustPolicy, load_policy

_PATH = click.Path(path_type=Path)


def _policy(trust: Path | None, keys: tuple[Path, ...]) -> TrustPolicy:
    return load_policy(trust=trust, keys=keys, what="checkpoint and receipt signatures")


@click.group("log")
def log() -> None:
    """The receipt log: verify, checkpoint, prove, export."""


@log.command("verify")
@click.argument("path", type=_PATH, metavar="LOG|BUNDLE")
@click.option("--checkpoint", "checkpoint_file", type=_PATH,
              help="A checkpoint you kept earlier; the log must extend it.")
@click.option("--trust", type=_PATH, help="Trust policy (role 'checkpoint' for checkpoints, 'receipt' for receipts).")
@click.option("--key", "keys", type=_PATH, multiple=True, help="A trusted public key (all roles); repeatable.")
@click.option("--checkpoint-only", is_flag=True, help="Tree and checkpoints only; skip receipt signatures.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes for receipt checks.")
@click.option("--require-checkpointed", is_flag=True,
              help="Receipts after the latest signed checkpoint are a finding (exit 1), not a warning.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(path: Path, checkpoint_file: Path | None, trust: Path | None, keys: tuple[Path, ...],
           checkpoint_only: bool, workers: int | None, require_checkpointed: bool, as_json: bool) -> int:
    """Verify LOG (database) or BUNDLE (exported directory): every leaf, the tree, every checkpoint."""
    policy = _policy(trust, keys)
    supplied = None if checkpoint_file is None else read_note_file(checkpoint_file)
    verify_leaf = None
    if not checkpoint_only:
        from kolm_audit.receipts.document import make_leaf_verifier

        verify_leaf = make_leaf_verifier(policy)
    report = verify_log(path, policy=policy, supplied_checkpoint=supplied, verify_leaf=verify_leaf, workers=workers,
                        progress=sys.stderr.isatty() and not as_json)
    doc = report.to_json()
    validate(doc, "log-verify-report")
    latest = report.checkpoints[-1] if report.checkpoints else None
    signed_by = ", ".join(s["name"] for s in latest["signers"]) if latest else "nobody"
    lines = [f"verified {report.kind} {report.source} ({report.origin}): {report.size} leaves, root {report.root_hex}",
             f"  {len(report.checkpoints)} checkpoint(s), latest at size {report.latest_checkpoint_size} "
             f"signed by {signed_by}; {report.unsigned_leaves} leaves after it",
             f"  mode {report.mode}: {report.leaves_rehashed} leaves rehashed, {report.nodes_checked} stored nodes, "
             f"{report.leaves_checked} receipts verified, {report.proofs_checked} bundle proofs"]
    if report.supplied_checkpoint is not None:
        lines.append(f"  the log extends your checkpoint at size {report.supplied_checkpoint['size']}")
    if require_checkpointed and report.unanchored is not None:
        raise LogError(unanchored_text(*report.unanchored), file=str(path), field="checkpoints",
                       expected=f"a signed checkpoint of size {report.size}",
                       actual=f"latest at size {report.latest_checkpoint_size}")
    lines.extend(f"  {note}" for note in report.notes)
    lines.extend(f"  warning: {w}" for w in report.warnings)
    emit(doc, as_json=as_json, text="\n".join(lines))
    return 0


@log.command("checkpoint")
@click.argument("path", type=_PATH, metavar="LOG")
@click.option("--key", "key_path", type=_PATH, required=True, help="Ed25519 private key of the log.")
@click.option("--passphrase-env", default=None, help="Env var holding the key's passphrase.")
@click.option("--json", "as_json", is_flag=True, help="Print the checkpoint as a kolm.checkpoint/1 document.")
def checkpoint(path: Path, key_path: Path, passphrase_env: str | None, as_json: bool) -> int:
    """Sign and store a checkpoint of LOG's current tree (refused if inconsistent with the last one)."""
    key = load_private_key(key_path, passphrase_env=passphrase_env)
    with ReceiptLog.open(path) as receipt_log:
        note = receipt_log.checkpoint(key)
    doc = parse_checkpoint(note).to_json()
    validate(doc, "checkpoint")
    if as_json:
        emit(doc, as_json=True)
    else:
        click.echo(note, nl=False)
    return 0


@log.command("prove")
@click.argument("path", type=_PATH, metavar="LOG")
@click.option("--index", type=click.IntRange(min=0), required=True)
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="Tree size (default: the latest checkpoint's size if it covers INDEX, else the current size).")
@click.option("--json", "as_json", is_flag=True, help="Print a kolm.inclusion-proof/1 document.")
def prove(path: Path, index: int, size: int | None, as_json: bool) -> int:
    """Print and verify the RFC 6962 inclusion proof of leaf --index in LOG (a receipt log database)."""
    if not path.is_file():
        raise InputError("no such receipt log", file=str(path))
    with ReceiptLog.open(path) as receipt_log:
        notes = {}
        for note in receipt_log.checkpoints():
            cp = parse_checkpoint(note, source=str(path)).checkpoint
            notes[cp.size] = (note, cp.root)
        if not 0 <= index < receipt_log.size():  # a question about a leaf that does not exist: bad usage
            raise InputError("no such leaf in this log", file=str(path), field="--index",
                             expected=f"0 <= index < {receipt_log.size()}", actual=str(index))
        if size is None:
            covering = [s for s in notes if s > index]
            size = max(covering) if covering else receipt_log.size()
        elif not index < size <= receipt_log.size():
            raise InputError("tree size out of range", file=str(path), field="--size",
                             expected=f"{index} < size <= {receipt_log.size()}", actual=str(size))
        proof = receipt_log.inclusion_proof(index, size)
        leaf = leaf_hash(receipt_log.leaf(index))
        root = receipt_log.root(size)
    note, signed_root = notes.get(size, (None, None))
    if signed_root is not None and signed_root != root:
        raise LogError("stored tree does not match the signed checkpoint", file=str(path), field=f"size {size}",
                       expected=signed_root.hex(), actual=root.hex())
    verify_inclusion(index=index, size=size, leaf=leaf, proof=proof, root=root)
    doc = {"schema": "kolm.inclusion-proof/1", "origin": receipt_log.origin, "index": index, "tree_size": size,
           "leaf_hash": leaf.hex(), "root_hash": root.hex(), "path": [p.hex() for p in proof], "verified": True,
           "checkpoint": note}
    validate(doc, "inclusion-proof")
    text = [f"leaf {index} is in the tree of size {size} (root {root.hex()}); proof verified (RFC 9162 §2.1.3.2)",
            f"leaf hash {leaf.hex()}", *(f"  {i}: {p.hex()}" for i, p in enumerate(proof))]
    text.append("signed checkpoint:\n" + note if note else "no signed checkpoint at this size")
    emit(doc, as_json=as_json, text="\n".join(text))
    return 0


@log.command("export")
@click.argument("path", type=_PATH, metavar="LOG")
@click.option("--out", "out_dir", type=_PATH, required=True, help="Bundle directory (must not exist or be empty).")
@click.option("--no-proofs", is_flag=True, help="Leave out proofs.json (inclusion proofs of every leaf).")
@click.option("--json", "as_json", is_flag=True, help='Print {"bundle": DIR, "size": N} as JSON.')
def export(path: Path, out_dir: Path, no_proofs: bool, as_json: bool) -> int:
    """Write a portable bundle of LOG: receipts.jsonl, checkpoints/, proofs.json, manifest.json."""
    with open_log_source(path) as src:
        out = export_bundle(src, out_dir, proofs=not no_proofs)
        size = src.size()
    emit({"bundle": str(out), "size": size}, as_json=as_json, text=f"exported {size} leaves to {out}")
    return 0
