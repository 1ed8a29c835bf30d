"""Binder render time and size for a 100,000-receipt replay, against ``log verify --checkpoint-only`` of the same log.

    python bench/bench_binder.py                       # temp dir, 100,000 receipts, 25 planted mismatches
    python bench/bench_binder.py --dir /tmp/b --receipts 100000 --mismatches 25

The world is real where it matters and synthetic where a replay of 100,000 decisions would only cost time: a tiny
int8 BERT (built with transformers, fixed seed) is signed and 10 real decisions are recorded and replayed; the log
is then filled to N receipts by re-signing those decisions at new indices (every leaf a valid signed receipt, a
signed checkpoint over all of them), and the report is the real one grown to N rows with M planted output
mismatches (results digest recomputed, schema-valid). Receipt ids and the rows' output digests are distinct per
row, as in a real replay, so the compressed size of the embedded report is realistic (the rows' digests are not
the receipts' own: only the sampled cards show both). Both commands run as the CLI (process start included).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

from _replay_fixtures import bert_checkpoint, make_keys, quantize_signed, record

from kolm_audit.canonical import digest_of
from kolm_audit.cli.replay import write_report
from kolm_audit.keys import generate_key, write_keypair
from kolm_audit.log import ReceiptLog, open_log_source
from kolm_audit.receipts.document import parse_leaf, sign_receipt
from kolm_audit.replay.engine import replay
from kolm_audit.schemas import validate
from kolm_audit.trust import write_trust_file

TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")


def _rid(i: int) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(b"receipt %d" % i).digest()[:16], version=4))


def _digest(i: int, what: bytes = b"output") -> str:
    return "sha256:" + hashlib.sha256(what + b" %d" % i).hexdigest()


def build(root: Path, *, receipts: int, mismatches: int) -> dict[str, Path]:
    keys = make_keys(root / "keys")
    write_keypair(generate_key(key_type="ed25519"), keys.dir, name="binder")
    write_trust_file(keys.trust, [
        {"name": "vendor", "public_key": "vendor.pub", "roles": ["artifact"]},
        {"name": "operator", "public_key": "receipt.pub", "roles": ["receipt"], "tenants": ["*"]},
        {"name": "log", "public_key": "log.pub", "roles": ["checkpoint"]},
        {"name": "auditor", "public_key": "binder.pub", "roles": ["binder"]}])
    art = quantize_signed(bert_checkpoint(root / "hf"), root / "model.kolm", keys.vendor)
    small = record(art, root / "small.db", keys)
    base = replay(small, artifact=art, policy=keys.policy)
    with open_log_source(small) as src:
        templates = [parse_leaf(leaf).receipt for _, leaf in src.iter_leaves()]
    log_path = root / "receipts.db"
    with ReceiptLog.open(log_path, create=True, origin="example.org/replay-test") as log:
        for start in range(0, receipts, 5000):
            builders = []
            for i in range(start, min(receipts, start + 5000)):
                rec = copy.deepcopy(templates[i % len(templates)])
                rec.update(log_index=i, tenant=TENANTS[i % len(TENANTS)], receipt_id=_rid(i))
                data = sign_receipt(rec, keys.receipt).canonical_bytes()
                builders.append(lambda _i, data=data: data)
            log.append_many(builders)
        log.checkpoint(keys.log)
        root_hex = log.root().hex()
    res = copy.deepcopy(base["results"])
    rows, findings = [], []
    planted = set(range(receipts // (mismatches + 1), receipts, receipts // (mismatches + 1))[:mismatches])
    for i in range(receipts):
        t = base["results"]["receipts"][i % len(templates)]
        row = {**t, "index": i, "receipt_id": _rid(i), "tenant": TENANTS[i % len(TENANTS)],
               "expected_digest": _digest(i), "actual_digest": _digest(i)}
        if i in planted:
            wrong = _digest(i, b"replayed")
            row.update(status="mismatch", actual_digest=wrong, reasons=["output-mismatch"])
            findings.append({"scope": "receipt", "reason": "output-mismatch", "severity": "error", "index": i,
                             "receipt_id": row["receipt_id"], "message": "classification differs: label 'label_a' -> "
                             "'label_b'; first differing score index 0", "expected": row["expected_digest"],
                             "actual": wrong, "position": 0,
                             "excerpt": {"expected": "label 'label_a' scores [-16348, 11916, 5163]",
                                         "actual": "label 'label_b' scores [-1, 11916, 5163]"}})
        rows.append(row)
    res.update(verdict="mismatch" if planted else "matched", receipts=rows, findings=findings)
    res["log"].update(size=receipts, root_hash=root_hex, checkpoints=1, latest_checkpoint_size=receipts)
    res["counts"] = {"receipts": receipts, "signatures_verified": receipts, "replayed": receipts,
                     "matched": receipts - len(planted), "mismatched": len(planted), "errors": len(planted),
                     "warnings": 0, "by_reason": {"output-mismatch": len(planted)} if planted else {}}
    report = {**base, "results": res, "results_digest": digest_of(res)}
    validate(report, "replay-report")
    write_report(report, root / "report.json")
    return {"keys": keys.dir, "trust": keys.trust, "art": art, "log": log_path, "report": root / "report.json"}


def _timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from kolm_audit.cli import main; main()", *args], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--receipts", type=int, default=100_000)
    parser.add_argument("--mismatches", type=int, default=25)
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-binder-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    w = build(root, receipts=args.receipts, mismatches=args.mismatches)
    built = time.perf_counter() - started
    print(f"world: {args.receipts} receipts, {args.mismatches} mismatches, built in {built:.0f} s "
          f"({(root / 'report.json').stat().st_size / 1e6:.1f} MB report, {w['log'].stat().st_size / 1e6:.0f} MB log)")
    peer = _timed(["log", "verify", str(w["log"]), "--trust", str(w["trust"]), "--checkpoint-only"])
    pdf = root / "binder.pdf"
    ours = _timed(["binder", "--report", str(w["report"]), "--artifact", str(w["art"]), "--log", str(w["log"]),
                   "--out", str(pdf), "--key", str(w["keys"] / "binder.pem")])
    check = _timed(["verify", str(pdf), "--trust", str(w["trust"])])
    pages = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    npages = next(line.split()[-1] for line in pages.splitlines() if line.startswith("Pages:"))
    print(f"log verify --checkpoint-only (peer): {peer:.1f} s")
    print(f"binder render: {ours:.1f} s, {pdf.stat().st_size / 1e6:.1f} MB, {npages} pages "
          f"(ratio to the peer {ours / peer:.2f}x)")
    print(f"verify binder: {check:.1f} s")
    print(json.dumps({"receipts": args.receipts, "render_s": round(ours, 1), "bytes": pdf.stat().st_size,
                      "pages": int(npages), "verify_s": round(check, 1), "peer_s": round(peer, 1)}))


if __name__ == "__main__":
    main()
