"""Errors of the HTTP layer and their RFC 9457 problem-details bodies (``application/problem+json``).

Every error a request can meet is a :class:`~kolm_audit.errors.KolmError`; :func:`problem` turns one into a status
code and a body naming the field at fault. Errors raised for the HTTP layer itself are :class:`HttpError`
subclasses carrying their status; an :class:`~kolm_audit.errors.InputError` from deeper down (a refused input,
bad decoding parameters) is a 400; anything else the server's own fault (a 500 that names no secret).

    >>> status, body, headers = problem(Overloaded("the decision queue is full", retry_after=2), instance="/v1/x")
    >>> status, body["type"], body["retry_after"], headers["Retry-After"]
    (503, 'https://kolm-audit.dev/problems/overloaded', 2, '2')
"""

from __future__ import annotations

from typing import Any

from kolm_audit.errors import InputError, KolmError

PROBLEM_BASE = "https://kolm-audit.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class HttpError(InputError):
    """A request the server refuses with ``status`` (4xx) or cannot serve now (503)."""

    status: int = 400
    slug: str = "invalid-request"
    title: str = "The request is not valid"

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 expected: str | None = None, actual: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message, file=file, field=field, expected=expected, actual=actual)
        self.retry_after = retry_after


class InvalidJson(HttpError):
    slug, title = "invalid-json", "The body is not strict JSON"


class InvalidRequest(HttpError):
    slug, title = "invalid-request", "The request does not match its schema"


class Unauthorized(HttpError):
    status, slug, title = 401, "unauthorized", "A valid bearer token is needed"


class Forbidden(HttpError):
    status, slug, title = 403, "forbidden", "This token's tenant may not do that"


class NotFound(HttpError):
    status, slug, title = 404, "not-found", "No such resource"


class MethodNotAllowed(HttpError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed on this path"


class RequestTimeout(HttpError):
    status, slug, title = 408, "request-timeout", "The body did not arrive in time"


class PayloadTooLarge(HttpError):
    status, slug, title = 413, "payload-too-large", "The body is larger than this server accepts"


class UnsupportedMediaType(HttpError):
    status, slug, title = 415, "unsupported-media-type", "The body must be application/json"


class Overloaded(HttpError):
    status, slug, title = 503, "overloaded", "The server is busy; retry later"


class Unavailable(HttpError):
    status, slug, title = 503, "unavailable", "The receipt log cannot take decisions now"


class ShuttingDown(HttpError):
    status, slug, title = 503, "shutting-down", "The server is shutting down"


def _status(exc: KolmError) -> tuple[int, str, str]:
    if isinstance(exc, HttpError):
        return exc.status, exc.slug, exc.title
    if isinstance(exc, InputError):          # refused by the runtime, bad decoding parameters, ...
        return 400, "input-refused", "The model refuses this input"
    return 500, "internal", "The server failed"


def problem(exc: KolmError, *, instance: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, problem body, extra headers)`` for ``exc`` (schema ``serve-problem``)."""
    status, slug, title = _status(exc)
    if status == 500:  # the server's own fault: details go to the server's log, not to the client
        return status, {"type": PROBLEM_BASE + slug, "title": title, "status": status,
                        "detail": "the server failed; its log has the details", "instance": instance}, {}
    body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status,
                            "detail": exc.message or title, "instance": instance, "error": type(exc).__name__}
    for key in ("field", "expected", "actual"):
        value = getattr(exc, key)
        if value is not None:
            body[key] = str(value)
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)
    if status == 503:
        body["retry_after"] = retry_after = max(1, int(retry_after or 1))
        headers["Retry-After"] = str(retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="kolm-audit"' + (
            ', error="invalid_token"' if exc.field == "Authorization" and exc.actual != "missing" else "")
    return status, body, headers
