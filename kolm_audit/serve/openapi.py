"""The OpenAPI 3.1 document of a server, built from the same JSON Schemas (``schemas/``) the server validates with.

Each request and response schema is one file in ``schemas/`` (``serve-*``, ``checkpoint``, ``inclusion-proof``);
the document embeds them under ``components/schemas`` (their ``$defs`` hoisted beside them), so the document a
client reads and the validation the server does can never disagree. The document lists only the endpoints the
artifact serves (``/v1/embeddings`` for an embedder, ``/v1/completions`` for a generator).

    >>> doc = openapi_document(task="embed", model="demo", version="0.1.0", bearer=True)
    >>> sorted(p for p in doc["paths"] if p.startswith("/v1/") and "log" not in p)
    ['/v1/decisions', '/v1/embeddings', '/v1/metadata', '/v1/receipts/{receipt_id}']
"""

from __future__ import annotations

import functools
import json
from typing import Any

from kolm_audit.schemas import schema_dir
from kolm_audit.serve.problems import PROBLEM_MEDIA_TYPE

_SCHEMAS = ("serve-decision-request", "serve-decision-response", "serve-embeddings-request",
            "serve-embeddings-response", "serve-completions-request", "serve-completions-response",
            "serve-receipt", "serve-metadata", "serve-problem", "checkpoint", "inclusion-proof")
UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


@functools.cache
def request_schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``schemas/<name>.schema.json`` as a dict (read once)."""
    doc: dict[str, Any] = json.loads((schema_dir() / f"{name}.schema.json").read_text(encoding="utf-8"))
    return doc


def _component(name: str) -> dict[str, dict[str, Any]]:
    """``name``'s schema and its hoisted ``$defs`` as components, every ``#/$defs/x`` rewritten to point there."""
    schema = {k: v for k, v in request_schema(name).items() if k not in ("$schema", "$id")}
    defs = schema.pop("$defs", {})

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items()}
            ref = out.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                out["$ref"] = f"#/components/schemas/{name}.{ref.removeprefix('#/$defs/')}"
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    out = {name: rewrite(schema)}
    out.update({f"{name}.{key}": rewrite(value) for key, value in defs.items()})
    return out


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_ERRORS = {"400": "malformed JSON, a field of the wrong type or unknown, an input the model refuses",
           "401": "no or unknown bearer token", "403": "another tenant's request or data",
           "404": "no such receipt, leaf or model", "408": "the body did not arrive in time",
           "413": "the body is larger than the server accepts", "415": "the body is not application/json",
           "503": "queue full, queued too long, or shutting down: retry after Retry-After seconds"}


def _problems(*codes: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        response: dict[str, Any] = {"description": _ERRORS[code],
                                    "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref("serve-problem")}}}
        if code == "503":
            response["headers"] = {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1},
                                                   "description": "seconds to wait before retrying"}}
        out[code] = response
    out["default"] = {"description": "any other error (problem details)",
                      "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref("serve-problem")}}}
    return out


def _post(summary: str, request: str, response: str, description: str) -> dict[str, Any]:
    return {"post": {"summary": summary, "description": description,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
                     "responses": {"200": _json(response, "recorded: the receipt was durable before this was sent"),
                                   **_problems("400", "401", "403", "404", "408", "413", "415", "503")}}}


def _get(summary: str, response: str, *, parameters: list[dict[str, Any]] | None = None,
         errors: tuple[str, ...] = ("400", "401", "403", "404")) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": _json(response, summary), **_problems(*errors)}}
    if parameters:
        op["parameters"] = parameters
    return {"get": op}


_STATUS = {"type": "object", "additionalProperties": False, "required": ["status"],
           "properties": {"status": {"enum": ["ok", "ready"]}}}


def openapi_document(*, task: str, model: str, version: str, bearer: bool) -> dict[str, Any]:
    """The document of a server whose artifact does ``task`` (``bearer``: the server checks tokens)."""
    paths: dict[str, Any] = {
        "/v1/decisions": _post("Record one decision", "serve-decision-request", "serve-decision-response",
                               "The native shape: a text or token ids in; the output, its digests and the signed "
                               "receipt out."),
    }
    if task == "embed":
        paths["/v1/embeddings"] = _post("Embeddings (OpenAI-compatible), one receipt per input",
                                        "serve-embeddings-request", "serve-embeddings-response",
                                        f"`model` is the artifact's name ({model}) or digest.")
    if task == "generate":
        paths["/v1/completions"] = _post("Completions (OpenAI-compatible), one receipt per prompt",
                                         "serve-completions-request", "serve-completions-response",
                                         f"`model` is the artifact's name ({model}) or digest. Without a seed the "
                                         "decision is greedy.")
    paths["/v1/log/checkpoint"] = _get("The latest signed checkpoint of the log", "checkpoint")
    paths["/v1/log/proof/{index}"] = _get(
        "Inclusion proof of one of your receipts in the latest checkpoint", "inclusion-proof",
        parameters=[{"name": "index", "in": "path", "required": True,
                     "schema": {"type": "integer", "minimum": 0, "maximum": 9007199254740991}}],
        errors=("400", "401", "403", "404", "503"))
    paths["/v1/receipts/{receipt_id}"] = _get(
        "One of your receipts as stored in the log", "serve-receipt",
        parameters=[{"name": "receipt_id", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": UUID_PATTERN}},
                    {"name": "reveal", "in": "query", "required": False, "schema": {"type": "boolean"},
                     "description": "open sealed fields with the tenant's keys"}])
    paths["/v1/metadata"] = _get("The artifact (digest, spec, K-score) and the server's limits", "serve-metadata")
    for path, what, status in (("/healthz", "The process is alive", "ok"),
                               ("/readyz", "The server takes decisions (503 while shutting down)", "ready")):
        paths[path] = {"get": {"summary": what, "security": [], "responses": {
            "200": {"description": what, "content": {"application/json": {"schema": {
                **_STATUS, "properties": {"status": {"const": status}}}}}},
            **_problems("503")}}}
    components: dict[str, Any] = {"schemas": {}}
    for name in _SCHEMAS:
        components["schemas"].update(_component(name))
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "kolm-audit serve", "version": version,
                 "description": "Model decisions over HTTP, each answered only after its signed receipt is durable "
                                "in a tamper-evident log (docs/serve.md)."},
        "paths": paths, "components": components}
    if bearer:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                    "description": "a token from the server's tokens file"}}
        doc["security"] = [{"bearer": []}]
    return doc
