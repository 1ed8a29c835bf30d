"""``kolm-audit serve`` life cycle on a real uvicorn: SIGTERM under load drains and checkpoints (exit 0), SIGKILL
under load loses no acknowledged receipt, a full queue answers 503 with Retry-After, and start-up refuses a log
that does not verify or keys the trust file would not accept."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("transformers")
pytest.importorskip("uvicorn")

from _cli_fixtures import cli as _cli
from _serve_fixtures import Server, World, build_world, cli_command

from kolm_audit.canonical import jcs
from kolm_audit.log.checkpoint import parse_checkpoint
from kolm_audit.log.db import ReceiptLog
from kolm_audit.serve.auth import TokenFile, token_hash

TEXTS = ["approve the loan", "deny the claim", "hello world", "is this spam?", "the quick brown fox"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("serve-life"), ("classify",))


class Load:
    """Closed-loop clients posting decisions until stopped or the server goes away (bounded: ``limit`` each)."""

    def __init__(self, server: Server, world: World, *, clients: int = 8, limit: int = 400) -> None:
        self.acked: list[dict] = []
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(server, world, c, limit), daemon=True)
                         for c in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, server: Server, world: World, c: int, limit: int) -> None:
        tenant = ("acme", "globex")[c % 2]
        with server.client() as client:
            for i in range(limit):
                if self.stop.is_set():
                    return
                try:
                    resp = client.post("/v1/decisions", json={"text": TEXTS[i % len(TEXTS)], "id": f"{c}-{i}"},
                                       headers=world.headers(tenant))
                except httpx.TransportError:
                    return                  # the server went away
                self.statuses.append(resp.status_code)
                if resp.status_code == 200:
                    self.acked.append({**resp.json(), "_tenant": tenant})

    def wait_for(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.acked) >= n, f"only {len(self.acked)} decisions acknowledged"

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)


def _assert_all_acknowledged_in_log(log_path, acked: list[dict]) -> int:
    with ReceiptLog.open(log_path) as log:
        for doc in acked:
            assert log.leaf(doc["log_index"]) == jcs(doc["receipt"])
        return log.size()


def test_sigterm_stops_intake_drains_checkpoints_and_exits_0(world, tmp_path, capsys):
    log_path = tmp_path / "r.db"
    server = Server(world, log_path, extra=("--checkpoint-every", 1_000_000, "--checkpoint-interval", 3600))
    load = Load(server, world)
    load.wait_for(30)
    code = server.terminate()
    load.join()
    assert code == 0, server.stderr
    assert set(load.statuses) <= {200, 503}
    size = _assert_all_acknowledged_in_log(log_path, load.acked)
    with ReceiptLog.open(log_path) as log:
        assert parse_checkpoint(log.latest_checkpoint()).checkpoint.size == size   # the final checkpoint
    code, out, err = _cli(capsys, "log", "verify", log_path, "--trust", world.trust, "--json")
    assert code == 0, err
    assert json.loads(out)["leaves_checked"] == size


def test_sigkill_mid_load_loses_no_acknowledged_receipt(world, tmp_path, capsys):
    log_path = tmp_path / "r.db"
    server = Server(world, log_path)
    load = Load(server, world)
    load.wait_for(40)
    server.kill()                                     # SIGKILL: no drain, no final checkpoint
    load.join()
    assert server.proc.returncode == -9
    acked = list(load.acked)
    with Server(world, log_path) as again, again.client() as client:   # verifies the log, checkpoints the tail
        for doc in acked:
            resp = client.get(f"/v1/receipts/{doc['receipt_id']}", headers=world.headers(doc["_tenant"]))
            assert resp.status_code == 200 and resp.json()["log_index"] == doc["log_index"]
            assert resp.json()["envelope"] == doc["receipt"]
    size = _assert_all_acknowledged_in_log(log_path, acked)
    code, out, err = _cli(capsys, "log", "verify", log_path, "--trust", world.trust, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["leaves_checked"] == report["latest_checkpoint_size"] == size >= len(acked)


def test_a_full_queue_is_refused_with_503_and_retry_after(world, tmp_path):
    log_path = tmp_path / "r.db"
    with Server(world, log_path, extra=("--max-queue", 1, "--max-batch", 1, "--max-wait-ms", 0)) as server:
        refused: list[httpx.Response] = []
        acked: list[dict] = []
        for _ in range(8):                            # bounded rounds of 24 simultaneous requests
            barrier = threading.Barrier(24)

            def one(i: int, barrier: threading.Barrier = barrier) -> None:
                with server.client() as client:
                    barrier.wait()
                    resp = client.post("/v1/decisions", json={"text": TEXTS[i % len(TEXTS)]},
                                       headers=world.headers("acme"))
                (acked.append(resp.json()) if resp.status_code == 200 else refused.append(resp))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            if refused:
                break
        assert refused, "the queue never filled"
        for resp in refused:
            assert resp.status_code == 503
            assert int(resp.headers["Retry-After"]) >= 1
            problem = resp.json()
            assert problem["type"].endswith("/overloaded") and problem["retry_after"] >= 1
    _assert_all_acknowledged_in_log(log_path, acked)


def _serve_exit(world: World, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command("serve", world.artifacts["classify"], "--key", world.receipt_key,
                                      "--trust", world.trust, "--port", 0, "--backend", "numpy", *args),
                          capture_output=True, text=True, timeout=180)


def test_a_log_that_fails_verification_refuses_to_start(world, tmp_path):
    log_path = tmp_path / "r.db"
    with Server(world, log_path) as server, server.client() as client:
        for text in TEXTS:
            assert client.post("/v1/decisions", json={"text": text}, headers=world.headers("acme")).status_code == 200
    tampered = tmp_path / "tampered.db"
    shutil.copy(log_path, tampered)
    conn = sqlite3.connect(tampered)
    conn.execute("DROP TRIGGER leaves_no_update")
    [data] = conn.execute("SELECT data FROM leaves WHERE idx = 2").fetchone()
    conn.execute("UPDATE leaves SET data = ? WHERE idx = 2", (bytes(data).replace(b"kolm.receipt", b"kolm.reciept"),))
    conn.commit()
    conn.close()
    done = _serve_exit(world, "--log", tampered, "--tokens", world.tokens)
    assert done.returncode == 1, done.stderr
    assert "refusing to start" in done.stderr and "leaf 2" in done.stderr and "Traceback" not in done.stderr


def test_start_up_refuses_what_would_not_verify_later(world, tmp_path):
    other = TokenFile.empty().with_token(name="x", tenant="initech", token="kolm_x" * 8)
    other.write(tmp_path / "initech.toml")
    done = _serve_exit(world, "--log", tmp_path / "r.db", "--tokens", tmp_path / "initech.toml")
    assert done.returncode == 1 and "tenant 'initech'" in done.stderr          # trust file: not for this tenant
    assert not (tmp_path / "r.db").exists()                                     # nothing written
    TokenFile.empty().write(tmp_path / "empty.toml")
    for args, needle in ((("--tokens", tmp_path / "empty.toml"), "lists no token"),
                         (("--host", "0.0.0.0"), "--tokens"),
                         (("--tokens", world.tokens, "--tls-cert", world.trust), "--tls-cert/--tls-key")):
        done = _serve_exit(world, "--log", tmp_path / "r.db", *args)
        assert done.returncode == 2 and needle in done.stderr, done.stderr


def test_tokens_add_list_revoke_and_hash(tmp_path, capsys, monkeypatch):
    path = tmp_path / "tokens.toml"
    code, token, _ = _cli(capsys, "serve", "tokens", "add", "--tokens", path, "--tenant", "acme", "--name", "svc")
    token = token.strip()
    assert code == 0 and token.startswith("kolm_") and token not in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert TokenFile.load(path).authenticate(f"Bearer {token}").tenant == "acme"
    code, out, _ = _cli(capsys, "serve", "tokens", "add", "--tokens", path, "--tenant", "globex", "--name", "svc")
    assert code == 2                                                            # names are unique
    code, out, _ = _cli(capsys, "serve", "tokens", "list", "--tokens", path, "--json")
    assert code == 0 and [e["tenant"] for e in json.loads(out)["entries"]] == ["acme"]
    code, _, _ = _cli(capsys, "serve", "tokens", "revoke", "--tokens", path, "--name", "svc")
    assert code == 0 and TokenFile.load(path).entries == ()
    code, _, err = _cli(capsys, "serve", "tokens", "revoke", "--tokens", path, "--name", "svc")
    assert code == 2 and "no token" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO(token + "\n"))
    code, out, _ = _cli(capsys, "serve", "tokens", "hash")
    assert code == 0 and out.strip() == token_hash(token)


def test_the_listening_socket_is_tcp_so_responses_are_not_delayed():
    """asyncio sets TCP_NODELAY only on sockets created with proto IPPROTO_TCP; without it each response waited
    for the client's delayed ACK (~40 ms a request on loopback)."""
    import socket

    from kolm_audit.cli.serve import _listen

    sock = _listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0
    finally:
        sock.close()
