"""``kolm-audit serve``: decisions over HTTP, one signed receipt each, durable before the answer (docs/serve.md).

    kolm-audit serve model.kolm --log receipts.db --key keys/receipt.pem --trust trust.toml \\
        [--host 127.0.0.1 --port 8080] [--tokens tokens.toml] [--tls-cert cert.pem --tls-key key.pem]
    kolm-audit serve tokens add --tokens tokens.toml --tenant acme --name scoring-svc   # prints the token once
    kolm-audit serve tokens list --tokens tokens.toml [--json]
    kolm-audit serve tokens revoke --tokens tokens.toml --name scoring-svc
    kolm-audit serve tokens hash < token.txt                                         # sha256:… of a token

The server runs in one process under uvicorn; it refuses to start (exit 1) when the log does not verify, the
artifact does not verify or its gate failed, or the trust file would not accept the receipts it would sign
(exit 2 for bad options or unreadable files). SIGTERM or Ctrl-C: stop accepting, finish every queued decision,
sign a checkpoint, exit 0.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import click

from kolm_audit.cli import emit
from kolm_audit.cli._options import kek_from_options
from kolm_audit.errors import InputError
from kolm_audit.runtime.ops import BACKENDS
from kolm_audit.serve.auth import TokenFile, new_token, token_hash

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_PATH = click.Path(dir_okay=False, path_type=Path)


class _DefaultStart(click.Group):
    """``kolm-audit serve MODEL …`` means ``kolm-audit serve start MODEL …``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group("serve", cls=_DefaultStart)
