"""Verify throughput of a ≥ 1 GiB .kolm against `sha256sum` and `model_signing verify`, measured in one run.

    python bench/bench_verify.py                 # temp dir, 1 GiB, best of 3
    python bench/bench_verify.py --dir /data --size-gib 2 --repeat 5

All three read the same file from the page cache (it is read once before timing). `kolm-audit verify`
does strictly more than hashing the file once: strict header parse, schema validation, every tensor's
sha256 (in parallel across cores) and the DSSE signature. `model_signing` is timed as its CLI (process
start included, as a user runs it); ours is timed both in-process and as the `kolm-audit` CLI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kolm_audit.artifact import build_manifest, empty_provenance, sign_artifact, verify_artifact, write_artifact
from kolm_audit.keys import generate_key, write_keypair
from kolm_audit.trust import TrustPolicy

_MIB = 1 << 20


def _build(path: Path, *, size_gib: float, tensor_mib: int) -> None:
    rng = np.random.default_rng(0)
    count = max(1, int(size_gib * 1024 / tensor_mib))
    tensors = {f"layers.{i:04d}.weight": rng.integers(-128, 128, size=(tensor_mib, _MIB), dtype=np.int8)
               for i in range(count)}
    manifest = build_manifest(name="bench", version="1", task={"kind": "embed", "labels": []},
                              architecture={"family": "bert"}, quantization={"scheme": "int8"}, tensors=tensors,
                              provenance=empty_provenance(), created="2026-01-01T00:00:00Z")
    write_artifact(path, manifest=manifest, tensors=tensors)


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir, removed afterwards)")
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--tensor-mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="kolm-bench-")
        work = Path(tmp.name)
    else:
        work = args.dir
        work.mkdir(parents=True, exist_ok=True)
    try:
        path = work / "bench.kolm"
        print(f"building {args.size_gib} GiB artifact in {work} ...", flush=True)
        _build(path, size_gib=args.size_gib, tensor_mib=args.tensor_mib)
        key = generate_key(key_type="ecdsa-p256")
        pub = write_keypair(key, work / "keys", name="bench")[1]
        sign_artifact(path, key, sidecar=shutil.which("model_signing") is not None)
        size = path.stat().st_size
        policy = TrustPolicy.from_public_key(key.public_key(), roles=("artifact",))
        verify_artifact(path, policy=policy)    # warm the page cache
        gb = size / 1e9
        results: dict[str, float] = {}
        results["kolm verify (in-process)"] = _best(lambda: verify_artifact(path, policy=policy), args.repeat)
        kolm_cli = shutil.which("kolm-audit", path=str(Path(sys.executable).parent)) or shutil.which("kolm-audit")
        if kolm_cli:
            results["kolm-audit verify (CLI)"] = _best(
                lambda: _run([kolm_cli, "verify", str(path), "--key", str(pub)]), args.repeat)
        if shutil.which("sha256sum"):
            results["sha256sum"] = _best(lambda: _run(["sha256sum", str(path)]), args.repeat)
        ms = shutil.which("model_signing", path=str(Path(sys.executable).parent)) or shutil.which("model_signing")
        if ms and Path(str(path) + ".sig").is_file():
            results["model_signing verify key (CLI)"] = _best(
                lambda: _run([ms, "verify", "key", str(path), "--signature", str(path) + ".sig",
                              "--public_key", str(pub)]), args.repeat)
        print(f"file: {size} bytes ({size / (1 << 30):.2f} GiB), {os.cpu_count()} CPUs, best of {args.repeat}")
        for name, secs in results.items():
            print(f"  {name:34s} {secs:7.3f} s  {gb / secs:6.2f} GB/s")
        ours = results["kolm verify (in-process)"]
        for peer in ("sha256sum", "model_signing verify key (CLI)"):
            if peer in results:
                print(f"ratio kolm verify / {peer}: {results[peer] / ours:.2f}x throughput")
                if "kolm-audit verify (CLI)" in results:
                    print(f"ratio kolm-audit verify CLI / {peer}: "
                          f"{results[peer] / results['kolm-audit verify (CLI)']:.2f}x throughput")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
