"""``kolm-audit serve``: model decisions over HTTP, each answered only after its signed receipt is durable.

* :mod:`kolm_audit.serve.app` — the ASGI app (Starlette): :func:`create_app`;
* :mod:`kolm_audit.serve.service` — start-up checks, tenants, the receipt index, log views;
* :mod:`kolm_audit.serve.batcher` — the bounded micro-batcher and the log's writer thread;
* :mod:`kolm_audit.serve.auth` — bearer tokens per tenant (hashed at rest);
* :mod:`kolm_audit.serve.openai` — the OpenAI-compatible request and response shapes;
* :mod:`kolm_audit.serve.openapi` — the OpenAPI document, built from ``schemas/``;
* :mod:`kolm_audit.serve.problems` — RFC 9457 problem details.

The guide is ``docs/serve.md``. The HTTP parts need the ``serve`` extra (starlette, uvicorn).

    >>> from kolm_audit.serve import create_app
    >>> app = create_app(artifact="model.kolm", log="receipts.db", key="keys/receipt.pem",
    ...                  trust="trust.toml", tokens="tokens.toml")                   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:   # the HTTP stack is imported only when the app is asked for
    if name == "create_app":
        from kolm_audit.serve.app import create_app

        return create_app
    raise AttributeError(name)
