"""``kolm-audit run``: serve a JSONL file of requests through a verified artifact, one signed receipt per decision.

    kolm-audit run model.kolm --input in.jsonl --log receipts.db --key receipt.pem --trust trust.toml \\
        [--tenant T] [--operator NAME] [--backend auto|numpy|cpu|cuda] [--batch-size N] \\
        [--checkpoint-every N] [--checkpoint-key log.pem] [--out outputs.jsonl] [--on-error skip|stop] \\
        [--keystore tenant-keys.json (--kek-file F | --kek-env VAR)] [--json]

The artifact is verified first (signature by a trusted ``artifact`` key; a failed K-score gate is refused).
Each input line (schema ``run-input``) is ``{"text": ...}`` or ``{"ids": [...]}`` with an optional ``id``,
``caller`` and, for generators, decoding parameters; a blank line or an empty (whitespace-only) text is a bad
line, and a repeated ``id`` is recorded again with a warning. Each batch's receipts are appended in one durable
transaction; outputs (schema ``run-output``) are written in input order; a checkpoint is signed every N
receipts and at the end. A malformed line is reported with its line number and skipped (exit 2 at the end), or
stops the run (``--on-error stop``, exit 2) — in both cases every receipt appended so far stays in the log and is
checkpointed.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from kolm_audit.artifact.manifest import gate_failed
from kolm_audit.canonical import loads_strict
from kolm_audit.cli import emit
from kolm_audit.cli._options import open_keystore
from kolm_audit.errors import GateFailed, InputError, KolmError, RuntimeInputError, TrustError
from kolm_audit.keys import PrivateKey, load_private_key
from kolm_audit.log.checkpoint import require_note_key
from kolm_audit.receipts.document import Decoding
from kolm_audit.receipts.privacy import KeyStore, TenantCrypto
from kolm_audit.receipts.recorder import Recorded, Recorder, Request
from kolm_audit.runtime.ops import BACKENDS
from kolm_audit.schemas import validate

RUN_REPORT_SCHEMA = "kolm.run-report/1"
_DECODING_FIELDS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")
_PATH = click.Path(dir_okay=False, path_type=Path)


@dataclass(frozen=True)
class _Line:
    number: int
    request: Request


@dataclass(frozen=True)
class _Bad:
    number: int
    id: str | None
    error: KolmError


def _default_operator() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _parse_line(raw: bytes, number: int, *, source: str, task: str, max_new_tokens: int) -> _Line | _Bad:
    where = f"line {number}"
    doc: Any = None
    try:
        if not raw.strip():
            raise InputError("blank line: every input line is one request", file=source, field=where,
                             expected='a JSON object such as {"text": "..."}')
        doc = loads_strict(raw, file=source, field=where, error=InputError)
        validate(doc, "run-input", source=source, error=InputError)
        decoding = None
        params = {k: doc[k] for k in _DECODING_FIELDS if k in doc}
        if task == "generate":
            decoding = Decoding(**{"max_new_tokens": max_new_tokens, **params})
        elif params:
            raise InputError(f"decoding parameters apply to generate only; this artifact does {task}",
                             file=source, field=f"{where}: {sorted(params)[0]}")
        ids = doc.get("ids")
        return _Line(number, Request(text=doc.get("text"), ids=None if ids is None else tuple(ids), id=doc.get("id"),
                                     caller=doc.get("caller"), decoding=decoding))
    except KolmError as exc:
        if exc.file is None:
            exc.file = source
        if not (exc.field or "").startswith(where):
            exc.field = f"{where}: {exc.field}" if exc.field else where
        exc.args = (str(exc),)
        rid = doc.get("id") if isinstance(doc, dict) and isinstance(doc.get("id"), str) else None
        return _Bad(number, rid, exc)


def _read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as fh:
            yield from enumerate(fh, start=1)
    except OSError as exc:
        raise InputError(f"cannot read input ({exc.strerror})", file=str(path)) from None


def _output(line: _Line, rec: Recorded, task: str) -> dict[str, Any]:
    res = rec.result
    out: dict[str, Any] = {"line": line.number, "id": line.request.id, "task": task, "log_index": rec.log_index,
                           "receipt_id": rec.receipt_id, "input_ids": [int(i) for i in res.input_ids],
                           "input_digest": res.input_digest, "output_digest": res.output_digest}
    if task == "embed":
        out["embedding"] = [int(v) for v in res.embedding.reshape(-1).tolist()]
    elif task == "classify":
        out.update(label=str(res.label), scores=[int(s) for s in res.scores])
    else:
        out.update(output_ids=[int(i) for i in res.output_ids], text=res.text, finish_reason=str(res.finish_reason))
    return out


class _Runner:
    """Batches lines, records them, writes outputs in order, isolates requests the runtime refuses."""

    def __init__(self, recorder: Recorder, out: IO[str], *, stop_on_error: bool, source: str) -> None:
        self.recorder = recorder
        self.out = out
        self.stop_on_error = stop_on_error
        self.source = source
        self.bad: list[_Bad] = []
        self.indices: list[int] = []
        self.stopped: _Bad | None = None
        self.seen_ids: dict[str, int] = {}      # request id -> first line that used it

    def note_id(self, line: _Line) -> None:
        """Warn when a request id repeats: both are recorded, as separate decisions (docs/run.md)."""
        rid = line.request.id
        if rid is None:
            return
        if rid in self.seen_ids:
            click.echo(f"kolm-audit: warning: {self.source}: line {line.number}: request id {rid!r} was already used "
                       f"at line {self.seen_ids[rid]}; both are recorded as separate decisions", err=True)
        else:
            self.seen_ids[rid] = line.number

    def _write(self, doc: dict[str, Any]) -> None:
        self.out.write(json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n")

    def skip(self, bad: _Bad) -> None:
        self.bad.append(bad)
        click.echo(f"kolm-audit: {'stopping at' if self.stop_on_error else 'skipping'} {bad.error}", err=True)
        self._write({"line": bad.number, "id": bad.id, "error": bad.error.to_json()})
        if self.stop_on_error:
            self.stopped = bad

    def run(self, batch: list[_Line]) -> None:
        try:
            done = self.recorder.record([line.request for line in batch])
        except RuntimeInputError:
            done = None
        if done is not None:
            for line, rec in zip(batch, done, strict=True):
                self.indices.append(rec.log_index)
                self._write(_output(line, rec, self.recorder.task))
            self.out.flush()
            return
        for line in batch:  # the runtime refused something in this batch: find it, keep the rest
            try:
                [rec] = self.recorder.record([line.request])
            except RuntimeInputError as exc:
                exc.file = exc.file or self.source
                if exc.field and exc.field.startswith("inputs[0]"):     # the line's input (request 0 of its call)
                    exc.field = ("$.text" if line.request.text is not None else "$.ids") + exc.field[len("inputs[0]"):]
                exc.field = f"line {line.number}" + (f": {exc.field}" if exc.field else "")
                exc.args = (str(exc),)
                self.skip(_Bad(line.number, line.request.id, exc))
                if self.stopped:
                    break
                continue
            self.indices.append(rec.log_index)
            self._write(_output(line, rec, self.recorder.task))
        self.out.flush()


def _open_out(path: Path) -> IO[str]:
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write outputs ({exc.strerror})", file=str(path), field="--out") from None


DEFAULT_KEYSTORE = "tenant-keys.json"     # the name docs/privacy.md and the README use


def _unused_keystore(tenant: str, log_path: Path) -> None:
    """Warn when no --keystore is given but a key store beside the log (or here) would seal this tenant's texts."""
    for candidate in dict.fromkeys((log_path.parent / DEFAULT_KEYSTORE, Path(DEFAULT_KEYSTORE))):
        if not candidate.is_file():
            continue
        try:
            store = KeyStore.load(candidate)
        except KolmError:
            continue
        mode = store.mode(tenant) if tenant in store.tenants else None
        if mode is not None and mode != "clear":
            click.echo(f"kolm-audit: warning: tenant {tenant!r} has a key store entry in {candidate} (mode {mode}) "
                       "but no --keystore was given: its texts are recorded in clear", err=True)
            return


