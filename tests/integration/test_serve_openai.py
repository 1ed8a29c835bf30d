"""The OpenAI-compatible endpoints of ``kolm-audit serve`` on a real uvicorn: ``/v1/embeddings`` (tiny int8 BERT
embedder) and ``/v1/completions`` (tiny int8 Llama), each item with its receipt; greedy and seeded sampling are
the bytes the in-process model gives alone; every receipt verifies and replays."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("uvicorn")

from _cli_fixtures import cli as _cli
from _serve_fixtures import Server, World, build_world, schemathesis_run

from kolm_audit.canonical import jcs
from kolm_audit.receipts.document import verify_receipt
from kolm_audit.schemas import validate
from kolm_audit.trust import TrustPolicy


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("serve-openai"), ("embed", "generate"))


@pytest.fixture(scope="module")
def embedder(world):
    with Server(world, world.root / "embed.db", task="embed") as srv:
        yield srv


@pytest.fixture(scope="module")
def generator(world):
    with Server(world, world.root / "gen.db", task="generate", extra=("--max-wait-ms", 20)) as srv:
        yield srv


def _load(world: World, task: str):
    import kolm_audit

    return kolm_audit.load(world.artifacts[task], trust=world.trust, backend="numpy")


def test_embeddings_are_exact_and_each_input_has_its_receipt(embedder, world):
    model = _load(world, "embed")
    policy = TrustPolicy.load(world.trust)
    texts = ["hello world", "a second sentence", "approve"]
    with embedder.client() as client:
        resp = client.post("/v1/embeddings", json={"input": texts, "model": "tiny-embed", "user": "bob"},
                           headers=world.headers("acme"))
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        validate(doc, "serve-embeddings-response")
        assert doc["object"] == "list" and [d["index"] for d in doc["data"]] == [0, 1, 2]
        for item, text in zip(doc["data"], texts, strict=True):
            [alone] = model.embed([text])
            assert item["embedding_q16"] == [int(v) for v in alone.embedding.tolist()]
            assert [round(v * 65536) for v in item["embedding"]] == item["embedding_q16"]
            assert all(v * 65536 == q for v, q in zip(item["embedding"], item["embedding_q16"], strict=True))
            assert item["output_digest"] == alone.output_digest
            assert verify_receipt(jcs(item["receipt"]), policy, expected_index=item["log_index"])
        assert len({d["log_index"] for d in doc["data"]}) == 3
        assert doc["usage"]["prompt_tokens"] == sum(len(model.tokenize([t])[0]) for t in texts)

        b64 = client.post("/v1/embeddings", json={"input": [101, 7592, 102], "model": model.digest,
                                                  "encoding_format": "base64"}, headers=world.headers("acme"))
        assert b64.status_code == 200
        item = b64.json()["data"][0]
        vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        exact = np.asarray(item["embedding_q16"], dtype=np.float64) / 65536
        assert vector.shape == exact.shape and np.allclose(vector, exact, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"input": "x", "model": "gpt-4"}, 404, "$.model"),
    ({"input": "x", "model": "tiny-embed", "dimensions": 8}, 400, "$.dimensions"),
    ({"input": [], "model": "tiny-embed"}, 400, "$.input"),
    ({"input": ["x", 5], "model": "tiny-embed"}, 400, "$.input"),
    ({"input": ["x"] * 257, "model": "tiny-embed"}, 400, "$.input"),
    ({"input": ["ok", "word " * 100], "model": "tiny-embed"}, 400, "$.input[1]"),
    ({"input": "x", "model": "tiny-embed", "encoding_format": "hex"}, 400, "$.encoding_format"),
    ({"model": "tiny-embed"}, 400, "$"),
])
def test_bad_embeddings_requests_name_the_field(embedder, world, body, status, field):
    with embedder.client() as client:
        resp = client.post("/v1/embeddings", json=body, headers=world.headers("acme"))
    assert resp.status_code == status, resp.text
    assert resp.json()["field"] == field


def test_completions_greedy_and_seeded_are_the_bytes_of_running_alone(generator, world):
    model = _load(world, "generate")
    prompts = ["w5 w6 w7", "w40 w41", "w9", "w100 w3 w17 w200"]
    requests = [({"prompt": p, "max_tokens": 6}, {"max_new_tokens": 6}) for p in prompts]
    requests += [({"prompt": p, "max_tokens": 5, "seed": 7, "temperature": 0.8, "top_p": 0.95},
                  {"max_new_tokens": 5, "seed": 7, "temperature": 800, "top_p": 950}) for p in prompts]

    def one(i: int) -> tuple[dict, dict]:
        body, params = requests[i % len(requests)]
        with generator.client() as client:
            resp = client.post("/v1/completions", json={"model": "tiny-generate", **body},
                               headers=world.headers("globex"))
        assert resp.status_code == 200, resp.text
        return resp.json(), params

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(32)))
    for i, (doc, params) in enumerate(results):
        validate(doc, "serve-completions-response")
        [choice] = doc["choices"]
        [alone] = model.generate([prompts[i % len(prompts)]], **params)
        assert (choice["output_ids"], choice["text"], choice["output_digest"]) == (
            list(alone.output_ids), alone.text, alone.output_digest)
        assert choice["finish_reason"] == {"eos": "stop"}.get(alone.finish_reason, "length")
        receipt = json.loads(base64.b64decode(choice["receipt"]["payload"]))
        assert {k: v for k, v in receipt["decoding"].items() if k != "strategy"} == {
            "max_new_tokens": params["max_new_tokens"], "seed": params.get("seed"),
            "temperature": params.get("temperature"), "top_p": params.get("top_p"), "top_k": None}
        assert doc["id"] == f"cmpl-{choice['receipt_id']}"
    with generator.client() as client:
        many = client.post("/v1/completions", json={"model": "tiny-generate", "prompt": [[5, 6, 7], [9]],
                                                    "max_tokens": 3, "temperature": 0},
                           headers=world.headers("globex")).json()
    assert [c["index"] for c in many["choices"]] == [0, 1]
    assert many["usage"]["total_tokens"] == many["usage"]["prompt_tokens"] + many["usage"]["completion_tokens"]


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "w5", "temperature": 0.8}, "$.seed"),                  # sampling needs a seed
    ({"prompt": "w5", "seed": 1, "temperature": 0.0005}, "$.temperature"),
    ({"prompt": "w5", "seed": 1, "top_p": 1.5}, "$.top_p"),
    ({"prompt": "w5", "stream": True}, "$.stream"),
    ({"prompt": "w5", "n": 2}, "$.n"),
    ({"prompt": "w5", "max_tokens": 2.5}, "$.max_tokens"),
    ({"prompt": "w5", "logit_bias": {"5": 1}}, "$.logit_bias"),
    ({"prompt": "w5", "max_tokens": 1, "frequency_penalty": 0.5}, "$.frequency_penalty"),
    ({"prompt": [1, 2, 999], "max_tokens": 1}, "$.prompt[2]"),
])
def test_bad_completions_requests_name_the_field(generator, world, body, field):
    with generator.client() as client:
        resp = client.post("/v1/completions", json={"model": "tiny-generate", **body},
                           headers=world.headers("globex"))
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == field


def test_schemathesis_on_the_openai_endpoints(embedder, generator, world):
    assert "POST /v1/embeddings negative" in schemathesis_run(embedder.url, world.headers("acme"))
    assert "POST /v1/completions positive" in schemathesis_run(generator.url, world.headers("globex"),
                                                                max_examples=10)


def test_every_receipt_verifies_and_replays(embedder, generator, world, capsys):
    for server, log, task in ((embedder, "embed.db", "embed"), (generator, "gen.db", "generate")):
        assert server.terminate() == 0
        code, out, err = _cli(capsys, "log", "verify", world.root / log, "--trust", world.trust, "--json")
        assert code == 0, err
        size = json.loads(out)["leaves_checked"]
        code, out, err = _cli(capsys, "replay", world.root / log, "--artifact", world.artifacts[task], "--trust",
                              world.trust, "--json")
        assert code == 0, err
        counts = json.loads(out)["results"]["counts"]
        assert counts["matched"] == counts["receipts"] == size >= 1
