"""Pure parts of ``kolm_audit.serve``: the tokens file and bearer authentication, decimal parameters to per-mille,
OpenAI input forms, problem details, and the OpenAPI document built from ``schemas/``."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette")

from kolm_audit.errors import ConfigError, InputError, KolmError, LogError, RuntimeInputError
from kolm_audit.schemas import validate
from kolm_audit.serve.auth import TokenFile, bearer_token, new_token, token_hash
from kolm_audit.serve.openai import inputs, permille
from kolm_audit.serve.openapi import openapi_document
from kolm_audit.serve.problems import Forbidden, InvalidRequest, Overloaded, Unauthorized, problem


def test_tokens_file_round_trip_keeps_only_hashes(tmp_path):
    tokens = {t: new_token() for t in ("acme", "globex")}
    doc = TokenFile.empty()
    for tenant, token in tokens.items():
        doc = doc.with_token(name=f"{tenant}-svc", tenant=tenant, token=token)
    path = doc.write(tmp_path / "tokens.toml")
    text = path.read_text()
    assert all(token not in text for token in tokens.values()) and token_hash(tokens["acme"]) in text
    loaded = TokenFile.load(path)
    assert loaded.entries == doc.entries and loaded.tenants == ("acme", "globex")
    for tenant, token in tokens.items():
        principal = loaded.authenticate(f"Bearer {token}")
        assert (principal.tenant, principal.name) == (tenant, f"{tenant}-svc")
        assert loaded.authenticate(f"bearer   {token}  ").tenant == tenant        # scheme is case-insensitive
    assert TokenFile.load(TokenFile.empty().write(tmp_path / "empty.toml")).entries == ()


@pytest.mark.parametrize("text", [
    'schema = "kolm.serve-tokens/1"\n[[tokens]]\nname = "a"\ntenant = "t"\nhash = "sha256:00"\n',
    'schema = "kolm.serve-tokens/1"\n[[tokens]]\nname = "a"\ntenant = "t"\ntoken = "kolm_plain"\n'
    f'hash = "{token_hash("x")}"\n',
    'schema = "kolm.serve-tokens/2"\ntokens = []\n',
    f'schema = "kolm.serve-tokens/1"\n[[tokens]]\nname = "a"\ntenant = "t"\nhash = "{token_hash("x")}"\n'
    f'[[tokens]]\nname = "b"\ntenant = "u"\nhash = "{token_hash("x")}"\n',
    "not toml = = =",
])
def test_a_bad_tokens_file_is_refused(tmp_path, text):
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(ConfigError):
        TokenFile.load(tmp_path / "t.toml")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwdw==", "Token abc",
                                    "Bearer " + "x" * 600, "Bearer kolm_é"])
def test_malformed_or_missing_credentials_are_401(header):
    with pytest.raises(Unauthorized) as exc:
        TokenFile.empty().with_token(name="a", tenant="t", token="kolm_real").authenticate(header)
    status, body, headers = problem(exc.value, instance="/v1/decisions")
    assert status == 401 and body["field"] == "Authorization" and headers["WWW-Authenticate"].startswith("Bearer")


@settings(max_examples=200, deadline=None)
@given(header=st.text(max_size=80))
def test_no_random_header_authenticates(header):
    tokens = TokenFile.empty().with_token(name="a", tenant="t", token=new_token())
    with pytest.raises(Unauthorized):
        tokens.authenticate(header)


def test_bearer_token_extracts_the_credential():
    assert bearer_token("Bearer kolm_abc") == "kolm_abc"


@settings(max_examples=300, deadline=None)
@given(n=st.integers(min_value=-10**12, max_value=10**12), extra_zeros=st.integers(min_value=0, max_value=5))
def test_permille_reads_decimals_exactly(n, extra_zeros):
    value = Decimal(n).scaleb(-3)                                   # n / 1000, exactly
    padded = Decimal(f"{value}{'0' * extra_zeros}" if "." in str(value) else value)
    assert permille(padded, field="$.t") == n
    assert permille(n, field="$.t") == n * 1000


@pytest.mark.parametrize("text", ["0.0005", "1e-4", "0.1234", "1e-999999999"])
def test_permille_refuses_finer_than_a_thousandth(text):
    with pytest.raises(InvalidRequest) as exc:
        permille(Decimal(text), field="$.temperature")
    assert exc.value.field == "$.temperature"


def test_permille_of_zero_with_any_exponent_is_zero():
    assert permille(Decimal("0E+999999"), field="$.t") == permille(Decimal("-0.000"), field="$.t") == 0


def test_openai_input_forms():
    assert inputs("hi", name="input") == [("hi", None, "$.input")]
    assert inputs([1, 2], name="prompt") == [(None, (1, 2), "$.prompt")]
    assert inputs(["a", "b"], name="input") == [("a", None, "$.input[0]"), ("b", None, "$.input[1]")]
    assert inputs([[1], [2, 3]], name="input") == [(None, (1,), "$.input[0]"), (None, (2, 3), "$.input[1]")]


@pytest.mark.parametrize(("exc", "status", "slug"), [
    (InvalidRequest("x", field="$.a"), 400, "invalid-request"),
    (RuntimeInputError("too long", field="$.text"), 400, "input-refused"),
    (InputError("bad"), 400, "input-refused"),
    (Forbidden("no", field="$.tenant"), 403, "forbidden"),
    (Overloaded("busy", retry_after=7), 503, "overloaded"),
    (LogError("leaf 3 differs", file="/secret/path/r.db"), 500, "internal"),
    (KolmError("boom"), 500, "internal"),
])
def test_problem_details(exc, status, slug):
    got, body, headers = problem(exc, instance="/v1/x")
    validate(body, "serve-problem")
    assert got == body["status"] == status and body["type"].endswith("/" + slug)
    if status == 500:
        assert "secret" not in json.dumps(body) and "leaf" not in json.dumps(body)
    if status == 503:
        assert headers["Retry-After"] == "7"


@pytest.mark.parametrize("task", ["embed", "classify", "generate"])
def test_the_openapi_document_embeds_the_served_schemas(task):
    import jsonschema

    doc = openapi_document(task=task, model="m", version="0", bearer=True)
    assert ("/v1/embeddings" in doc["paths"]) == (task == "embed")
    assert ("/v1/completions" in doc["paths"]) == (task == "generate")
    components = doc["components"]["schemas"]
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs and all(r.startswith("#/components/schemas/") and r.split("/")[-1] in components for r in refs)
    for schema in components.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    request = {"text": "hello", "tenant": "acme", "id": "r1"}
    validate(request, "serve-decision-request")        # the file the server validates with, the one documented
    assert components["serve-decision-request"]["properties"].keys() >= request.keys()