def _privacy(tenant: str, keystore: Path | None, kek_file: Path | None, kek_env: str | None,
             log_path: Path) -> TenantCrypto | None:
    store, kek = open_keystore(keystore, kek_file=kek_file, kek_env=kek_env)
    if store is None:
        _unused_keystore(tenant, log_path)
        return None
    return store.tenant(tenant, kek=kek)


def _checkpoint_key(key: PrivateKey, path: Path | None, passphrase_env: str | None) -> PrivateKey:
    ckey = key if path is None else load_private_key(path, passphrase_env=passphrase_env)
    return require_note_key(ckey, field="--checkpoint-key (default: --key)")


def _warn_untrusted(trust: Path, key: PrivateKey, ckey: PrivateKey, tenant: str) -> None:
    """Say so early when the trust file would not accept the receipts or checkpoints about to be signed."""
    from kolm_audit.timefmt import now
    from kolm_audit.trust import TrustPolicy

    policy = TrustPolicy.load(trust)
    for role, k in (("receipt", key), ("checkpoint", ckey)):
        trusted = policy.find(k.key_id)
        try:
            if trusted is None:
                raise TrustError("key is not in the trust file", field=k.key_id)
            trusted.authorize(role=role, tenant=tenant if role == "receipt" else None, at=now())
        except TrustError as exc:
            click.echo(f"kolm-audit: warning: {role}s signed now will not verify under {trust}: {exc}", err=True)


