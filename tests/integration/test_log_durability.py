"""Durability and concurrency of the receipt log with real processes: concurrent writers, SIGKILL crashes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from kolm_audit.keys import generate_key
from kolm_audit.log import ReceiptLog, check_leaf_canonical, verify_log
from kolm_audit.trust import TrustPolicy

ORIGIN = "durability.example/log"

# The child appends leaves {"run": R, "seq": k, "index": i}; after each append returns it prints the index
# (flushed), so the parent knows exactly which appends were acknowledged.
_CHILD = r"""
import sys
import time
from kolm_audit.canonical import jcs
from kolm_audit.log import ReceiptLog

path, run, count, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
start_at, pause = float(sys.argv[5]), float(sys.argv[6])
log = ReceiptLog.open(path, create=True, origin="durability.example/log")
time.sleep(max(0.0, start_at - time.time()))  # concurrent writers start together
seq = 0
while seq < count:
    time.sleep(pause)  # the work between decisions (model inference) in a real writer
    if batch > 1:
        builders = [(lambda i, s=seq + j: jcs({"index": i, "run": run, "seq": s})) for j in range(batch)]
        for index in log.append_many(builders):
            print(index, flush=True)
        seq += batch
    else:
        index = log.append(lambda i, s=seq: jcs({"index": i, "run": run, "seq": s}))
        print(index, flush=True)
        seq += 1
print("done", flush=True)
"""


def _child(tmp_path: Path, db: Path, run: str, count: int, batch: int = 1,
           start_at: float = 0.0, pause: float = 0.0) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    if not script.exists():
        script.write_text(_CHILD)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, str(script), str(db), run, str(count), str(batch), str(start_at), str(pause)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _check_acknowledged(db: Path, acked: dict[int, tuple[str, int]]) -> None:
    with ReceiptLog.open(db) as log:
        size = log.size()
        for index, (run, seq) in acked.items():
            assert index < size, f"acknowledged leaf {index} lost (size {size})"
            doc = json.loads(log.leaf(index))
            assert (doc["index"], doc["run"], doc["seq"]) == (index, run, seq)


def test_two_processes_append_concurrently(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    ReceiptLog.open(db, create=True, origin=ORIGIN).close()
    go = time.time() + 1.5
    procs = {"a": _child(tmp_path, db, "a", 300, start_at=go, pause=0.001),
             "b": _child(tmp_path, db, "b", 300, batch=3, start_at=go, pause=0.003)}
    acked: dict[str, list[int]] = {}
    for run, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        lines = out.split()
        assert lines[-1] == "done"
        acked[run] = [int(x) for x in lines[:-1]]
    assert len(acked["a"]) == len(acked["b"]) == 300
    assert sorted(acked["a"] + acked["b"]) == list(range(600))  # nothing lost, nothing doubled
    assert min(acked["b"]) < max(acked["a"]) and min(acked["a"]) < max(acked["b"])  # they really interleaved
    with ReceiptLog.open(db) as log:
        assert log.size() == 600
        for run, indices in acked.items():
            assert [json.loads(log.leaf(i))["seq"] for i in indices] == list(range(300))
            assert all(json.loads(log.leaf(i))["run"] == run for i in indices)
        key = generate_key(key_type="ed25519")
        log.checkpoint(key)
    policy = TrustPolicy.from_public_key(key.public_key(), roles=("checkpoint",))
    assert verify_log(db, policy=policy, verify_leaf=check_leaf_canonical).size == 600


def test_sigkill_never_loses_an_acknowledged_receipt(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    rng = random.Random(1234)
    key = generate_key(key_type="ed25519")
    acked: dict[int, tuple[str, int]] = {}
    kills = 0
    started = time.monotonic()
    for run_no in range(60):
        run = f"run{run_no}"
        proc = _child(tmp_path, db, run, 100_000, batch=rng.choice((1, 1, 1, 7)))
        assert proc.stdout is not None
        if run_no % 3 == 0:
            time.sleep(rng.uniform(0.0, 0.25))  # may land while opening / creating the log
            seen: list[str] = []
        else:
            seen = [proc.stdout.readline()]  # wait for the first acknowledged append
            time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()  # the same buffered reader as readline (communicate() would bypass it)
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        seq = 0
        for line in "".join(seen).split() + rest.split():
            if line != "done":
                acked[int(line)] = (run, seq)
                seq += 1
        if run_no % 10 == 9:
            _check_acknowledged(db, acked)
            with ReceiptLog.open(db) as log:
                log.checkpoint(key)  # the log is consistent with every earlier checkpoint
    assert kills >= 50
    assert len(acked) > 50
    _check_acknowledged(db, acked)
    with ReceiptLog.open(db) as log:
        log.checkpoint(key)
    policy = TrustPolicy.from_public_key(key.public_key(), roles=("checkpoint",))
    report = verify_log(db, policy=policy)
    assert report.size >= len(acked) and len(report.checkpoints) == 7
    print(f"{kills} kills, {len(acked)} acknowledged receipts, {time.monotonic() - started:.1f} s")
