"""The ASGI app (Starlette): decisions with receipts, log views, health, readiness, metadata, OpenAPI.

``create_app(...)`` verifies everything first (:func:`kolm_audit.serve.service.open_service`) and returns an app
whose lifespan starts the writer thread and, at shutdown, stops intake, drains the queue and signs the final
checkpoint. Any ASGI server can run it; ``kolm-audit serve`` runs it under uvicorn in one process.

A request is checked in this order, each failure an RFC 9457 problem naming the field: bearer token (401) and
tenant (403); ``Content-Type`` (415); body size (413, before and while reading) and read time (408); strict UTF-8
JSON (400: no duplicate keys, NaN or floats where integers are due); unknown fields and the request's JSON Schema
(400); then the runtime's limits (400: a text longer than the context, a token id out of range). Only then is a
receipt made; it is durable before the response is sent. A full queue, or a request that waited
``queue_timeout_s`` without starting, is a 503 with ``Retry-After``.

    >>> from kolm_audit.serve import create_app
    >>> app = create_app(artifact="model.kolm", log="receipts.db", key="keys/receipt.pem",
    ...                  trust="trust.toml", tokens="tokens.toml")                           # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8080)
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kolm_audit import __version__
from kolm_audit.canonical import loads_strict
from kolm_audit.errors import InputError, KolmError
from kolm_audit.receipts.document import Decoding
from kolm_audit.receipts.recorder import Recorded, Request
from kolm_audit.schemas import validate
from kolm_audit.serve import openai
from kolm_audit.serve.auth import Principal
from kolm_audit.serve.openapi import UUID_PATTERN, openapi_document, request_schema
from kolm_audit.serve.problems import (
    PROBLEM_MEDIA_TYPE,
    InvalidJson,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ShuttingDown,
    UnsupportedMediaType,
    problem,
)
from kolm_audit.serve.service import Service, open_service

_LOG = logging.getLogger("kolm_audit.serve")
_DECODING = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")
_INDEX_RE = re.compile(r"^(0|[1-9][0-9]{0,15})$")
_UUID_RE = re.compile(UUID_PATTERN.replace("$", r"\Z"))


def _problem_response(exc: KolmError, path: str) -> Response:
    status, body, headers = problem(exc, instance=path)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def _on_error(request: HttpRequest, exc: Exception) -> Response:
    if isinstance(exc, KolmError):
        if not isinstance(exc, InputError):
            _LOG.error("%s %s: %s", request.method, request.url.path, exc)
        return _problem_response(exc, request.url.path)
    if isinstance(exc, HTTPException):
        mapped: KolmError = (MethodNotAllowed("method not allowed on this path", field="method",
                                              actual=request.method) if exc.status_code == 405
                             else NotFound("no such path", field="path", actual=request.url.path[:200]))
        response = _problem_response(mapped, request.url.path)
        if exc.headers and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    _LOG.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _problem_response(KolmError("internal error"), request.url.path)


def _query(request: HttpRequest, allowed: Sequence[str] = ()) -> dict[str, str]:
    params = request.query_params
    for name in params:
        if name not in allowed:
            raise InvalidRequest("unknown query parameter", field=f"?{name}", expected=", ".join(allowed) or "none")
    return {name: params[name] for name in params}


async def _read_body(request: HttpRequest, *, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("request body too large", field="Content-Length", expected=f"at most {limit} bytes",
                              actual=declared)

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge("request body too large", field="body", expected=f"at most {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time", field="body",
                             expected=f"within {timeout:g} s") from None


class Api:
    """The endpoints over one :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.openapi = openapi_document(task=service.task, model=service.name, version=__version__,
                                        bearer=service.tokens is not None)

    # --- request plumbing ---------------------------------------------------------------------------

    def _principal(self, request: HttpRequest) -> Principal:
        return self.service.authenticate(request.headers.get("authorization"))

    async def _json(self, request: HttpRequest, schema: str) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "")
        media, _, params = ctype.partition(";")
        charset = params.strip().lower().removeprefix("charset=").strip('"') if params.strip() else "utf-8"
        if media.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
            raise UnsupportedMediaType("the body must be JSON in UTF-8", field="Content-Type",
                                       expected="application/json", actual=ctype[:100] or "missing")
        settings = self.service.settings
        body = await _read_body(request, limit=settings.max_body_bytes, timeout=settings.body_timeout_s)
        doc = loads_strict(body, field="body", error=InvalidJson, decimals=True)
        if not isinstance(doc, dict):
            raise InvalidRequest("the body must be a JSON object", field="$", actual=type(doc).__name__)
        known = request_schema(schema)["properties"]
        for name in doc:
            if name not in known:
                raise InvalidRequest("unknown field", field=f"$.{name}"[:200], expected=", ".join(sorted(known)))
        validate(doc, schema, error=InvalidRequest)
        return doc

    async def _decide(self, tenant: str, requests: list[Request], fields: list[str]) -> list[Recorded]:
        """Queue the decisions; wait until they are durable (503 if they did not start in time)."""
        service = self.service
        future = service.batcher.submit(tenant, requests, fields)
        waiting = asyncio.wrap_future(future)
        done, _ = await asyncio.wait({waiting}, timeout=service.settings.queue_timeout_s)
        if not done and future.cancel():
            raise Overloaded(f"the decision did not start within {service.settings.queue_timeout_s:g} s",
                             retry_after=max(1, round(service.settings.queue_timeout_s)))
        return await waiting

    def _need_task(self, task: str, path: str) -> None:
        if self.service.task != task:
            raise NotFound(f"this server's artifact does {self.service.task}; {path} needs a {task} artifact",
                           field="path", actual=path)

    def _need_model(self, doc: dict[str, Any]) -> str:
        names = (self.service.name, self.service.model.digest)
        if doc["model"] not in names:
            raise NotFound("this server runs another model", field="$.model", expected=" or ".join(names),
                           actual=doc["model"][:200])
        return self.service.name

    # --- decisions ----------------------------------------------------------------------------------

    async def decisions(self, request: HttpRequest) -> Response:
        principal = self._principal(request)
        _query(request)
        doc = await self._json(request, "serve-decision-request")
        tenant = self.service.tenant_for(principal, doc.get("tenant"))
        params = {k: doc[k] for k in _DECODING if k in doc}
        decoding = None
        if self.service.task == "generate":
            try:
                decoding = Decoding(**params)
            except InputError as exc:
                raise InvalidRequest(exc.message, field=f"$.{exc.field}" if exc.field else None,
                                     expected=exc.expected, actual=exc.actual) from None
        elif params:
            raise InvalidRequest(f"decoding parameters apply to generate only; this artifact does "
                                 f"{self.service.task}", field=f"$.{sorted(params)[0]}")
        field = "$.text" if "text" in doc else "$.ids"
        req = Request(text=doc.get("text"), ids=None if "ids" not in doc else tuple(doc["ids"]), id=doc.get("id"),
                      caller=doc.get("caller"), decoding=decoding)
        [rec] = await self._decide(tenant, [req], [field])
        res = rec.result
        out: dict[str, Any] = {"tenant": tenant, "id": req.id, "task": self.service.task,
                               **openai.receipt_fields(rec), "input_ids": [int(i) for i in res.input_ids]}
        if self.service.task == "embed":
            out["embedding"] = [int(v) for v in res.embedding.tolist()]
        elif self.service.task == "classify":
            out.update(label=str(res.label), scores=[int(s) for s in res.scores])
        else:
            out.update(output_ids=[int(t) for t in res.output_ids], text=res.text,
                       finish_reason=str(res.finish_reason))
        return JSONResponse(out)

    async def embeddings(self, request: HttpRequest) -> Response:
        principal = self._principal(request)
        self._need_task("embed", "/v1/embeddings")
        _query(request)
        doc = await self._json(request, "serve-embeddings-request")
        model = self._need_model(doc)
        dim = int(self.service.model.manifest["architecture"]["hidden_size"])
        requests, fields = openai.embeddings_requests(doc, dim=dim)
        done = await self._decide(principal.tenant, requests, fields)
        return JSONResponse(openai.embeddings_response(doc, done, model=model))

    async def completions(self, request: HttpRequest) -> Response:
        principal = self._principal(request)
        self._need_task("generate", "/v1/completions")
        _query(request)
        doc = await self._json(request, "serve-completions-request")
        model = self._need_model(doc)
        requests, fields = openai.completions_requests(doc)
        done = await self._decide(principal.tenant, requests, fields)
        return JSONResponse(openai.completions_response(done, model=model))

    # --- the log ------------------------------------------------------------------------------------

    async def checkpoint(self, request: HttpRequest) -> Response:
        self._principal(request)
        _query(request)
        return JSONResponse(await run_in_threadpool(self.service.checkpoint))

    async def proof(self, request: HttpRequest) -> Response:
        principal = self._principal(request)
        _query(request)
        raw = request.path_params["index"]
        if not _INDEX_RE.match(raw):
            raise InvalidRequest("not a leaf index", field="index", expected="a non-negative integer",
                                 actual=raw[:40])
        index = int(raw)
        doc = await run_in_threadpool(self.service.proof, principal, index)
        if doc is None:   # the leaf is newer than the latest checkpoint: have the writer sign one
            await asyncio.wrap_future(self.service.batcher.checkpoint_soon())
            doc = await run_in_threadpool(self.service.proof, principal, index)
        if doc is None:
            raise Overloaded("no checkpoint covers this leaf yet", field="index", retry_after=1)
        return JSONResponse(doc)

    async def receipt(self, request: HttpRequest) -> Response:
        principal = self._principal(request)
        query = _query(request, ("reveal",))
        receipt_id = request.path_params["receipt_id"]
        if not _UUID_RE.match(receipt_id):
            raise InvalidRequest("not a receipt id", field="receipt_id", expected="a lowercase UUID",
                                 actual=receipt_id[:60])
        reveal = query.get("reveal", "false")
        if reveal not in ("true", "false"):
            raise InvalidRequest("not a boolean", field="?reveal", expected="true | false", actual=reveal[:20])
        return JSONResponse(await run_in_threadpool(self.service.receipt, principal, receipt_id,
                                                    open_sealed=reveal == "true"))

    # --- about the server ---------------------------------------------------------------------------

    async def metadata(self, request: HttpRequest) -> Response:
        principal = self._principal(request)
        _query(request)
        return JSONResponse(self.service.metadata(principal))

    async def healthz(self, request: HttpRequest) -> Response:
        _query(request)
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: HttpRequest) -> Response:
        _query(request)
        if not self.service.batcher.ready:
            raise ShuttingDown("not taking decisions (starting, shutting down, or the log refused a checkpoint)",
                               retry_after=5)
        return JSONResponse({"status": "ready"})

    async def openapi_json(self, request: HttpRequest) -> Response:
        _query(request)
        return JSONResponse(self.openapi)


def create_app(*, service: Service | None = None, **options: Any) -> Starlette:
    """The ASGI app over ``service``, or over ``open_service(**options)`` (artifact=, log=, key=, trust=,
    tokens=, tenant=, checkpoint_key=, keystore=, kek=, backend=, threads=, settings=): verified now, started by
    the app's lifespan, drained and checkpointed when it ends."""
    service = service if service is not None else open_service(**options)
    api = Api(service)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    routes = [Route("/v1/decisions", api.decisions, methods=["POST"]),
              Route("/v1/embeddings", api.embeddings, methods=["POST"]),
              Route("/v1/completions", api.completions, methods=["POST"]),
              Route("/v1/log/checkpoint", api.checkpoint, methods=["GET"]),
              Route("/v1/log/proof/{index}", api.proof, methods=["GET"]),
              Route("/v1/receipts/{receipt_id}", api.receipt, methods=["GET"]),
              Route("/v1/metadata", api.metadata, methods=["GET"]),
              Route("/healthz", api.healthz, methods=["GET"]),
              Route("/readyz", api.readyz, methods=["GET"]),
              Route("/openapi.json", api.openapi_json, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={KolmError: _on_error, HTTPException: _on_error, Exception: _on_error})
    app.state.service = service
    return app