@click.command("run")
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="JSONL requests (schema run-input).")
@click.option("--log", "log_path", type=_PATH, required=True, help="Receipt log (SQLite), created if missing.")
@click.option("--key", "key_path", type=_PATH, required=True, help="Receipt signing key (PKCS#8 PEM).")
@click.option("--passphrase-env", help="Env var holding the passphrase of --key (and --checkpoint-key).")
@click.option("--trust", type=_PATH, help="Trust policy the artifact signature must satisfy.")
@click.option("--artifact-key", type=_PATH, help="Public key the artifact must be signed by (instead of --trust).")
@click.option("--tenant", default="default", show_default=True, help="Tenant recorded in every receipt.")
@click.option("--operator", default=None, help="Operator recorded in every receipt [default: the OS user].")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="Sign a checkpoint every N receipts.")
@click.option("--checkpoint-key", type=_PATH, default=None, help="Ed25519 log key [default: --key].")
@click.option("--out", "out_path", type=_PATH, default=None, help="Outputs JSONL [default: stdout].")
@click.option("--on-error", type=click.Choice(["skip", "stop"]), default="skip", show_default=True,
              help="What a malformed or refused input line does.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Default for generate lines that do not set their own.")
@click.option("--keystore", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Tenant key store (privacy mode, data keys, salt).")
@click.option("--kek-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Key-encryption key file for --keystore.")
@click.option("--kek-env", default=None, help="Env var holding the base64 key-encryption key for --keystore.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable run report.")
def run(artifact: Path, input_path: Path, log_path: Path, key_path: Path, passphrase_env: str | None,
        trust: Path | None, artifact_key: Path | None, tenant: str, operator: str | None, backend: str,
        batch_size: int, checkpoint_every: int | None, checkpoint_key: Path | None, out_path: Path | None,
        on_error: str, max_new_tokens: int, keystore: Path | None, kek_file: Path | None, kek_env: str | None,
        as_json: bool) -> int:
    """Run requests through a verified artifact and record one signed receipt per decision."""
    if (trust is None) == (artifact_key is None):
        raise InputError("the artifact must be verified before it runs", field="--trust/--artifact-key",
                         expected="exactly one of --trust trust.toml or --artifact-key PUB")
    key = load_private_key(key_path, passphrase_env=passphrase_env)
    ckey = _checkpoint_key(key, checkpoint_key, passphrase_env)
    crypto = _privacy(tenant, keystore, kek_file, kek_env, log_path)
    if trust is not None:
        _warn_untrusted(trust, key, ckey, tenant)

    import kolm_audit.model as kmodel
    from kolm_audit.log import ReceiptLog

    model = kmodel.load(artifact, trust=trust, key=artifact_key, backend=backend)
    kscore = model.manifest.get("kscore")
    if gate_failed(kscore):
        raise GateFailed("the artifact's K-score gate failed; refusing to serve it", file=str(artifact),
                         field="manifest.kscore", actual=json.dumps(kscore, sort_keys=True)[:200])
    task = model.manifest["task"]["kind"]
    source = str(input_path)
    with ExitStack() as stack:
        out = sys.stdout if out_path is None else stack.enter_context(_open_out(out_path))
        log = stack.enter_context(ReceiptLog.open(log_path, create=True))
        recorder = Recorder(model, log, key, tenant=tenant, operator=operator or _default_operator(), privacy=crypto,
                            checkpoint_key=ckey, checkpoint_every=checkpoint_every)
        runner = _Runner(recorder, out, stop_on_error=on_error == "stop", source=source)
        total = sum(1 for _ in _read_lines(input_path))
        from tqdm import tqdm

        bar = stack.enter_context(tqdm(total=total, unit="req", disable=not sys.stderr.isatty() or as_json,
                                       file=sys.stderr))
        batch: list[_Line] = []
        try:
            for number, raw in _read_lines(input_path):
                parsed = _parse_line(raw, number, source=source, task=task, max_new_tokens=max_new_tokens)
                bar.update(1)
                if isinstance(parsed, _Bad):
                    runner.run(batch)  # lines before the bad one are recorded first: order is kept
                    batch = []
                    runner.skip(parsed)
                    if runner.stopped:
                        break
                    continue
                runner.note_id(parsed)
                batch.append(parsed)
                if len(batch) >= batch_size:
                    runner.run(batch)
                    batch = []
                    if runner.stopped:
                        break
            if batch and not runner.stopped:
                runner.run(batch)
        finally:
            recorder.close()  # checkpoint whatever was appended, even when stopping on an error
        size = log.size()
    report = {"schema": RUN_REPORT_SCHEMA, "artifact": str(artifact), "artifact_digest": model.digest,
              "task": task, "tenant": tenant, "backend": str(model.backend), "log": str(log_path),
              "log_size": size, "recorded": len(runner.indices),
              "first_index": min(runner.indices) if runner.indices else None,
              "last_index": max(runner.indices) if runner.indices else None,
              "privacy": "clear" if crypto is None else crypto.mode,
              "skipped": [{"line": b.number, "error": b.error.to_json()} for b in runner.bad],
              "stopped": runner.stopped is not None, "outputs": None if out_path is None else str(out_path)}
    validate(report, "run-report")
    text = (f"recorded {report['recorded']} decisions of {model.digest} in {log_path} (log size {size}"
            f"{', checkpoint signed' if runner.indices else ''}); {len(runner.bad)} line(s) "
            f"{'stopped the run' if runner.stopped else 'skipped'}")
    if out_path is None:  # stdout carries the outputs: the report goes to stderr
        click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else text, err=True)
    else:
        emit(report, as_json=as_json, text=text)
    if runner.stopped is not None:  # exit 2 (bad input) without a second JSON document on stdout
        click.echo(f"kolm-audit: error: run stopped at {runner.stopped.error}; {report['recorded']} receipts "
                   "recorded and checkpointed", err=True)
        return InputError.exit_code
    if runner.bad:  # every good line is recorded; the skipped ones still make the input bad (exit 2)
        click.echo(f"kolm-audit: error: {len(runner.bad)} input line(s) skipped (see above); "
                   f"{report['recorded']} receipts recorded and checkpointed", err=True)
        return InputError.exit_code
    return 0
