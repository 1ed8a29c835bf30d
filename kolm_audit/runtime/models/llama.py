"""Llama family (Llama, Qwen2, Mistral) for ``kolm-int/1``: the integer-only forward, KV cache and decoding.

Pre-norm decoder: RMSNorm, RoPE (tables), grouped-query causal attention, SwiGLU MLP (SiLU table), final
RMSNorm and the LM head; prefill + KV-cached decoding, greedy or seeded sampling (spec:
``docs/runtime-spec-llama.md``). Every tensor line says its shape, dtype and fixed-point format. Nothing in
:class:`LlamaRuntime` touches a float; building an artifact (:func:`kolm_audit.compile.llama.quantize_llama`) is
the only float step.

Batches are left-padded; every operation works per token or per request, so a request's tokens are the
same alone, in any batch and with any padding, and decoding with the cache equals recomputing everything.

Example (random weights; real checkpoints come from ``kolm_audit.compile.hf.read_hf_checkpoint``)::

    >>> import numpy as np
    >>> from pathlib import Path
    >>> from kolm_audit.compile.hf import HFCheckpoint
    >>> from kolm_audit.compile.llama import quantize_llama
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
    >>> rt = LlamaRuntime.from_tensors(architecture=qm.architecture, quantization=qm.quantization,
    ...                               tensors=qm.tensors)
    >>> out = rt.generate([[1, 5, 9]], max_new_tokens=4, eos_ids=[])
    >>> len(out[0].output_ids), out[0].finish_reason
    (4, 'length')
    >>> rt.generate([[1, 5, 9]], max_new_tokens=4, eos_ids=[]) == out        # exact replay
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kolm_audit.errors import ArtifactError, RuntimeInputError
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import reference as ref
from kolm_audit.runtime.decode import DECODE_MODES, GraphPool, KVCache, open_session
from kolm_audit.runtime.models import Generation, _is_list, check_token_ids
from kolm_audit.runtime.models.llama_config import LLAMA_MODEL_TYPES, MAX_POSITIONS, LlamaConfig
from kolm_audit.runtime.ops import NumpyOps, Ops, fuse_linears
from kolm_audit.runtime.sampling import DecodingParams, request_key, select_token
from kolm_audit.runtime.tables import EXP_LEN, SIGMOID_LEN, load_table
from kolm_audit.runtime.weights import check_embedding, load_linear, need_tensor, quantization_params

__all__ = ["LLAMA_MODEL_TYPES", "MAX_POSITIONS", "Generation", "KVCache", "LlamaConfig", "LlamaRuntime",
           "generate"]

FINISH_EOS, FINISH_LENGTH, FINISH_CONTEXT = "eos", "length", "context"
MAX_NEW_TOKENS = 1 << 16
PREFILL_GROUP = 8             # a prefill of more prompts runs in groups of this many, sorted by length


def _linear(tensors: Mapping[str, np.ndarray], prefix: str, scheme: str, shape: tuple[int, int]) -> ref.IntLinear:
    lin = load_linear(tensors, prefix, scheme=scheme)                 # exact integer weight [N, K] + scales
    if tuple(lin.weight.shape) != shape:
        raise ArtifactError("linear layer has the wrong shape", field=f"tensors.{prefix}.weight",
                            expected=str(list(shape)), actual=str(list(lin.weight.shape)))
    return lin


@dataclass(frozen=True, kw_only=True)
class _Tables:
    """The integer tables a Llama forward reads (host copies; sampling reads ``exp`` on the host)."""

    exp: np.ndarray            # [4097] Q.30 exp(-i/128)
    rsqrt: np.ndarray          # [3073] Q.30
    sigmoid: np.ndarray        # [4097] Q.30
    cos: np.ndarray            # [P, D/2] Q.30
    sin: np.ndarray            # [P, D/2] Q.30
    scale: tuple[int, int]     # attention scale (M, S): M / 2^S ≈ 1/sqrt(D)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray], cfg: LlamaConfig) -> _Tables:
        half = (cfg.max_position_embeddings, cfg.head_dim // 2)
        m, s = (int(v) for v in load_table(tensors, "tables.attn_scale", (2,)))
        return cls(exp=load_table(tensors, "tables.exp", (EXP_LEN,)),
                   rsqrt=load_table(tensors, "tables.rsqrt", (fp.RSQRT_TABLE_LEN,)),
                   sigmoid=load_table(tensors, "tables.sigmoid", (SIGMOID_LEN,)),
                   cos=load_table(tensors, "tables.rope_cos", half), sin=load_table(tensors, "tables.rope_sin", half),
                   scale=(m, s))


class LlamaRuntime:
    """The integer Llama-family forward over an artifact's tensors (build one with :meth:`from_tensors`).

    ``ops`` is the backend (:class:`kolm_audit.runtime.ops.NumpyOps`, the reference, by default; or a torch
    backend): every backend yields the same integers. ``decode`` is how the KV cache is kept while generating
    (:mod:`kolm_audit.runtime.decode`: ``dynamic``, ``static`` buffers, or ``graphs`` = static + CUDA graphs);
    default: the backend's ``decode`` attribute, else ``dynamic``. It never changes an output.
    """

    def __init__(self, *, config: LlamaConfig, tables: _Tables, layers: list[dict[str, Any]], lm_head: Any,
                 tok_emb: Any, gammas: Mapping[str, Any], ops: Ops, decode: str | None = None) -> None:
        self.cfg, self.ops, self.layers, self.lm_head, self.tok_emb, self.gammas = (
            config, ops, layers, lm_head, tok_emb, gammas)
        self.decode = decode or str(getattr(ops, "decode", "dynamic"))
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}")
        self.graphs = GraphPool(self)                                             # CUDA graphs (decode="graphs")
        self.vocab, self.limit, self.inter = config.vocab_size, config.max_position_embeddings, config.intermediate_size
        self.nh, self.nkv, self.d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.eps = config.rms_norm_eps_q32
        self.exp = tables.exp                                                     # host copy for sampling
        self.scale_m, self.scale_s = tables.scale
        # backend copies of what the forward reads
        self.k_rsqrt, self.k_sigmoid = ops.const(tables.rsqrt), ops.const(tables.sigmoid)
        self.k_cos, self.k_sin, self.k_exp = ops.const(tables.cos), ops.const(tables.sin), ops.const(tables.exp)
        n = len(layers)                       # per layer: its post-attention norm and the next one (the last: final)
        self._post_gammas = tuple(gammas[f"model.layers.{i}.post_attention_layernorm"] for i in range(n))
        self._next_gammas = (*(gammas[f"model.layers.{i}.input_layernorm"] for i in range(1, n)), gammas["model.norm"])
        # the constant operands of a one-kernel decoding step (ops.decode_forward, ops.decoder)
        self._step_consts = {
            "tok_emb": self.tok_emb, "layers": self.layers, "first_gamma": gammas["model.layers.0.input_layernorm"],
            "post_gammas": self._post_gammas, "next_gammas": self._next_gammas, "lm_head": self.lm_head,
            "eps_q32": self.eps, "rsqrt_table": self.k_rsqrt, "heads": self.nh, "cos_table": self.k_cos,
            "sin_table": self.k_sin, "scale_mult": self.scale_m, "scale_shift": self.scale_s, "exp_table": self.k_exp,
            "sigmoid_table": self.k_sigmoid}

    @classmethod
    def from_tensors(cls, *, architecture: Mapping[str, Any], quantization: Mapping[str, Any],
                     tensors: Mapping[str, np.ndarray], task: Mapping[str, Any] | None = None,
                     ops: Ops | None = None, decode: str | None = None) -> LlamaRuntime:
        """Check an artifact's manifest parts and tensors against the spec and load them onto ``ops``."""
        ops = ops or NumpyOps()
        cfg = LlamaConfig.from_manifest(architecture)
        scheme = str(quantization.get("scheme"))
        quantization_params(scheme)
        if task is not None and task.get("kind") != "generate":
            raise ArtifactError("a Llama artifact generates", field="task.kind", expected="generate",
                                actual=repr(task.get("kind")))
        tables = _Tables.from_tensors(tensors, cfg)
        h, inter, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
        nq, nk = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        check_embedding(tensors, "model.embed_tokens", rows=v, dim=h)
        need_tensor(tensors, "model.norm.gamma", "int32", (h,))
        shapes = {"self_attn.q_proj": (nq, h), "self_attn.k_proj": (nk, h), "self_attn.v_proj": (nk, h),
                  "self_attn.o_proj": (h, nq), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
                  "mlp.down_proj": (h, inter)}
        layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            need_tensor(tensors, p + "input_layernorm.gamma", "int32", (h,))
            need_tensor(tensors, p + "post_attention_layernorm.gamma", "int32", (h,))
            lay = {n: _linear(tensors, p + n, scheme, shape) for n, shape in shapes.items()}
            layers.append({   # q|k|v and gate|up share their input: fused (per-column results unchanged)
                "qkv": ops.prepare_linear(fuse_linears([lay["self_attn.q_proj"], lay["self_attn.k_proj"],
                                                        lay["self_attn.v_proj"]])),
                "o_proj": ops.prepare_linear(lay["self_attn.o_proj"]),
                "gate_up": ops.prepare_linear(fuse_linears([lay["mlp.gate_proj"], lay["mlp.up_proj"]])),
                "down_proj": ops.prepare_linear(lay["mlp.down_proj"])})
        return cls(config=cfg, tables=tables, layers=layers,
                   lm_head=ops.prepare_linear(_linear(tensors, "lm_head", scheme, (v, h))),
                   tok_emb=ops.prepare_embedding(tensors, "model.embed_tokens"),
                   gammas={n[:-len(".gamma")]: ops.const(arr) for n, arr in tensors.items() if n.endswith(".gamma")},
                   ops=ops, decode=decode)

    # ---- the forward --------------------------------------------------------------------------------------

    def _norm(self, x: Any, name: str) -> Any:
        gamma = self.gammas[name]                                                 # [H] Q.24
        return self.ops.rms_norm(x, gamma, eps_q32=self.eps, rsqrt_table=self.k_rsqrt)   # [..., H] Q.16

    def _block(self, i: int, x: Any, h: Any, cache: KVCache, *, pos: Any, mask: Any, slot: Any,
               key_len: Any) -> tuple[Any, Any]:
        """Decoder layer ``i`` on new tokens: residual stream x [B, T, H] Q.16 and h = its input RMSNorm; appends the
        layer's keys and values to the cache at timeline index ``slot``. Returns (x, the next layer's input norm of x
        — None after the last layer, whose final norm the caller takes on the positions it needs)."""
        ops, lay, p = self.ops, self.layers[i], f"model.layers.{i}."
        q, k, v = ops.qkv_rope(h, lay["qkv"], pos, self.k_cos, self.k_sin, heads=self.nh, kv_heads=self.nkv,
                               head_dim=self.d)                                   # [B,nh|nkv,T,D] Q.16, RoPE on q,k
        keys, values = cache.append(i, k, v, slot, ops)                           # [B,nkv,Tk,D] Q.16 (+ this step)
        # grouped-query attention: query head j uses KV head j // (nh / nkv) (ops.attention repeats them)
        ctx = ops.attention(q, keys, values, mask, scale_mult=self.scale_m, scale_shift=self.scale_s,
                            exp_table=self.k_exp, key_len=key_len)                # [B,nh,T,D] Q.16
        ctx = ops.merge_heads(ctx)                                                # [B,T,nh·D] Q.16
        x, h = ops.linear_norm(ctx, lay["o_proj"], residual=x, gamma=self.gammas[p + "post_attention_layernorm"],
                               beta=None, eps_q32=self.eps, rsqrt_table=self.k_rsqrt)   # [B,T,H] sat(x + o), norm
        m = ops.linear_swiglu(h, lay["gate_up"], self.k_sigmoid)                  # [B,T,I] silu(gate)·up Q.16
        if i + 1 == len(self.layers):
            return ops.linear(m, lay["down_proj"], residual=x), None              # [B,T,H] sat(x + down)
        return ops.linear_norm(m, lay["down_proj"], residual=x, beta=None, eps_q32=self.eps,
                               gamma=self.gammas[f"model.layers.{i + 1}.input_layernorm"],
                               rsqrt_table=self.k_rsqrt)                          # [B,T,H] sat(x + down), next norm

    def _decode_forward(self, host: dict[str, np.ndarray], cache: KVCache, *, all_logits: bool) -> np.ndarray | None:
        """A decoding step's (or a prefill's) whole forward at once where the backend offers it
        (``ops.decode_forward``, on the step's host inputs: the same integers as :meth:`_forward`): logits
        [B, T|1, V] Q.16 on the host, the cache grown; or ``None``."""
        done = self.ops.decode_forward(host["ids"], host["pos"], host["mask"], cache.keys, cache.values,
                                       last=not all_logits, **self._step_consts)
        if done is None:
            return None
        logits, cache.keys, cache.values = done
        return logits

    def _decoder(self, cache: KVCache) -> Any:
        """The backend's decoder for the one-token steps after a prefill into the growing ``cache``
        (``ops.decoder``: the fused CPU backend's :class:`~kolm_audit.runtime.host_decoder.CpuDecoder`, the same
        integers as :meth:`_step`), or ``None``: the steps then go through :meth:`_step`."""
        make = getattr(self.ops, "decoder", None)
        if make is None or cache.capacity is not None or len(cache.keys) != len(self.layers):
            return None
        return make(cache.keys, cache.values, cache.key_ok, cache.pos, **self._step_consts)

    def _forward(self, *, ids: Any, pos: Any, mask: Any, slot: Any, key_len: Any, cache: KVCache,
                 all_logits: bool) -> Any:
        """The device part of a step (no host synchronization, so a CUDA graph can capture it): ids [B, T], positions
        [B, T], mask [B, 1, T, width], slot [1] (timeline index of the first new token), key_len [1] = slot + T, all
        backend arrays. Returns logits [B, T|1, V] Q.16 in the backend's arrays."""
        x = self.ops.embedding(self.tok_emb, ids)                                 # [B,T,H] Q.16
        h = self._norm(x, "model.layers.0.input_layernorm")                       # [B,T,H] Q.16
        for i in range(len(self.layers)):
            x, h = self._block(i, x, h, cache, pos=pos, mask=mask, slot=slot, key_len=key_len)   # [B,T,H] Q.16
        if not all_logits and x.shape[1] > 1:
            x = x[:, -1:, :]                                                      # [B,1,H] the last position
        return self.ops.linear(self._norm(x, "model.norm"), self.lm_head)         # [B,T|1,V] Q.16

    def _prepare(self, ids: np.ndarray, new_ok: np.ndarray, cache: KVCache) -> dict[str, np.ndarray]:
        """Host inputs of a step of new tokens ids int64 [B, T] (new_ok [B, T]: real, else left padding); records the
        new keys in ``cache.key_ok`` and makes room for them."""
        t = ids.shape[1]
        pos = cache.pos[:, None] + np.cumsum(new_ok, axis=1) - 1                  # [B,T] per-request positions
        pos = np.maximum(pos, 0)                                                  # padding sits at position 0
        slot = cache.length                                                       # timeline index of the first one
        cache.key_ok = np.concatenate([cache.key_ok, new_ok], axis=1)             # [B,Tk] real keys
        cache.reserve(self.ops, slot)
        tk, width = cache.length, cache.width
        qi = np.arange(tk - t, tk)[:, None]                                       # [T,1] timeline index of queries
        kj = np.arange(width)[None, :]                                            # [1,W] timeline index of keys
        key_ok = np.zeros((ids.shape[0], width), dtype=bool)
        key_ok[:, :tk] = cache.key_ok                                             # unfilled positions: never keys
        mask = (kj <= qi)[None] & (key_ok[:, None, :] | (kj == qi)[None])         # [B,T,W] causal, no padding
        return {"ids": ids, "pos": pos, "mask": mask[:, None, :, :], "slot": np.array([slot], dtype=np.int64),
                "key_len": np.array([tk], dtype=np.int64)}

    def _finish(self, new_ok: np.ndarray, cache: KVCache) -> None:
        cache.pos = cache.pos + new_ok.sum(axis=1)                                # [B] next positions

    def _step(self, ids: np.ndarray, new_ok: np.ndarray, cache: KVCache, *, all_logits: bool) -> np.ndarray:
        """Run new tokens ids int64 [B, T] (new_ok [B, T]: real, else left padding) through the model.

        Returns logits int64 Q.16: [B, T, V] if ``all_logits`` else [B, V] of the last new token.
        """
        host = self._prepare(ids, new_ok, cache)
        if cache.capacity is None and len(cache.keys) in (0, len(self.layers)):   # a growing cache (or none yet):
            done = self._decode_forward(host, cache, all_logits=all_logits)       # the backend may run it at once
            if done is not None:
                self._finish(new_ok, cache)
                return done if all_logits else done[:, -1, :]                     # [B,T|1,V] Q.16
        dev = {name: self.ops.mask(a) if name == "mask" else self.ops.const(a) for name, a in host.items()}
        logits = self._forward(cache=cache, all_logits=all_logits, **dev)         # [B,T|1,V] Q.16 (backend)
        self._finish(new_ok, cache)
        logits = self.ops.numpy(logits)                                           # host int64 for sampling
        return logits if all_logits else logits[:, -1, :]

    # ---- requests -----------------------------------------------------------------------------------------

    def embed(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        raise RuntimeInputError("this artifact cannot embed", field="task.kind", actual="generate")

    def classify(self, batch: Sequence[Sequence[int]]) -> list[tuple[int, np.ndarray]]:
        raise RuntimeInputError("this artifact is not a classifier", field="task.kind", expected="classify",
                                actual="generate")

    def check_ids(self, batch: Sequence[Sequence[int]], *, field_name: str = "inputs") -> None:
        """Refuse empty, over-long or out-of-vocabulary requests (RuntimeInputError naming the field)."""
        check_token_ids(batch, limit=self.limit, vocab=self.vocab, field_name=field_name)

    @staticmethod
    def _left_pad(batch: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """ids int64 [B, T] left-padded with 0 and new_ok bool [B, T] (real token?) of a batch of id lists."""
        b, t = len(batch), max(len(s) for s in batch)
        ids = np.zeros((b, t), dtype=np.int64)                                    # [B,T] left-padded ids
        ok = np.zeros((b, t), dtype=bool)                                         # [B,T] real token?
        for r, seq in enumerate(batch):
            ids[r, t - len(seq):] = np.asarray(seq, dtype=np.int64)
            ok[r, t - len(seq):] = True
        return ids, ok

    def _prefill(self, batch: Sequence[Sequence[int]], *, all_logits: bool) -> tuple[np.ndarray, KVCache]:
        """Logits of the prompts (every position's if ``all_logits``, else the last's) and their KV cache, one
        left-padded batch. Only the last positions wanted and more than ``PREFILL_GROUP`` prompts: the prompts run
        in groups of similar length (sorted), so that short prompts are not padded to the longest; the groups'
        caches are then left-padded into one. The integers are those of the one batch (each request's are the
        same alone or in any batch; padded keys are masked, so what a cache holds there is never read)."""
        if all_logits or len(batch) <= PREFILL_GROUP:
            return self._prefill_padded(batch, all_logits=all_logits)
        ops = self.ops
        order = np.argsort([len(seq) for seq in batch], kind="stable")             # [B] shortest first
        parts = []
        for lo in range(0, len(batch), PREFILL_GROUP):
            rows = order[lo:lo + PREFILL_GROUP]
            parts.append((rows, *self._prefill_padded([batch[i] for i in rows], all_logits=False)))
        width = max(cache.length for _, _, cache in parts)                        # the longest prompt
        logits = np.concatenate([lg for _, lg, _ in parts])                       # [B,V] in sorted order
        key_ok = np.concatenate([np.pad(c.key_ok, ((0, 0), (width - c.length, 0))) for _, _, c in parts])
        pos = np.concatenate([c.pos for _, _, c in parts])
        keys, values = [], []
        for i in range(len(self.layers)):
            ks, vs = [], []
            for _, _, c in parts:                                                 # left-pad to the full width
                kb, vb = ops.kv_buffer(c.keys[i], width), ops.kv_buffer(c.values[i], width)
                ops.kv_write(kb, vb, c.keys[i], c.values[i], ops.const(np.array([width - c.length])))
                ks.append(kb)
                vs.append(vb)
            keys.append(ops.cat(ks, axis=0))                                      # [B,nkv,W,D] sorted order
            values.append(ops.cat(vs, axis=0))
        back = np.argsort(order)                                                  # sorted row of each request
        cache = KVCache(keys, values, key_ok, pos)                                # sorted order
        return logits[back], cache.select(back, ops)

    def _prefill_padded(self, batch: Sequence[Sequence[int]], *, all_logits: bool) -> tuple[np.ndarray, KVCache]:
        ids, ok = self._left_pad(batch)
        cache = KVCache(key_ok=np.zeros((len(batch), 0), dtype=bool), pos=np.zeros(len(batch), dtype=np.int64))
        return self._step(ids, ok, cache, all_logits=all_logits), cache

    def logits(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Teacher-forced logits of every position of each request: int32 [len, V] Q.16 (no cache reuse)."""
        self.check_ids(batch)
        if len(batch) == 0:
            return []
        out, _ = self._prefill(batch, all_logits=True)                            # [B,T,V] Q.16
        t = out.shape[1]
        return [out[r, t - len(seq):].astype(np.int32) for r, seq in enumerate(batch)]

    def cached_logits(self, prompt: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
        """Logits after the prompt and after each continuation token fed one at a time through the KV cache.

        int32 [1 + len(continuation), V] Q.16; row ``j`` must equal ``logits([prompt + continuation])`` at
        position ``len(prompt) - 1 + j`` (spec §7: the cache changes nothing).
        """
        for name, part in (("prompt", prompt), ("continuation", continuation)):
            if not _is_list(part, 1):
                raise RuntimeInputError("not a list of token ids", field=name, expected="a list of token ids",
                                        actual=type(part).__name__)
        if len(prompt) == 0:
            raise RuntimeInputError("empty prompt", field="prompt", expected="at least one token")
        self.check_ids([list(prompt) + list(continuation)])
        with open_session(self, batch=1, max_len=len(prompt) + len(continuation)) as session:
            rows = [session.prefill([prompt])[0]]                                 # [V] Q.16
            one = np.zeros(1, dtype=np.int64)
            for tok in continuation:
                rows.append(session.step(one, np.array([tok], dtype=np.int64))[0])   # [V] Q.16
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
        eos = list(self.cfg.eos_token_ids) if eos_ids is None else list(eos_ids)
        for tok in eos:
            if isinstance(tok, bool) or not isinstance(tok, int | np.integer) or not 0 <= tok < self.vocab:
                raise RuntimeInputError("bad EOS id", field="eos_ids", expected=f"ids in [0, {self.vocab})",
                                        actual=repr(tok))
        self.check_ids(batch)
        if not batch:
            return []
        # the request keys seed the draws of §8.4 (SHA-256 of RFC 8785 bytes, ~85 µs a 64-token prompt); greedy
        # decoding draws nothing and never reads them
        keys = [b""] * len(batch) if params.greedy else [request_key(seq) for seq in batch]
        outs: list[list[int]] = [[] for _ in batch]
        reasons: list[str] = [""] * len(batch)
        with open_session(self, batch=len(batch), max_len=max(map(len, batch)) + max_new_tokens) as session:
            logits = session.prefill(batch)                                           # [B,V] Q.16
            active = np.arange(len(batch))                                            # [B'] request index per row
            chosen = [select_token(logits[row], params=params, key=keys[r], step=0, exp_table=self.exp)
                      for row, r in enumerate(active.tolist())]                       # [B'] each row's next token
            while True:
                keep = np.zeros(active.size, dtype=bool)                              # [B'] still going?
                for row, r in enumerate(active.tolist()):
                    tok = int(chosen[row])
                    outs[r].append(tok)
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
                active, nxt = active[keep], np.asarray(chosen, dtype=np.int64)[keep]  # finished requests leave
                if params.greedy:
                    # the steps before a request can stop on its length: none of the first s - 1 tokens of the
                    # run ends one (nor is an EOS id: the run ends after the first step that chose one)
                    steps = min(min(max_new_tokens, self.limit - len(batch[r])) - len(outs[r])
                                for r in active.tolist())
                    run = session.greedy(active, nxt, steps, np.array(eos, dtype=np.int64))   # [s,B'] ids
                    for toks in run[:-1]:
                        for row, r in enumerate(active.tolist()):
                            outs[r].append(int(toks[row]))
                    chosen = run[-1]
                else:
                    logits = session.step(active, nxt)                                # [B',V] Q.16
                    chosen = [select_token(logits[row], params=params, key=keys[r], step=len(outs[r]),
                                           exp_table=self.exp) for row, r in enumerate(active.tolist())]
        return [Generation(tuple(o), reason) for o, reason in zip(outs, reasons, strict=True)]


def generate(tensors: Mapping[str, np.ndarray], architecture: Mapping[str, Any],
             input_ids_batch: Sequence[Sequence[int]], *, quantization: Mapping[str, Any], max_new_tokens: int,
             eos_ids: Sequence[int] | None = None, seed: int | None = None, temperature: int | None = None,
             top_k: int | None = None, top_p: int | None = None, ops: Ops | None = None,
             decode: str | None = None) -> list[Generation]:
    """One-shot generation over an artifact's tensors (builds a :class:`LlamaRuntime`; reuse one for speed)."""
    rt = LlamaRuntime.from_tensors(architecture=architecture, quantization=quantization, tensors=tensors, ops=ops,
                                   decode=decode)
    return rt.generate(input_ids_batch, max_new_tokens=max_new_tokens, seed=seed, temperature=temperature,
                       top_k=top_k, top_p=top_p, eos_ids=eos_ids)
