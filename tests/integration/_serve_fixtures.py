"""Helpers for the ``kolm-audit serve`` tests: tiny real artifacts, keys, a trust file, tokens, and a real uvicorn
server in a subprocess on an ephemeral loopback port.

Artifacts: int8 tiny BERTs (classifier and embedder, built with ``transformers`` from a config, the real
all-MiniLM-L6-v2 tokenizer, 64-token context) and a tiny Llama generator (word-level tokenizer), each signed with
an ECDSA artifact key. One Ed25519 key signs receipts (tenants ``acme`` and ``globex``) and checkpoints.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kolm_audit.keys import generate_key, write_keypair
from kolm_audit.serve.auth import TokenFile
from kolm_audit.trust import write_trust_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from _artifact_fixtures import tiny_hf_bert, tiny_hf_llama

TENANTS = ("acme", "globex")
CONTEXT = 64
_LISTEN_RE = re.compile(r"on (https?)://(\S+):(\d+) ")


@dataclass(frozen=True)
class World:
    root: Path
    artifacts: dict[str, Path]           # task -> signed artifact
    receipt_key: Path
    trust: Path
    tokens: Path
    token: dict[str, str]                # tenant -> bearer token

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token[tenant]}"}


def build_world(root: Path, tasks: tuple[str, ...] = ("classify",)) -> World:
    """Artifacts for ``tasks``, keys, ``trust.toml`` and ``tokens.toml`` (one token per tenant) under ``root``."""
    from kolm_audit.artifact import sign_artifact, write_artifact
    from kolm_audit.compile.hf import import_checkpoint

    art_key, rcpt_key = generate_key(key_type="ecdsa-p256"), generate_key(key_type="ed25519")
    for name, key in (("artifact", art_key), ("receipt", rcpt_key)):
        write_keypair(key, root, name=name)
    artifacts = {}
    for task in tasks:
        hf = tiny_hf_llama(root / "hf-gen", context=CONTEXT) if task == "generate" else tiny_hf_bert(
            root / f"hf-{task}", classify=task == "classify", context=CONTEXT)
        manifest, tensors = import_checkpoint(hf, scheme="int8", name=f"tiny-{task}", version="1",
                                              created="2026-01-01T00:00:00Z")
        path = root / f"{task}.kolm"
        write_artifact(path, manifest=manifest, tensors=tensors)
        sign_artifact(path, art_key)
        artifacts[task] = path
    trust = write_trust_file(root / "trust.toml", [
        {"name": "vendor", "public_key": "artifact.pub", "roles": ["artifact"]},
        {"name": "receipts", "public_key": "receipt.pub", "roles": ["receipt", "checkpoint"],
         "tenants": list(TENANTS)}])
    tokens, token = TokenFile.empty(), {}
    for tenant in TENANTS:
        token[tenant] = f"kolm_test_{tenant}_" + os.urandom(16).hex()
        tokens = tokens.with_token(name=f"{tenant}-svc", tenant=tenant, token=token[tenant])
    tokens.write(root / "tokens.toml")
    return World(root=root, artifacts=artifacts, receipt_key=root / "receipt.pem", trust=trust,
                 tokens=root / "tokens.toml", token=token)


def cli_command(*args: object) -> list[str]:
    """``kolm-audit ARGS`` in a fresh interpreter (this checkout's package: PYTHONPATH is inherited)."""
    return [sys.executable, "-c", "from kolm_audit.cli import main; main()", *map(str, args)]


class Server:
    """``kolm-audit serve`` in a subprocess on 127.0.0.1 and an ephemeral port; stderr is collected."""

    def __init__(self, world: World, log: Path, *, task: str = "classify", extra: tuple[object, ...] = (),
                 tokens: bool = True, timeout: float = 90.0) -> None:
        args = ["serve", world.artifacts[task], "--log", log, "--key", world.receipt_key, "--trust", world.trust,
                "--port", 0, "--backend", "numpy", *(("--tokens", world.tokens) if tokens else ()), *extra]
        self.proc = subprocess.Popen(cli_command(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        self.url = self._wait_for_url(timeout)

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if url is None:
                found = _LISTEN_RE.search(self.stderr)
                url = None if found is None else f"{found[1]}://{found[2]}:{found[3]}"
            if url is not None:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.stderr}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not become ready:\n{self.stderr}")

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._reader.join(5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.terminate()


def schemathesis_run(url: str, headers: dict[str, str], *, max_examples: int = 15) -> list[str]:
    """Property-based calls generated from the server's own OpenAPI document, valid and invalid, on every
    operation; each response must be no 5xx, a documented status, content type, schema and headers, invalid data
    must be refused, auth must not be ignored. Returns the operations checked (raises on the first failure)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation.modes import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        ignored_auth,
        missing_required_header,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
        unsupported_method,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              response_headers_conformance, negative_data_rejection, ignored_auth, unsupported_method,
              missing_required_header]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    rejection = schema.config.checks.negative_data_rejection   # a body over the server's limit is refused with 413
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: Any) -> None:
                case.call_and_validate(base_url=url, headers=headers, checks=checks)

            try:
                call()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                continue            # no invalid request exists (no parameters, no body): nothing to refuse
            checked.append(f"{operation.label} {mode.value}")
    return checked
