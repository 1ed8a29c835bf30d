"""Llama family (Llama, Qwen2, Mistral) for ``kolm-int/1``: the integer-only forward, KV cache and decoding.

Pre-norm decoder: RMSNorm, RoPE (tables), grouped-query causal attention, SwiGLU MLP (SiLU table), final
RMSNorm and the LM head; prefill + KV-cached decoding, greedy or seeded sampling (spec:
``docs/runtime-spec-llama.md``). Every tensor line says its shape, dtype and fixed-point format. Nothing in
:class:`LlamaRuntime` touches a float; building an artifact (:func:`quantize_llama`) is the only float step.

Batches are left-padded; every operation works per token or per request, so a request's tokens are the
same alone, in any batch and with any padding, and decoding with the cache equals recomputing everything.

Example (random weights; real checkpoints come from ``kolm_audit.hf.read_hf_checkpoint``)::

    >>> import numpy as np
    >>> from pathlib import Path
    >>> from kolm_audit.hf import HFCheckpoint
    >>> cfg = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
    ...        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    ...        "max_position_embeddings": 16, "eos_token_id": 2}
    >>> shapes = {"model.embed_tokens.weight": (64, 32), "lm_head.weight": (64, 32), "model.norm.weight": (32,),
    ...     "model.layers.0.input_layernorm.weight": (32,), "model.layers.0.post_attention_layernorm.weight": (32,),
    ...     "model.layers.0.self_attn.q_proj.weight": (32, 32), "model.layers.0.self_attn.k_proj.weight": (16, 32),
    ...     "model.layers.0.self_attn.v_proj.weight": (16, 32), "model.layers.0.self_attn.o_proj.weight": (32, 32),
    ...     "model.layers.0.mlp.gate_proj.weight": (64, 32), "model.layers.0.mlp.up_proj.weight": (64, 32),
    ...     "model.layers.0.mlp.down_proj.weight": (32, 64)}
    >>> rng = np.random.default_rng(0)
    >>> ckpt = HFCheckpoint(path=Path("tiny"), config=cfg, tokenizer_json=b"{}", file_digests={},
    ...     tensors={n: rng.normal(0, 0.2, s).astype(np.float32) for n, s in shapes.items()})
    >>> qm = quantize_llama(ckpt, scheme="int8")
    >>> rt = LlamaRuntime(architecture=qm.architecture, quantization=qm.quantization, tensors=qm.tensors)
    >>> out = rt.generate([[1, 5, 9]], max_new_tokens=4, eos_ids=[])
    >>> len(out[0].output_ids), out[0].finish_reason
    (4, 'length')
    >>> rt.generate([[1, 5, 9]], max_new_tokens=4, eos_ids=[]) == out        # exact replay
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from kolm_audit.errors import ArtifactError, RuntimeInputError
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import reference as ref
from kolm_audit.runtime import tables as tb
from kolm_audit.runtime.models.llama_build import (
    SIGMOID_LEN,
    check_architecture,
    llama_architecture,
    quantize_llama,
)
from kolm_audit.runtime.ops import NumpyOps, fuse_linears
from kolm_audit.runtime.quantize import load_linear, quantization_params
from kolm_audit.runtime.sampling import DecodingParams, request_key, select_token

__all__ = ["Generation", "LlamaRuntime", "generate", "llama_architecture", "quantize_llama"]

FINISH_EOS, FINISH_LENGTH, FINISH_CONTEXT = "eos", "length", "context"
MAX_NEW_TOKENS = 1 << 16


class Generation(NamedTuple):
    """One request's result: the generated ids (an EOS that stopped it included) and why it stopped."""

    output_ids: tuple[int, ...]
    finish_reason: str            # "eos" | "length" (max_new_tokens) | "context" (max_position_embeddings)


@dataclass
class KVCache:
    """Per-layer keys (after RoPE) and values of a left-padded batch, int64 [B, nkv, T, D] Q.16.

    ``keys``/``values`` live in the backend's arrays (numpy, or torch on CPU/CUDA); ``key_ok`` and ``pos`` are
    numpy (the masks and positions are built on the host).
    """

    keys: list[Any] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    key_ok: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))   # [B, T] real token?
    pos: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))        # [B] next position

    def select(self, rows: np.ndarray, ops: Any | None = None) -> KVCache:
        """The cache of a subset of the requests (dropping finished ones never changes the others)."""
        take = (ops or NumpyOps()).take
        return KVCache([take(k, rows) for k in self.keys], [take(v, rows) for v in self.values],
                       self.key_ok[rows], self.pos[rows])


