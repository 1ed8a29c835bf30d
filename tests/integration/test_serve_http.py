"""``kolm-audit serve`` over real HTTP: a real uvicorn in a subprocess on an ephemeral loopback port, a real int8
tiny BERT classifier, real keys, tokens and key store. Receipts, proofs, tenancy and bad input."""

from __future__ import annotations

import base64
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("uvicorn")

from _cli_fixtures import cli as _cli
from _serve_fixtures import Server, World, build_world, schemathesis_run

from kolm_audit.canonical import jcs
from kolm_audit.log.checkpoint import verify_checkpoint
from kolm_audit.log.merkle import verify_inclusion
from kolm_audit.receipts.document import verify_receipt
from kolm_audit.receipts.privacy import KeyEncryptionKey, KeyStore
from kolm_audit.schemas import validate
from kolm_audit.trust import TrustPolicy

TEXTS = ["is this transaction fraudulent?", "hello world", "approve the loan", "the quick brown fox",
         "a decision every regulator can replay", "deny", "good morning to you", "receipts for every answer"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("serve")
    w = build_world(root, ("classify",))
    kek = KeyEncryptionKey.generate()
    kek.write(root / "kek.b64")
    store = KeyStore.empty().with_tenant("acme", mode="encrypt-all", kek=kek)
    store.with_tenant("globex", mode="clear", kek=kek).write(root / "tenant-keys.json")
    return w


@pytest.fixture(scope="module")
def server(world):
    with Server(world, world.root / "r.db", extra=("--keystore", world.root / "tenant-keys.json", "--kek-file",
                                                   world.root / "kek.b64", "--max-wait-ms", 20)) as srv:
        yield srv


@pytest.fixture(scope="module")
def model(world):
    import kolm_audit

    return kolm_audit.load(world.artifacts["classify"], trust=world.trust, backend="numpy")


def _log_size(path: Path) -> int:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM leaves").fetchone()[0])
    finally:
        conn.close()


def _decide(client, world, as_tenant: str, **body):
    return client.post("/v1/decisions", json=body, headers=world.headers(as_tenant))


def test_a_decision_is_answered_with_its_durable_signed_receipt(server, world, model):
    policy = TrustPolicy.load(world.trust)
    with server.client() as client:
        resp = _decide(client, world, "globex", text="hello world", id="q-1", caller="alice")
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        validate(doc, "serve-decision-response")
        [alone] = model.classify(["hello world"])
        assert (doc["label"], doc["scores"], doc["output_digest"]) == (alone.label, list(alone.scores),
                                                                        alone.output_digest)
        assert doc["input_ids"] == list(alone.input_ids) and doc["tenant"] == "globex" and doc["id"] == "q-1"
        leaf = jcs(doc["receipt"])
        assert verify_receipt(leaf, policy, expected_index=doc["log_index"]).role == "receipt"
        receipt = json.loads(base64.b64decode(doc["receipt"]["payload"]))
        assert receipt["receipt_id"] == doc["receipt_id"] and receipt["request"]["text"] == "hello world"
        assert receipt["operator"] == {"name": "kolm-audit-serve", "caller": "alice"}

        got = client.get(f"/v1/receipts/{doc['receipt_id']}", headers=world.headers("globex"))
        assert got.status_code == 200
        stored = got.json()
        validate(stored, "serve-receipt")
        assert stored["envelope"] == doc["receipt"] and stored["log_index"] == doc["log_index"]

        proof = client.get(f"/v1/log/proof/{doc['log_index']}", headers=world.headers("globex")).json()
        validate(proof, "inclusion-proof")
        checkpoint = verify_checkpoint(proof["checkpoint"], policy=policy).checkpoint
        assert checkpoint.size == proof["tree_size"] > doc["log_index"]
        verify_inclusion(index=doc["log_index"], size=checkpoint.size, leaf=bytes.fromhex(proof["leaf_hash"]),
                         proof=[bytes.fromhex(p) for p in proof["path"]], root=checkpoint.root)
        latest = client.get("/v1/log/checkpoint", headers=world.headers("acme")).json()
        validate(latest, "checkpoint")
        assert latest["size"] >= checkpoint.size
        meta = client.get("/v1/metadata", headers=world.headers("acme")).json()
        validate(meta, "serve-metadata")
        assert meta["artifact"]["digest"] == model.digest and meta["tenant"] == "acme"
        assert meta["artifact"]["context"] == 64 and meta["artifact"]["kscore"] is None


def test_concurrent_clients_get_the_bytes_they_would_get_alone(server, world, model):
    alone = {text: model.classify([text])[0] for text in TEXTS}
    before = _log_size(world.root / "r.db")

    def one(i: int) -> tuple[str, dict]:
        text = TEXTS[i % len(TEXTS)]
        with server.client() as client:
            resp = _decide(client, world, ("acme", "globex")[i % 2], text=text, id=f"c{i}")
        assert resp.status_code == 200, resp.text
        return text, resp.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    for text, doc in results:
        exp = alone[text]
        assert (doc["label"], doc["scores"], doc["output_digest"], doc["input_ids"]) == (
            exp.label, list(exp.scores), exp.output_digest, list(exp.input_ids))
    indices = sorted(doc["log_index"] for _, doc in results)
    assert indices == list(range(before, before + 64))
    periods = {tuple(json.loads(base64.b64decode(doc["receipt"]["payload"]))["period"].values())
               for _, doc in results}
    assert len(periods) < 64          # some decisions shared a model run (a batch), and still got their own bytes


def test_a_tenant_never_reads_another_tenants_receipts_or_proofs(server, world):
    with server.client() as client:
        mine = _decide(client, world, "acme", text="a secret about acme", id="s-1").json()
        receipt = json.loads(base64.b64decode(mine["receipt"]["payload"]))
        assert receipt["privacy"]["mode"] == "encrypt-all" and "secret" not in json.dumps(receipt)
        assert set(receipt["request"]["text"]) == {"alg", "ciphertext", "key_id", "nonce"}   # sealed
        own = client.get(f"/v1/receipts/{mine['receipt_id']}?reveal=true", headers=world.headers("acme")).json()
        assert own["revealed"] and own["receipt"]["request"]["text"] == "a secret about acme"
        for path in (f"/v1/receipts/{mine['receipt_id']}", f"/v1/receipts/{mine['receipt_id']}?reveal=true",
                     f"/v1/log/proof/{mine['log_index']}"):
            resp = client.get(path, headers=world.headers("globex"))
            assert resp.status_code == 403, path
            assert resp.headers["content-type"] == "application/problem+json"
            assert "secret" not in resp.text and "ciphertext" not in resp.text
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer kolm_not_a_token"}).status_code == 401
        resp = _decide(client, world, "globex", text="x", tenant="acme")
        assert resp.status_code == 403 and resp.json()["field"] == "$.tenant"


def _raw(server, path: str, body: bytes | None = None, *, headers: dict | None = None, method: str = "POST"):
    with server.client() as client:
        return client.request(method, path, content=body, headers=headers)


_JSON = {"content-type": "application/json"}
BAD = [  # (name, path, body, extra headers, status, problem field)
    ("malformed JSON", "/v1/decisions", b'{"text": "x"', {}, 400, "body"),
    ("not UTF-8", "/v1/decisions", b'{"text": "\xff\xfe"}', {}, 400, "body"),
    ("lone surrogate", "/v1/decisions", b'{"text": "\\ud800"}', {}, 400, "body"),
    ("duplicate key", "/v1/decisions", b'{"text": "a", "text": "b"}', {}, 400, "body"),
    ("NaN", "/v1/decisions", b'{"ids": [NaN]}', {}, 400, "body"),
    ("integer beyond 2^53", "/v1/decisions", b'{"ids": [9007199254740993]}', {}, 400, "body"),
    ("deep nesting", "/v1/decisions", b"[" * 100_000 + b"]" * 100_000, {}, 400, None),
    ("empty body", "/v1/decisions", b"", {}, 400, "body"),
    ("top-level array", "/v1/decisions", b'["x"]', {}, 400, "$"),
    ("wrong type", "/v1/decisions", b'{"text": 5}', {}, 400, "$.text"),
    ("float id", "/v1/decisions", b'{"ids": [101, 1.5]}', {}, 400, "$.ids[1]"),
    ("unknown field", "/v1/decisions", b'{"text": "x", "temperatur": 1}', {}, 400, "$.temperatur"),
    ("text and ids", "/v1/decisions", b'{"text": "x", "ids": [101]}', {}, 400, "$"),
    ("neither text nor ids", "/v1/decisions", b'{"id": "x"}', {}, 400, "$"),
    ("decoding for a classifier", "/v1/decisions", b'{"text": "x", "seed": 1}', {}, 400, "$.seed"),
    ("text beyond the context", "/v1/decisions", json.dumps({"text": "word " * 200}).encode(), {}, 400, "$.text"),
    ("token id out of range", "/v1/decisions", b'{"ids": [101, 999999, 102]}', {}, 400, "$.ids[1]"),
    ("unknown tenant", "/v1/decisions", b'{"text": "x", "tenant": "initech"}', {}, 403, "$.tenant"),
    ("oversized (declared)", "/v1/decisions", b'{"text": "' + b"a" * 1_100_000 + b'"}', {}, 413, "Content-Length"),
    ("form-encoded", "/v1/decisions", b"text=x", {"content-type": "application/x-www-form-urlencoded"}, 415,
     "Content-Type"),
    ("latin-1 charset", "/v1/decisions", b'{"text": "x"}', {"content-type": "application/json; charset=latin-1"},
     415, "Content-Type"),
    ("unknown query parameter", "/v1/decisions?debug=1", b'{"text": "x"}', {}, 400, "?debug"),
    ("no such endpoint for a classifier", "/v1/embeddings", b'{"input": "x", "model": "m"}', {}, 404, "path"),
]


@pytest.mark.parametrize(("name", "path", "body", "extra", "status", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_problem_naming_the_field_and_records_nothing(server, world, name, path, body, extra,
                                                                     status, field):
    before = _log_size(world.root / "r.db")
    resp = _raw(server, path, body, headers={**_JSON, **world.headers("acme"), **extra})
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    problem = resp.json()
    validate(problem, "serve-problem")
    assert problem["status"] == status and problem["instance"] == path.split("?")[0]
    if field is not None:
        assert problem["field"] == field
    assert _log_size(world.root / "r.db") == before


def test_an_oversized_streamed_body_is_refused_while_reading(server, world):
    def chunks():
        yield b'{"text": "'
        for _ in range(17):     # just past the 1 MiB limit
            yield b"a" * 65536
        yield b'"}'

    with server.client() as client:
        resp = client.post("/v1/decisions", content=chunks(), headers={**_JSON, **world.headers("acme")})
    assert resp.status_code == 413 and resp.json()["field"] == "body"


@pytest.mark.parametrize(("path", "status", "field"), [
    ("/v1/receipts/not-a-uuid", 400, "receipt_id"),
    ("/v1/receipts/00000000-0000-4000-8000-000000000000", 404, "receipt_id"),
    ("/v1/receipts/00000000-0000-4000-8000-000000000000?reveal=yes", 400, "?reveal"),
    ("/v1/log/proof/abc", 400, "index"),
    ("/v1/log/proof/-1", 400, "index"),
    ("/v1/log/proof/99999999", 404, "index"),
    ("/v1/log/checkpoint?size=3", 400, "?size"),
])
def test_bad_reads_are_problems(server, world, path, status, field):
    resp = _raw(server, path, headers=world.headers("acme"), method="GET")
    assert resp.status_code == status, resp.text
    assert resp.json()["field"] == field


def test_unknown_paths_and_methods_are_problems_too(server, world):
    assert _raw(server, "/v2/nothing", method="GET").status_code == 404
    resp = _raw(server, "/v1/decisions", method="GET", headers=world.headers("acme"))
    assert resp.status_code == 405 and resp.json()["type"].endswith("/method-not-allowed")
    assert _raw(server, "/healthz", method="GET").json() == {"status": "ok"}
    doc = _raw(server, "/openapi.json", method="GET").json()
    assert doc["openapi"] == "3.1.0" and "/v1/decisions" in doc["paths"] and "/v1/embeddings" not in doc["paths"]


def test_schemathesis_finds_no_server_error_and_no_undocumented_response(server, world):
    checked = schemathesis_run(server.url, world.headers("acme"))
    assert "POST /v1/decisions negative" in checked and "GET /v1/receipts/{receipt_id} positive" in checked


def test_after_shutdown_every_receipt_verifies_and_replays(server, world, capsys):
    with server.client() as client:
        assert _decide(client, world, "globex", ids=[101, 7592, 102]).status_code == 200
    assert server.terminate() == 0
    assert "stopped;" in server.stderr
    code, out, err = _cli(capsys, "log", "verify", world.root / "r.db", "--trust", world.trust, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["leaves_checked"] == report["size"] == report["latest_checkpoint_size"] >= 1
    code, out, err = _cli(capsys, "replay", world.root / "r.db", "--artifact", world.artifacts["classify"],
                          "--trust", world.trust, "--keystore", world.root / "tenant-keys.json", "--kek-file",
                          world.root / "kek.b64", "--json")
    assert code == 0, err
    counts = json.loads(out)["results"]["counts"]
    assert counts["matched"] == counts["receipts"] == report["size"]
