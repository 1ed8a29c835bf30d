"""Benchmark the receipt log: durable appends, full verification, and `sha256sum` as the peer.

    python bench/bench_log.py --n 1000000            # ~600-byte canonical JSON leaves
    python bench/bench_log.py --n 200000 --receipts 20000

Prints (one line each): batched and unbatched durable append rates; the first checkpoint (rehashes every
leaf); ``verify_log`` of tree + every checkpoint (checkpoint-only) and with a per-leaf canonical-JSON check in
parallel; the same over an exported bundle; ``sha256sum`` of the exported ``receipts.jsonl`` measured in the
same run, and the ratio; and real receipt signature verification (Ed25519 and ECDSA P-256 DSSE receipts,
``kolm_audit.receipts.make_leaf_verifier``) measured on ``--receipts`` receipts and extrapolated to ``--n``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from kolm_audit.canonical import digest_of, loads_canonical
from kolm_audit.keys import generate_key
from kolm_audit.log import ReceiptLog, check_leaf_canonical, export_bundle, open_log_source, verify_log
from kolm_audit.trust import TrustPolicy

ORIGIN = "bench.example/log"
_TEMPLATE = (
    '{{"artifact":{{"digest":"sha256:{a}","name":"demo-classifier","version":"1.0.0"}},'
    '"log_index":{i},"operator":{{"caller":"svc-{c}","name":"acme"}},'
    '"period":{{"end":"2026-01-01T00:{m:02d}:{s:02d}Z","start":"2026-01-01T00:{m:02d}:{s:02d}Z"}},'
    '"receipt_id":"{rid}","request":{{"input_digest":"sha256:{d}","input_ids":[101,{t1},{t2},{t3},102]}},'
    '"response":{{"label":"positive","output_digest":"sha256:{o}","scores":[{p},{q}]}},'
    '"schema":"kolm.receipt/1","task":"classify","tenant":"acme"}}'
)
_ARTIFACT = hashlib.sha256(b"artifact").hexdigest()


def make_leaf(i: int) -> bytes:
    """A realistic ~600-byte receipt-shaped canonical JSON leaf (keys sorted, no floats, ASCII)."""
    h = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()
    return _TEMPLATE.format(a=_ARTIFACT, i=i, c=i % 97, m=(i // 60) % 60, s=i % 60, rid=f"{h[:8]}-{h[8:12]}-{h[12:16]}",
                            d=h, t1=i % 30000, t2=(i * 7) % 30000, t3=(i * 13) % 30000,
                            o=hashlib.sha256(h.encode()).hexdigest(), p=900 - i % 800, q=100 + i % 800).encode()


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


def bench_appends(work: Path, n: int, batch: int, key) -> tuple[Path, float]:  # type: ignore[no-untyped-def]
    single = work / "single.db"
    with ReceiptLog.open(single, create=True, origin=ORIGIN) as log:
        count = min(2000, n)
        t0 = time.perf_counter()
        for _ in range(count):
            log.append(make_leaf)
        dt = time.perf_counter() - t0
    print(f"append, unbatched (1 fsync per receipt): {count} receipts in {dt:.2f} s = {_rate(count, dt)}")
    path = work / "bench.db"
    every = max(n // 10, 1)
    with ReceiptLog.open(path, create=True, origin=ORIGIN) as log:
        t0 = time.perf_counter()
        done = 0
        while done < n:
            k = min(batch, n - done)
            log.append_many([make_leaf] * k)
            done += k
        dt = time.perf_counter() - t0
        print(f"append_many, batches of {batch} (1 fsync per batch, leaf built + canonical-checked + hashed): "
              f"{n} receipts in {dt:.1f} s = {_rate(n, dt)}")
        t0 = time.perf_counter()
        log.checkpoint(key)
        first = time.perf_counter() - t0
        print(f"first checkpoint at {n} (rehashes all {n} leaves, consistency-checked, signed): {first:.2f} s")
        # more checkpoints at earlier sizes are not possible after the fact; add 9 more appended rounds
        for _ in range(9):
            log.append_many([make_leaf] * max(every // 100, 1))
            log.checkpoint(key)
        t0 = time.perf_counter()
        log.append_many([make_leaf] * 1000)
        log.checkpoint(key)
        print(f"incremental checkpoint after 1000 more receipts: {time.perf_counter() - t0:.3f} s "
              f"(log now {log.size()} leaves, {len(log.checkpoints())} checkpoints)")
    return path, dt


def bench_verify(work: Path, path: Path, policy: TrustPolicy, workers: int) -> None:
    t0 = time.perf_counter()
    report = verify_log(path, policy=policy)
    tree_s = time.perf_counter() - t0
    print(f"verify (database, checkpoint-only = every leaf rehashed + tree + every stored node + "
          f"{len(report.checkpoints)} checkpoints): {report.size} leaves in {tree_s:.2f} s "
          f"= {_rate(report.size, tree_s)}")
    t0 = time.perf_counter()
    verify_log(path, policy=policy, verify_leaf=check_leaf_canonical, workers=workers)
    full_s = time.perf_counter() - t0
    print(f"verify (database, + canonical JSON check of every leaf in {workers} processes): {full_s:.2f} s")
    bundle = work / "bundle"
    t0 = time.perf_counter()
    with open_log_source(path) as src:
        export_bundle(src, bundle, proofs=False)
    print(f"export (receipts.jsonl + checkpoints, no proofs.json): {time.perf_counter() - t0:.2f} s, "
          f"{(bundle / 'receipts.jsonl').stat().st_size / 1e6:.0f} MB")
    t0 = time.perf_counter()
    verify_log(bundle, policy=policy)
    bundle_s = time.perf_counter() - t0
    print(f"verify (bundle, checkpoint-only): {bundle_s:.2f} s")
    sha = shutil.which("sha256sum")
    if sha is None:
        print("sha256sum not found; no ratio")
        return
    subprocess.run([sha, str(bundle / "receipts.jsonl")], check=True, capture_output=True)  # warm the page cache
    t0 = time.perf_counter()
    subprocess.run([sha, str(bundle / "receipts.jsonl")], check=True, capture_output=True)
    sha_s = time.perf_counter() - t0
    print(f"peer: sha256sum receipts.jsonl: {sha_s:.2f} s; ratio verify(db, tree+checkpoints)/sha256sum = "
          f"{tree_s / sha_s:.1f}x, verify(bundle)/sha256sum = {bundle_s / sha_s:.1f}x")


def bench_receipts(work: Path, count: int, n: int, workers: int) -> None:
    from kolm_audit.receipts.document import Decision, ReceiptContext, make_leaf_verifier, receipt_builder

    t = datetime(2026, 1, 1, tzinfo=UTC)
    for key_type in ("ed25519", "ecdsa-p256"):
        key, log_key = generate_key(key_type=key_type), generate_key(key_type="ed25519")  # type: ignore[arg-type]
        ctx = ReceiptContext(tenant="acme", operator="svc", artifact_digest="sha256:" + _ARTIFACT,
                             artifact_name="demo", artifact_version="1.0.0", kscore=None, backend="numpy", key=key)
        path = work / f"receipts-{key_type}.db"
        out_digest = digest_of({"label": "positive", "scores": [800, 200]})
        builders = [receipt_builder(ctx, Decision(task="classify", input_ids=(101, i % 30000, 102),
                                                  output_digest=out_digest, input_text=f"request {i}",
                                                  label="positive", scores=(800, 200)),
                                    start=t, end=t) for i in range(count)]
        with ReceiptLog.open(path, create=True, origin=ORIGIN) as log:
            t0 = time.perf_counter()
            for k in range(0, count, 1000):
                log.append_many(builders[k:k + 1000])
            sign_s = time.perf_counter() - t0
            log.checkpoint(log_key)
            size = len(log.leaf(0))
        policy = TrustPolicy.from_public_key(key.public_key(), roles=("receipt",))
        policy = TrustPolicy(keys=(*policy.keys, *TrustPolicy.from_public_key(
            log_key.public_key(), roles=("checkpoint",), name="log").keys))
        leaves = [make_leaf(i) for i in range(count)]
        sigs = [key.sign(x) for x in leaves]
        pub = key.public_key()
        t0 = time.perf_counter()
        for x, sig in zip(leaves, sigs, strict=True):
            pub.verify(sig, x)
        raw_s = time.perf_counter() - t0
        print(f"raw {key_type} signature verification, 1 core: {_rate(count, raw_s)}; 1M on {workers} cores "
              f"(extrapolated): {raw_s * 1_000_000 / count / workers:.0f} s")
        t0 = time.perf_counter()
        verify_log(path, policy=policy, verify_leaf=make_leaf_verifier(policy), workers=workers)
        ver_s = time.perf_counter() - t0
        print(f"receipts {key_type} ({size}-byte DSSE leaves): build+sign+append {count} in {sign_s:.1f} s "
              f"= {_rate(count, sign_s)}; full verify (tree + checkpoint + every receipt's signature, schema and "
              f"trust, {workers} processes) {ver_s:.1f} s = {_rate(count, ver_s)}; extrapolated to {n}: "
              f"{ver_s * n / count:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="leaves in the big log")
    parser.add_argument("--batch", type=int, default=1000, help="receipts per append_many transaction")
    parser.add_argument("--receipts", type=int, default=10_000, help="real signed receipts for signature timing")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--receipts-only", action="store_true", help="only the receipt signature timing")
    args = parser.parse_args()
    loads_canonical(make_leaf(12345))  # the template really is canonical JSON
    print(f"leaf size ~{len(make_leaf(123456))} bytes; n={args.n}; cpus={os.cpu_count()}; workers={args.workers}")
    work = Path(tempfile.mkdtemp(prefix="bench-log-", dir=args.workdir))
    try:
        key = generate_key(key_type="ed25519")
        policy = TrustPolicy.from_public_key(key.public_key(), roles=("checkpoint",))
        if not args.receipts_only:
            path, _ = bench_appends(work, args.n, args.batch, key)
            bench_verify(work, path, policy, args.workers)
        if args.receipts:
            bench_receipts(work, args.receipts, args.n, args.workers)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