def _table(tensors: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = tensors.get(name)
    if arr is None or arr.dtype.kind != "i" or tuple(arr.shape) != shape:
        raise ArtifactError("runtime table missing or malformed", field=f"tensors.{name}",
                            expected=f"int {list(shape)}", actual=None if arr is None else f"{arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def _check(tensors: Mapping[str, np.ndarray], want: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
    for name, (dtype, shape) in want.items():
        arr = tensors.get(name)
        if arr is None or arr.dtype != np.dtype(dtype) or tuple(arr.shape) != shape:
            raise ArtifactError("tensor missing or malformed", field=f"tensors.{name}",
                                expected=f"{dtype} {list(shape)}",
                                actual=None if arr is None else f"{arr.dtype} {list(arr.shape)}")


def _linear(tensors: Mapping[str, np.ndarray], prefix: str, scheme: str, shape: tuple[int, int]) -> ref.IntLinear:
    lin = load_linear(tensors, prefix, scheme=scheme)                 # exact integer weight [N, K] + scales
    if tuple(lin.weight.shape) != shape:
        raise ArtifactError("linear layer has the wrong shape", field=f"tensors.{prefix}.weight",
                            expected=str(list(shape)), actual=str(list(lin.weight.shape)))
    return lin


class LlamaRuntime:
    """The integer Llama-family forward over an artifact's tensors.

    ``ops`` is the backend (:class:`kolm_audit.runtime.ops.NumpyOps`, the reference, by default; or
    :class:`kolm_audit.runtime.torch_backend.TorchOps`): every backend yields the same integers.
    """

    def __init__(self, *, architecture: Mapping[str, Any], quantization: Mapping[str, Any],
                 tensors: Mapping[str, np.ndarray], task: Mapping[str, Any] | None = None,
                 ops: Any | None = None) -> None:
        self.ops = ops = ops or NumpyOps()
        a = check_architecture(architecture)
        scheme = str(quantization.get("scheme"))
        quantization_params(scheme)
        if task is not None and task.get("kind") != "generate":
            raise ArtifactError("a Llama artifact generates", field="task.kind", expected="generate",
                                actual=repr(task.get("kind")))
        self.arch, self.t = a, tensors
        self.vocab, self.limit = a["vocab_size"], a["max_position_embeddings"]
        self.nh, self.nkv, self.d = a["num_attention_heads"], a["num_key_value_heads"], a["head_dim"]
        self.eps = a["rms_norm_eps_q32"]
        self.exp = _table(tensors, "tables.exp", (tb.EXP_LEN,))                       # [4097] Q.30 exp(-i/128)
        self.rsqrt = _table(tensors, "tables.rsqrt", (fp.RSQRT_TABLE_LEN,))           # [3073] Q.30
        self.sigmoid = _table(tensors, "tables.sigmoid", (SIGMOID_LEN,))              # [4097] Q.30
        self.cos = _table(tensors, "tables.rope_cos", (self.limit, self.d // 2))      # [P, D/2] Q.30
        self.sin = _table(tensors, "tables.rope_sin", (self.limit, self.d // 2))      # [P, D/2] Q.30
        self.scale_m, self.scale_s = (int(v) for v in _table(tensors, "tables.attn_scale", (2,)))
        h, inter = a["hidden_size"], a["intermediate_size"]
        v = self.vocab
        _check(tensors, {"model.embed_tokens.weight": ("int8", (v, h)), "model.embed_tokens.mult": ("int32", (v,)),
                         "model.embed_tokens.shift": ("int32", (v,)), "model.norm.gamma": ("int32", (h,))})
        shapes = {"self_attn.q_proj": (self.nh * self.d, h), "self_attn.k_proj": (self.nkv * self.d, h),
                  "self_attn.v_proj": (self.nkv * self.d, h), "self_attn.o_proj": (h, self.nh * self.d),
                  "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h), "mlp.down_proj": (h, inter)}
        self.layers = []
        for i in range(a["num_hidden_layers"]):
            p = f"model.layers.{i}."
            _check(tensors, {p + "input_layernorm.gamma": ("int32", (h,)),
                             p + "post_attention_layernorm.gamma": ("int32", (h,))})
            lay = {n: _linear(tensors, p + n, scheme, shape) for n, shape in shapes.items()}
            self.layers.append({   # q|k|v and gate|up share their input: fused (per-column results unchanged)
                "qkv": ops.prepare_linear(fuse_linears([lay["self_attn.q_proj"], lay["self_attn.k_proj"],
                                                        lay["self_attn.v_proj"]])),
                "o_proj": ops.prepare_linear(lay["self_attn.o_proj"]),
                "gate_up": ops.prepare_linear(fuse_linears([lay["mlp.gate_proj"], lay["mlp.up_proj"]])),
                "down_proj": ops.prepare_linear(lay["mlp.down_proj"])})
        self.inter = inter
        self.lm_head = ops.prepare_linear(_linear(tensors, "lm_head", scheme, (v, h)))
        # backend copies of what the forward reads (numpy tables above stay for sampling)
        self.tok_emb = ops.prepare_embedding(tensors, "model.embed_tokens")
        self.k_rsqrt, self.k_sigmoid = ops.const(self.rsqrt), ops.const(self.sigmoid)
        self.k_cos, self.k_sin, self.k_exp = ops.const(self.cos), ops.const(self.sin), ops.const(self.exp)
        self.gammas = {n[:-len(".gamma")]: ops.const(arr) for n, arr in tensors.items() if n.endswith(".gamma")}

    # ---- the forward --------------------------------------------------------------------------------------

    def _norm(self, x: Any, name: str) -> Any:
        gamma = self.gammas[name]                                                 # [H] Q.24
        return self.ops.rms_norm(x, gamma, eps_q32=self.eps, rsqrt_table=self.k_rsqrt)   # [..., H] Q.16

    def _block(self, i: int, x: Any, pos: Any, cache: KVCache, mask: Any) -> Any:
        """Decoder layer ``i`` on new tokens x int64 [B, T, H] Q.16 (positions [B, T]); appends to the cache."""
        ops, lay, p = self.ops, self.layers[i], f"model.layers.{i}."
        h = self._norm(x, p + "input_layernorm")                                  # [B,T,H] Q.16
        nq, nk = self.nh * self.d, self.nkv * self.d
        qkv = ops.linear(h, lay["qkv"])                                           # [B,T,nq+2nk] q|k|v_proj
        q = ops.heads(qkv[..., :nq], self.nh, self.d)                             # [B,nh,T,D] Q.16
        k = ops.heads(qkv[..., nq:nq + nk], self.nkv, self.d)                     # [B,nkv,T,D] Q.16
        v = ops.heads(qkv[..., nq + nk:], self.nkv, self.d)                       # [B,nkv,T,D] Q.16
        q = ops.rope(q, pos, self.k_cos, self.k_sin)                              # [B,nh,T,D] Q.16
        k = ops.rope(k, pos, self.k_cos, self.k_sin)                              # [B,nkv,T,D] Q.16
        if i < len(cache.keys):
            cache.keys[i] = ops.cat([cache.keys[i], k], axis=2)                   # [B,nkv,Tk,D] Q.16
            cache.values[i] = ops.cat([cache.values[i], v], axis=2)               # [B,nkv,Tk,D] Q.16
        else:
            cache.keys.append(k)
            cache.values.append(v)
        # grouped-query attention: query head j uses KV head j // (nh / nkv) (ops.attention repeats them)
        ctx = ops.attention(q, cache.keys[i], cache.values[i], mask, scale_mult=self.scale_m,
                            scale_shift=self.scale_s, exp_table=self.k_exp)       # [B,nh,T,D] Q.16
        ctx = ops.merge_heads(ctx)                                                # [B,T,nh·D] Q.16
        x = ops.saturate(x + ops.linear(ctx, lay["o_proj"]))                      # [B,T,H] Q.16 residual
        h = self._norm(x, p + "post_attention_layernorm")                         # [B,T,H] Q.16
        gu = ops.linear(h, lay["gate_up"])                                        # [B,T,2I] gate|up_proj
        m = ops.swiglu(gu[..., :self.inter], gu[..., self.inter:], self.k_sigmoid)   # [B,T,I] silu(g)·u
        return ops.saturate(x + ops.linear(m, lay["down_proj"]))                  # [B,T,H] Q.16 residual

    def _step(self, ids: np.ndarray, new_ok: np.ndarray, cache: KVCache, *, all_logits: bool) -> np.ndarray:
        """Run new tokens ids int64 [B, T] (new_ok [B, T]: real, else left padding) through the model.

        Returns logits int64 Q.16: [B, T, V] if ``all_logits`` else [B, V] of the last new token.
        """
        t = ids.shape[1]
        pos = cache.pos[:, None] + np.cumsum(new_ok, axis=1) - 1                  # [B,T] per-request positions
        pos = np.maximum(pos, 0)                                                  # padding sits at position 0
        cache.key_ok = np.concatenate([cache.key_ok, new_ok], axis=1)             # [B,Tk] real keys
        tk = cache.key_ok.shape[1]
        qi = np.arange(tk - t, tk)[:, None]                                       # [T,1] timeline index of queries
        kj = np.arange(tk)[None, :]                                               # [1,Tk] timeline index of keys
        mask = (kj <= qi)[None] & (cache.key_ok[:, None, :] | (kj == qi)[None])   # [B,T,Tk] causal, no padding
        mask = self.ops.mask(mask[:, None, :, :])                                 # [B,1,T,Tk] bool
        pos_b = self.ops.const(pos)                                               # [B,T] int64 (backend)
        x = self.ops.embedding(self.tok_emb, ids)                                   # [B,T,H] Q.16
        for i in range(len(self.layers)):
            x = self._block(i, x, pos_b, cache, mask)                             # [B,T,H] Q.16
        cache.pos = cache.pos + new_ok.sum(axis=1)                                # [B] next positions
        x = x if all_logits else x[:, -1:, :]                                     # [B,T|1,H] Q.16
        logits = self.ops.linear(self._norm(x, "model.norm"), self.lm_head)       # [B,T|1,V] Q.16
        logits = self.ops.numpy(logits)                                           # host int64 for sampling
        return logits if all_logits else logits[:, 0, :]

    # ---- requests -----------------------------------------------------------------------------------------

    def check_ids(self, batch: Sequence[Sequence[int]], *, field_name: str = "inputs") -> None:
        """Refuse empty, over-long or out-of-vocabulary requests (RuntimeInputError naming the field)."""
        for i, ids in enumerate(batch):
            if len(ids) == 0:
                raise RuntimeInputError("empty input", field=f"{field_name}[{i}]", expected="at least one token")
            if len(ids) > self.limit:
                raise RuntimeInputError("sequence longer than the artifact's limit", field=f"{field_name}[{i}]",
                                        expected=f"at most {self.limit} tokens (max_position_embeddings)",
                                        actual=f"{len(ids)} tokens")
            for j, tok in enumerate(ids):
                if isinstance(tok, bool) or not isinstance(tok, int | np.integer) or not 0 <= tok < self.vocab:
                    raise RuntimeInputError("token id out of range", field=f"{field_name}[{i}][{j}]",
                                            expected=f"integer in [0, {self.vocab})", actual=repr(tok))

    def _prefill(self, batch: Sequence[Sequence[int]], *, all_logits: bool) -> tuple[np.ndarray, KVCache]:
        b, t = len(batch), max(len(s) for s in batch)
        ids = np.zeros((b, t), dtype=np.int64)                                    # [B,T] left-padded ids
        ok = np.zeros((b, t), dtype=bool)                                         # [B,T] real token?
        for r, seq in enumerate(batch):
            ids[r, t - len(seq):] = np.asarray(seq, dtype=np.int64)
            ok[r, t - len(seq):] = True
        cache = KVCache(key_ok=np.zeros((b, 0), dtype=bool), pos=np.zeros(b, dtype=np.int64))
        return self._step(ids, ok, cache, all_logits=all_logits), cache

    def logits(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Teacher-forced logits of every position of each request: int32 [len, V] Q.16 (no cache reuse)."""
        self.check_ids(batch)
        out, _ = self._prefill(batch, all_logits=True)                            # [B,T,V] Q.16
        t = out.shape[1]
        return [out[r, t - len(seq):].astype(np.int32) for r, seq in enumerate(batch)]

    def cached_logits(self, prompt: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
        """Logits after the prompt and after each continuation token fed one at a time through the KV cache.

        int32 [1 + len(continuation), V] Q.16; row ``j`` must equal ``logits([prompt + continuation])`` at
        position ``len(prompt) - 1 + j`` (spec §7: the cache changes nothing).
        """
        self.check_ids([list(prompt) + list(continuation)])
        last, cache = self._prefill([prompt], all_logits=False)                   # [1,V] Q.16
        rows = [last[0]]
        for tok in continuation:
            step = self._step(np.array([[tok]], dtype=np.int64), np.ones((1, 1), dtype=bool), cache,
                              all_logits=False)                                   # [1,V] Q.16
            rows.append(step[0])
        return np.stack(rows).astype(np.int32)

    def generate(self, batch: Sequence[Sequence[int]], *, max_new_tokens: int, seed: int | None = None,
                 temperature: int | None = None, top_k: int | None = None, top_p: int | None = None,
                 eos_ids: Sequence[int] | None = None) -> list[Generation]:
        """Generate for each request (spec §8–§9): prefill, then one cached step per new token.

        ``seed=None`` is greedy; otherwise seeded sampling with integer ``temperature`` (per-mille), ``top_k``
        (count) and ``top_p`` (per-mille). Stops a request at an EOS id (kept in the output), after
        ``max_new_tokens``, or when its sequence reaches ``max_position_embeddings`` tokens. ``eos_ids``
        defaults to the architecture's.
        """
        params = DecodingParams(seed=seed, temperature=temperature, top_k=top_k, top_p=top_p)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int | np.integer) or not (
                1 <= max_new_tokens <= MAX_NEW_TOKENS):
            raise RuntimeInputError("bad max_new_tokens", field="max_new_tokens",
                                    expected=f"integer in [1, {MAX_NEW_TOKENS}]", actual=repr(max_new_tokens))
        eos = self.arch["eos_token_ids"] if eos_ids is None else list(eos_ids)
        for tok in eos:
            if isinstance(tok, bool) or not isinstance(tok, int | np.integer) or not 0 <= tok < self.vocab:
                raise RuntimeInputError("bad EOS id", field="eos_ids", expected=f"ids in [0, {self.vocab})",
                                        actual=repr(tok))
        self.check_ids(batch)
        if not batch:
            return []
        keys = [request_key(seq) for seq in batch]
        outs: list[list[int]] = [[] for _ in batch]
        reasons: list[str] = [""] * len(batch)
        logits, cache = self._prefill(batch, all_logits=False)                    # [B,V] Q.16, cache
        active = np.arange(len(batch))                                            # [B'] request index per row
        while active.size:
            nxt = np.zeros(active.size, dtype=np.int64)                           # [B'] chosen tokens
            keep = np.zeros(active.size, dtype=bool)                              # [B'] still going?
            for row, r in enumerate(active.tolist()):
                tok = select_token(logits[row], params=params, key=keys[r], step=len(outs[r]), exp_table=self.exp)
                outs[r].append(tok)
                nxt[row] = tok
                if tok in eos:
                    reasons[r] = FINISH_EOS
                elif len(outs[r]) >= max_new_tokens:
                    reasons[r] = FINISH_LENGTH
                elif len(batch[r]) + len(outs[r]) >= self.limit:
                    reasons[r] = FINISH_CONTEXT
                else:
                    keep[row] = True
            if not keep.any():
                break
            cache, active, nxt = cache.select(np.flatnonzero(keep), self.ops), active[keep], nxt[keep]
            logits = self._step(nxt[:, None], np.ones((active.size, 1), dtype=bool), cache, all_logits=False)
        return [Generation(tuple(o), reason) for o, reason in zip(outs, reasons, strict=True)]


def generate(tensors: Mapping[str, np.ndarray], architecture: Mapping[str, Any],
             input_ids_batch: Sequence[Sequence[int]], *, quantization: Mapping[str, Any], max_new_tokens: int,
             eos_ids: Sequence[int] | None = None, seed: int | None = None, temperature: int | None = None,
             top_k: int | None = None, top_p: int | None = None, ops: Any | None = None) -> list[Generation]:
    """One-shot generation over an artifact's tensors (builds a :class:`LlamaRuntime`; reuse one for speed)."""
    rt = LlamaRuntime(architecture=architecture, quantization=quantization, tensors=tensors, ops=ops)
    return rt.generate(input_ids_batch, max_new_tokens=max_new_tokens, seed=seed, temperature=temperature,
                       top_k=top_k, top_p=top_p, eos_ids=eos_ids)