def serve() -> None:
    """Serve decisions over HTTP with a signed receipt each (kolm-audit serve MODEL --log … --key … --trust …)."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it every
    # response waits ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen ({exc.strerror})", field="--host/--port", actual=f"{host}:{port}") from None
    sock.set_inheritable(True)
    return sock


def _run_uvicorn(app: Any, sock: socket.socket, *, tls: tuple[Path, Path] | None, shutdown_timeout: int,
                 access_log: bool, log_level: str) -> None:
    import uvicorn

    config = uvicorn.Config(app, lifespan="on", log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=shutdown_timeout, timeout_keep_alive=5,
                            ssl_certfile=None if tls is None else str(tls[0]),
                            ssl_keyfile=None if tls is None else str(tls[1]), server_header=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; a no-op handler makes a graceful stop
    # (queue drained, checkpoint signed) exit 0 instead of dying by that signal.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise InputError("the HTTP server did not start (see the messages above)", field="--host/--port")


@serve.command("start")
@click.argument("artifact", type=_FILE)
@click.option("--log", "log_path", type=_PATH, required=True, help="Receipt log (SQLite), created if missing.")
@click.option("--key", "key_path", type=_FILE, required=True, help="Receipt signing key (PKCS#8 PEM).")
@click.option("--trust", type=_FILE, required=True,
              help="Trust policy: the artifact's signature, the log at start-up, and the receipts to be signed.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: any free port.")
@click.option("--tokens", type=_FILE, default=None, help="Bearer tokens per tenant (kolm-audit serve tokens add).")
@click.option("--tenant", default="default", show_default=True, help="Tenant of every receipt without --tokens.")
@click.option("--tls-cert", type=_FILE, default=None, help="TLS certificate chain (PEM); needs --tls-key.")
@click.option("--tls-key", type=_FILE, default=None, help="TLS private key (PEM).")
@click.option("--passphrase-env", help="Env var holding the passphrase of --key (and --checkpoint-key).")
@click.option("--checkpoint-key", type=_FILE, default=None, help="Ed25519 log key [default: --key].")
@click.option("--keystore", type=_FILE, default=None, help="Tenant key store (privacy mode per tenant).")
@click.option("--kek-file", type=_FILE, default=None, help="Key-encryption key file for --keystore.")
@click.option("--kek-env", default=None, help="Env var holding the base64 key-encryption key for --keystore.")
@click.option("--operator", default="kolm-audit-serve", show_default=True, help="Operator recorded in receipts.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Runtime threads [default: torch's].")
@click.option("--max-batch", type=click.IntRange(1, 100_000), default=32, show_default=True,
              help="Most decisions in one model run and one log transaction.")
@click.option("--max-wait-ms", type=click.IntRange(0, 60_000), default=2, show_default=True,
              help="How long a batch waits for company once one decision is queued.")
@click.option("--max-queue", type=click.IntRange(1, 10_000_000), default=1024, show_default=True,
              help="Most queued decisions; more are refused with 503 and Retry-After.")
@click.option("--queue-timeout", type=click.FloatRange(0.001, 3600), default=30.0, show_default=True,
              help="Seconds a request may wait without starting (then 503).")
@click.option("--max-body-bytes", type=click.IntRange(1024, 1 << 30), default=1 << 20, show_default=True)
@click.option("--body-timeout", type=click.FloatRange(0.001, 3600), default=30.0, show_default=True,
              help="Seconds to receive a request body (then 408).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Sign a checkpoint every N receipts.")
@click.option("--checkpoint-interval", type=click.FloatRange(0.001, 86_400), default=60.0, show_default=True,
              help="... and at most this many seconds after a receipt no checkpoint covers.")
@click.option("--verify-on-start", type=click.Choice(["full", "checkpoints"]), default="full", show_default=True,
              help="full: every receipt signature too; checkpoints: the tree and checkpoints only.")
@click.option("--shutdown-timeout", type=click.IntRange(1, 3600), default=60, show_default=True,
              help="Seconds to finish in-flight requests after SIGTERM.")
@click.option("--access-log", is_flag=True, help="Log every HTTP request (uvicorn's access log).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
def start(artifact: Path, log_path: Path, key_path: Path, trust: Path, host: str, port: int, tokens: Path | None,
          tenant: str, tls_cert: Path | None, tls_key: Path | None, passphrase_env: str | None,
          checkpoint_key: Path | None, keystore: Path | None, kek_file: Path | None, kek_env: str | None,
          operator: str, backend: str, threads: int | None, max_batch: int, max_wait_ms: int, max_queue: int,
          queue_timeout: float, max_body_bytes: int, body_timeout: float, checkpoint_every: int,
          checkpoint_interval: float, verify_on_start: str, shutdown_timeout: int, access_log: bool,
          log_level: str) -> int:
    """Serve ARTIFACT over HTTP; every decision is answered only after its signed receipt is durable in --log."""
    if (tls_cert is None) != (tls_key is None):
        raise InputError("TLS needs both a certificate and its key", field="--tls-cert/--tls-key")
    if tokens is None and not _loopback(host):
        raise InputError("refusing to serve without bearer tokens beyond this machine", field="--tokens",
                         expected="--tokens tokens.toml, or a loopback --host", actual=host)
    if tokens is not None and tenant != "default":
        raise InputError("--tenant is for serving without tokens; with --tokens each token names its tenant",
                         field="--tenant")
    kek = None
    if keystore is not None:
        kek = kek_from_options(kek_file=kek_file, kek_env=kek_env)
    elif kek_file is not None or kek_env is not None:
        raise InputError("--kek-file/--kek-env need --keystore", field="--keystore")

    from kolm_audit.serve.app import create_app
    from kolm_audit.serve.batcher import BatchLimits
    from kolm_audit.serve.service import ServeSettings, open_service

    settings = ServeSettings(operator=operator, limits=BatchLimits(max_batch=max_batch, max_wait_ms=max_wait_ms,
                                                                   max_queue=max_queue),
                             checkpoint_every=checkpoint_every, checkpoint_interval_s=checkpoint_interval,
                             max_body_bytes=max_body_bytes, body_timeout_s=body_timeout,
                             queue_timeout_s=queue_timeout, verify_on_start=verify_on_start)
    service = open_service(artifact=artifact, log=log_path, key=key_path, trust=trust, tokens=tokens, tenant=tenant,
                           checkpoint_key=checkpoint_key, keystore=keystore, kek=kek, backend=backend,
                           threads=threads, passphrase_env=passphrase_env, settings=settings)
    app = create_app(service=service)
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    scheme = "https" if tls_cert is not None else "http"
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"kolm-audit: serving {service.name} ({service.model.digest}, {service.task}) on "
               f"{scheme}://{shown}:{bound} for tenant(s) {', '.join(service.tenants)}; log {log_path}", err=True)
    _run_uvicorn(app, sock, tls=None if tls_cert is None or tls_key is None else (tls_cert, tls_key),
                 shutdown_timeout=shutdown_timeout, access_log=access_log, log_level=log_level)
    from kolm_audit.log.checkpoint import parse_checkpoint
    from kolm_audit.log.db import ReceiptLog

    with ReceiptLog.open(log_path) as log:
        size, note = log.size(), log.latest_checkpoint()
    signed = 0 if note is None else parse_checkpoint(note).checkpoint.size
    click.echo(f"kolm-audit: stopped; log {log_path} has {size} receipts, latest checkpoint at size {signed}",
               err=True)
    return 0


@serve.group("tokens")
def tokens_group() -> None:
    """Bearer tokens per tenant: the tokens file keeps only their SHA-256."""


def _load_or_empty(path: Path) -> TokenFile:
    return TokenFile.load(path) if path.exists() else TokenFile.empty()


@tokens_group.command("add")
@click.option("--tokens", "path", type=_PATH, required=True, help="Tokens file (created if missing).")
@click.option("--tenant", required=True, help="The only tenant the token may act for.")
@click.option("--name", required=True, help="Who holds the token (unique in the file).")
@click.option("--json", "as_json", is_flag=True)
def tokens_add(path: Path, tenant: str, name: str, as_json: bool) -> int:
    """Make a new token for TENANT; print it once (the file keeps only its hash)."""
    token = new_token()
    _load_or_empty(path).with_token(name=name, tenant=tenant, token=token).write(path)
    emit({"tokens": str(path), "name": name, "tenant": tenant, "token": token, "hash": token_hash(token)},
         as_json=as_json, text=token)
    if not as_json:
        click.echo(f"kolm-audit: added token '{name}' for tenant '{tenant}' to {path}; the token above is shown "
                   "only now (the file keeps its SHA-256); restart the server to use it", err=True)
    return 0


@tokens_group.command("list")
@click.option("--tokens", "path", type=_FILE, required=True)
@click.option("--json", "as_json", is_flag=True)
def tokens_list(path: Path, as_json: bool) -> int:
    """Names and tenants of the tokens in the file."""
    entries = TokenFile.load(path).entries
    emit({"tokens": str(path), "entries": [{"name": e.name, "tenant": e.tenant, "hash": e.hash} for e in entries]},
         as_json=as_json, text="\n".join(f"{e.name}\t{e.tenant}" for e in entries) or "(no tokens)")
    return 0


@tokens_group.command("revoke")
@click.option("--tokens", "path", type=_FILE, required=True)
@click.option("--name", required=True, help="The token to remove.")
def tokens_revoke(path: Path, name: str) -> int:
    """Remove a token from the file (a running server keeps the tokens it started with: restart it)."""
    tokens = TokenFile.load(path)
    kept = tuple(e for e in tokens.entries if e.name != name)
    if len(kept) == len(tokens.entries):
        raise InputError("no token with this name", file=str(path), field="--name", actual=name)
    TokenFile(entries=kept, source=tokens.source).write(path)
    click.echo(f"kolm-audit: revoked token '{name}' in {path}; restart the server to apply", err=True)
    return 0


@tokens_group.command("hash")
def tokens_hash() -> int:
    """Print the sha256:… of a token read from stdin (for writing a tokens file by hand)."""
    token = sys.stdin.readline().strip()
    if not token:
        raise InputError("no token on standard input", field="stdin")
    click.echo(token_hash(token))
    return 0
