"""BERT family for ``kolm-int/1``: import + quantization, and the integer-only forward (spec §6).

Post-LN encoder: absolute position embeddings, LayerNorm, erf-GELU, bidirectional attention with padding
masks; tasks ``embed`` (mean pooling over the request's own tokens) and ``classify`` (pooler tanh on
``[CLS]`` + linear head, argmax with lowest-index tie-break). Every tensor line below says its shape, dtype
and fixed-point format; nothing in :class:`BertRuntime` touches a float.

Example::

    >>> from kolm_audit.runtime.models.bert import bert_architecture
    >>> bert_architecture({"model_type": "bert", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
    ...     "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
    ...     "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12})["layer_norm_eps"]
    '1e-12'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kolm_audit.errors import ArtifactError, RuntimeInputError, UnsupportedModel
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import tables as tb
from kolm_audit.runtime.ops import NumpyOps, fuse_linears
from kolm_audit.runtime.quantize import (
    QuantizedModel,
    check_embedding,
    eps_q32,
    load_linear,
    need_tensor,
    nvfp4_tables,
    quantization_params,
    quantize_embedding,
    quantize_linear,
    quantize_norm,
)
from kolm_audit.runtime.tokenize import tokenizer_tensor

_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
         "max_position_embeddings", "type_vocab_size")
MAX_DIM = 1 << 16          # spec §4.3: K <= 2^16 and T <= 2^16 keep every accumulation inside its bound
MAX_HIDDEN = 1 << 14       # spec §5.3: norms over H <= 2^14
MAX_HEAD_DIM = 256         # spec §5.2
BATCH_CHUNK = 32           # requests per padded forward (results never depend on it)


def bert_architecture(config: Mapping[str, Any], *, file: str | None = None) -> dict[str, Any]:
    """HF BERT ``config.json`` → the manifest ``architecture`` object (integers and strings only)."""
    if config.get("model_type") != "bert":
        raise UnsupportedModel("not a BERT config", file=file, field="model_type", expected="bert",
                               actual=repr(config.get("model_type")))
    arch: dict[str, Any] = {"family": "bert", "model_type": "bert"}
    for name in _INTS:
        value = config.get(name, 2 if name == "type_vocab_size" else None)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= (1 << 20):
            raise UnsupportedModel("expected a positive integer", file=file, field=name, actual=repr(value))
        arch[name] = value
    checks = {"hidden_act": ("gelu",), "position_embedding_type": ("absolute",), "is_decoder": (False,),
              "add_cross_attention": (False,)}
    defaults = {"hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False,
                "add_cross_attention": False}
    for name, allowed in checks.items():
        value = config.get(name, defaults[name])
        if value not in allowed:
            raise UnsupportedModel("unsupported value", file=file, field=name, expected=" | ".join(map(str, allowed)),
                                   actual=repr(value))
    if arch["hidden_size"] % arch["num_attention_heads"]:
        raise UnsupportedModel("hidden_size must be a multiple of num_attention_heads", file=file,
                               field="num_attention_heads", actual=str(arch["num_attention_heads"]))
    for name, limit in (("hidden_size", MAX_HIDDEN), ("intermediate_size", MAX_DIM),
                        ("max_position_embeddings", MAX_DIM)):
        if arch[name] > limit:
            raise UnsupportedModel(f"above the kolm-int/1 limit {limit}", file=file, field=name,
                                   actual=str(arch[name]))
    if arch["hidden_size"] // arch["num_attention_heads"] > MAX_HEAD_DIM:
        raise UnsupportedModel(f"head dimension above {MAX_HEAD_DIM}", file=file, field="num_attention_heads")
    eps = config.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 <= eps < 1:
        raise UnsupportedModel("expected a small non-negative number", file=file, field="layer_norm_eps",
                               actual=repr(eps))
    arch["hidden_act"] = "gelu"
    arch["position_embedding_type"] = "absolute"
    arch["layer_norm_eps"] = repr(float(eps))
    arch["layer_norm_eps_q32"] = eps_q32(repr(float(eps)))
    pad = config.get("pad_token_id", 0)
    arch["pad_token_id"] = pad if isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0 else 0
    return arch


def _bert_task(config: Mapping[str, Any], has_head: bool, *, file: str | None) -> dict[str, Any]:
    if not has_head:
        return {"kind": "embed", "pooling": "mean", "labels": []}
    problem = config.get("problem_type")
    if problem not in (None, "single_label_classification"):
        raise UnsupportedModel("only single-label classification is supported", file=file, field="problem_type",
                               actual=repr(problem))
    id2label = config.get("id2label") or {}
    n = int(config.get("num_labels", len(id2label) or 2))
    labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]  # type: ignore[call-overload]
    if n < 2:
        raise UnsupportedModel("a classifier needs at least 2 labels", file=file, field="num_labels", actual=str(n))
    return {"kind": "classify", "pooling": "cls-pooler", "labels": labels}


def quantize_bert(ckpt: Any, *, scheme: str) -> QuantizedModel:
    """Quantize an HF BERT checkpoint (``BertModel`` or ``BertForSequenceClassification``) with ``scheme``."""
    cfg_file = str(ckpt.path / "config.json")
    arch = bert_architecture(ckpt.config, file=cfg_file)
    src = ckpt.tensors
    p = "bert." if "bert.embeddings.word_embeddings.weight" in src else ""

    def get(name: str) -> np.ndarray:
        if name not in src:
            raise UnsupportedModel("tensor missing from the checkpoint", file=str(ckpt.path), field=name)
        return np.asarray(src[name], dtype=np.float64)

    has_head = "classifier.weight" in src
    task = _bert_task(ckpt.config, has_head, file=cfg_file)
    out: dict[str, np.ndarray] = {}
    out.update(quantize_embedding(get(f"{p}embeddings.word_embeddings.weight"), "embeddings.word"))
    out["embeddings.position"] = _q16(get(f"{p}embeddings.position_embeddings.weight"), "embeddings.position")
    out["embeddings.token_type"] = _q16(get(f"{p}embeddings.token_type_embeddings.weight"), "embeddings.token_type")
    out.update(quantize_norm(get(f"{p}embeddings.LayerNorm.weight"), get(f"{p}embeddings.LayerNorm.bias"),
                             "embeddings.ln"))
    for i in range(arch["num_hidden_layers"]):
        h, o = f"{p}encoder.layer.{i}.", f"layers.{i}."
        for src_name, dst in (("attention.self.query", "attn.q"), ("attention.self.key", "attn.k"),
                              ("attention.self.value", "attn.v"), ("attention.output.dense", "attn.o"),
                              ("intermediate.dense", "ffn.up"), ("output.dense", "ffn.down")):
            out.update(quantize_linear(get(f"{h}{src_name}.weight"), get(f"{h}{src_name}.bias"), o + dst,
                                       scheme=scheme))
        out.update(quantize_norm(get(f"{h}attention.output.LayerNorm.weight"),
                                 get(f"{h}attention.output.LayerNorm.bias"), o + "attn_ln"))
        out.update(quantize_norm(get(f"{h}output.LayerNorm.weight"), get(f"{h}output.LayerNorm.bias"), o + "ffn_ln"))
    if has_head:
        out.update(quantize_linear(get(f"{p}pooler.dense.weight"), get(f"{p}pooler.dense.bias"), "pooler",
                                   scheme=scheme))
        out.update(quantize_linear(get("classifier.weight"), get("classifier.bias"), "classifier", scheme=scheme))
    out.update(tb.bert_tables())
    out["tables.attn_scale"] = tb.attn_scale(arch["hidden_size"] // arch["num_attention_heads"])
    if scheme == "nvfp4":
        out.update(nvfp4_tables())
    out["tokenizer.json"] = tokenizer_tensor(ckpt.tokenizer_json)
    return QuantizedModel(architecture=arch, task=task, quantization=quantization_params(scheme),
                          tensors=dict(sorted(out.items())))


def _q16(values: np.ndarray, name: str) -> np.ndarray:
    q = fp.to_fixed(values, fp.ACT_FRAC_BITS)
    if np.any(np.abs(q) > fp.INT32_MAX):
        raise UnsupportedModel("value outside the Q.16 int32 range", field=name)
    return q.astype(np.int32)


def _table(tensors: Mapping[str, np.ndarray], name: str, length: int) -> np.ndarray:
    arr = tensors.get(name)
    if arr is None or arr.dtype.kind != "i" or arr.shape != (length,):
        raise ArtifactError("runtime table missing or malformed", field=f"tensors.{name}",
                            expected=f"int [{length}]", actual=None if arr is None else f"{arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


class BertRuntime:
    """The integer BERT forward over an artifact's tensors.

    ``ops`` is the backend (:class:`kolm_audit.runtime.ops.NumpyOps`, the reference, by default; or
    :class:`kolm_audit.runtime.torch_backend.TorchOps`): every backend yields the same integers.
    """

    def __init__(self, *, architecture: Mapping[str, Any], quantization: Mapping[str, Any], task: Mapping[str, Any],
                 tensors: Mapping[str, np.ndarray], ops: Any | None = None) -> None:
        self.ops = ops = ops or NumpyOps()
        arch = dict(architecture)
        try:
            eps = float(str(arch.get("layer_norm_eps")))
        except ValueError:
            raise UnsupportedModel("expected a decimal string", field="architecture.layer_norm_eps",
                                   actual=repr(arch.get("layer_norm_eps"))[:40]) from None
        checked = bert_architecture({**arch, "layer_norm_eps": eps}, file="architecture")
        if checked["layer_norm_eps_q32"] != arch.get("layer_norm_eps_q32"):
            raise UnsupportedModel("layer_norm_eps_q32 does not match layer_norm_eps",
                                   field="architecture.layer_norm_eps_q32", expected=str(checked["layer_norm_eps_q32"]))
        self.arch, self.task, self.t = checked, dict(task), tensors
        if self.task.get("kind") not in ("embed", "classify"):
            raise UnsupportedModel("a BERT artifact embeds or classifies", field="task.kind",
                                   expected="embed | classify", actual=repr(self.task.get("kind")))
        scheme = quantization.get("scheme")
        quantization_params(str(scheme))
        self.heads = checked["num_attention_heads"]
        self.head_dim = checked["hidden_size"] // self.heads
        self.eps = checked["layer_norm_eps_q32"]
        self.exp = _table(tensors, "tables.exp", tb.EXP_LEN)
        self.rsqrt = _table(tensors, "tables.rsqrt", fp.RSQRT_TABLE_LEN)
        self.cdf = _table(tensors, "tables.gelu_cdf", tb.SIG_LEN)
        self.tanh = _table(tensors, "tables.tanh", tb.SIG_LEN)
        self.scale_m, self.scale_s = (int(v) for v in _table(tensors, "tables.attn_scale", 2))
        if not ((1 << 30) <= self.scale_m < (1 << 31) and 30 <= self.scale_s <= 40):
            raise ArtifactError("attention scale out of range", field="tensors.tables.attn_scale",
                                expected="[M, S] with 2^30 <= M < 2^31, 30 <= S <= 40")
        hid = checked["hidden_size"]
        check_embedding(tensors, "embeddings.word", rows=checked["vocab_size"], dim=hid)
        need_tensor(tensors, "embeddings.position", "int32", (checked["max_position_embeddings"], hid))
        need_tensor(tensors, "embeddings.token_type", "int32", (checked["type_vocab_size"], hid))
        for i in range(-1, checked["num_hidden_layers"]):
            for ln in (("embeddings.ln",) if i < 0 else (f"layers.{i}.attn_ln", f"layers.{i}.ffn_ln")):
                need_tensor(tensors, f"{ln}.gamma", "int32", (hid,))
                need_tensor(tensors, f"{ln}.beta", "int32", (hid,))
        names = ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.up", "ffn.down")
        self.layers = [{name: load_linear(tensors, f"layers.{i}.{name}", scheme=str(scheme)) for name in names}
                       for i in range(checked["num_hidden_layers"])]
        shapes = {"attn.q": (hid, hid), "attn.k": (hid, hid), "attn.v": (hid, hid), "attn.o": (hid, hid),
                  "ffn.up": (checked["intermediate_size"], hid), "ffn.down": (hid, checked["intermediate_size"])}
        for i, lay in enumerate(self.layers):
            for name, lin in lay.items():
                if lin.weight.shape != shapes[name]:
                    raise ArtifactError("linear weight has the wrong shape", field=f"tensors.layers.{i}.{name}.weight",
                                        expected=str(list(shapes[name])), actual=str(list(lin.weight.shape)))
        self.head = None
        if self.task.get("kind") == "classify":
            self.head = (load_linear(tensors, "pooler", scheme=str(scheme)),
                         load_linear(tensors, "classifier", scheme=str(scheme)))
            if self.head[0].weight.shape != (hid, hid) or self.head[1].weight.shape != (
                    len(self.task.get("labels", ())), hid):
                raise ArtifactError("pooler/classifier shape differs from hidden size and label count",
                                    field="tensors.classifier.weight")
            self.head = (ops.prepare_linear(self.head[0]), ops.prepare_linear(self.head[1]))
        # backend copies of everything the forward reads
        self.layers = [{"qkv": ops.prepare_linear(fuse_linears([lay["attn.q"], lay["attn.k"], lay["attn.v"]])),
                        **{name: ops.prepare_linear(lay[name]) for name in ("attn.o", "ffn.up", "ffn.down")}}
                       for lay in self.layers]      # q|k|v share their input: fused, same integers
        self.word_emb = ops.prepare_embedding(tensors, "embeddings.word")
        self.k_pos, self.k_type = ops.const(tensors["embeddings.position"]), ops.const(tensors["embeddings.token_type"])
        self.k_exp, self.k_rsqrt, self.k_cdf, self.k_tanh = (ops.const(a) for a in (self.exp, self.rsqrt, self.cdf,
                                                                                   self.tanh))
        self.norms = {n: (ops.const(tensors[f"{n}.gamma"]), ops.const(tensors[f"{n}.beta"]))
                      for n in ["embeddings.ln"] + [f"layers.{i}.{ln}" for i in range(checked["num_hidden_layers"])
                                                    for ln in ("attn_ln", "ffn_ln")]}

    def _ln(self, x: Any, name: str) -> Any:
        gamma, beta = self.norms[name]                                          # [H] Q.24, [H] Q.16
        return self.ops.layer_norm(x, gamma, beta, eps_q32=self.eps, rsqrt_table=self.k_rsqrt)

    def check_ids(self, batch: Sequence[Sequence[int]]) -> None:
        """Refuse empty, over-long or out-of-vocabulary requests (RuntimeInputError naming the field)."""
        limit, vocab = self.arch["max_position_embeddings"], self.arch["vocab_size"]
        for i, ids in enumerate(batch):
            if len(ids) == 0:
                raise RuntimeInputError("empty input", field=f"inputs[{i}]", expected="at least one token")
            if len(ids) > limit:
                raise RuntimeInputError("sequence longer than the artifact's limit", field=f"inputs[{i}]",
                                        expected=f"at most {limit} tokens (max_position_embeddings)",
                                        actual=f"{len(ids)} tokens")
            for j, tok in enumerate(ids):
                if isinstance(tok, bool) or not isinstance(tok, int | np.integer) or not 0 <= tok < vocab:
                    raise RuntimeInputError("token id out of range", field=f"inputs[{i}][{j}]",
                                            expected=f"integer in [0, {vocab})", actual=repr(tok))

    def encode(self, batch: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Final hidden states of a padded batch: (h int64 [B, T, H] Q.16, valid bool [B, T])."""
        x, valid = self._encode(batch)
        return self.ops.numpy(x), valid

    def _encode(self, batch: Sequence[Sequence[int]]) -> tuple[Any, np.ndarray]:
        """:meth:`encode` with h in the backend's arrays."""
        ops = self.ops
        b, t = len(batch), max(len(ids) for ids in batch)
        ids = np.full((b, t), self.arch["pad_token_id"], dtype=np.int64)        # [B,T] token ids
        valid = np.zeros((b, t), dtype=bool)                                    # [B,T] real token?
        for i, seq in enumerate(batch):
            ids[i, :len(seq)] = np.asarray(seq, dtype=np.int64)
            valid[i, :len(seq)] = True
        x = ops.embedding(self.word_emb, ids)                                      # [B,T,H] Q.16
        x = x + self.k_pos[:t]                                                  # [B,T,H] Q.16 (+ positions 0..T-1)
        x = x + self.k_type[0]                                                  # [B,T,H] Q.16 (segment 0)
        x = self._ln(ops.saturate(x), "embeddings.ln")                          # [B,T,H] Q.16
        key_valid = ops.mask(valid[:, None, None, :])                           # [B,1,1,T] bool
        nh, d = self.heads, self.head_dim
        for i, lay in enumerate(self.layers):
            qkv = ops.linear(x, lay["qkv"])                                     # [B,T,3H] q|k|v Q.16
            hid = nh * d
            q = ops.heads(qkv[..., :hid], nh, d)                                # [B,nh,T,D] Q.16
            k = ops.heads(qkv[..., hid:2 * hid], nh, d)                         # [B,nh,T,D] Q.16
            v = ops.heads(qkv[..., 2 * hid:], nh, d)                            # [B,nh,T,D] Q.16
            ctx = ops.attention(q, k, v, key_valid, scale_mult=self.scale_m, scale_shift=self.scale_s,
                                exp_table=self.k_exp)                           # [B,nh,T,D] Q.16
            a = ops.linear(ops.merge_heads(ctx), lay["attn.o"])                 # [B,T,H] Q.16
            x = self._ln(ops.saturate(x + a), f"layers.{i}.attn_ln")           # [B,T,H] Q.16
            f = ops.gelu(ops.linear(x, lay["ffn.up"]), self.k_cdf)              # [B,T,I] Q.16
            f = ops.linear(f, lay["ffn.down"])                                  # [B,T,H] Q.16
            x = self._ln(ops.saturate(x + f), f"layers.{i}.ffn_ln")            # [B,T,H] Q.16
        return x, valid

    def _chunks(self, batch: Sequence[Sequence[int]]) -> list[list[int]]:
        order = sorted(range(len(batch)), key=lambda i: (len(batch[i]), i))
        return [order[i:i + BATCH_CHUNK] for i in range(0, len(order), BATCH_CHUNK)]

    def embed(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Mean-pooled embedding of each request: int32 [H], Q.16 (spec §6.3)."""
        self.check_ids(batch)
        out: list[np.ndarray] = [np.empty(0)] * len(batch)
        for idx in self._chunks(batch):
            h, valid = self.encode([batch[i] for i in idx])                     # [b,T,H] Q.16, [b,T]
            total = np.sum(np.where(valid[..., None], h, 0), axis=1)            # [b,H] Q.16 sum over own tokens
            n = np.sum(valid, axis=1, keepdims=True).astype(np.int64)           # [b,1] token counts
            pooled = fp.rdiv(total, n).astype(np.int32)                         # [b,H] Q.16 mean
            for row, i in enumerate(idx):
                out[i] = pooled[row]
        return out

    def classify(self, batch: Sequence[Sequence[int]]) -> list[tuple[int, np.ndarray]]:
        """(label index, logits int32 [L] Q.16) of each request (spec §6.4); argmax ties → lowest index."""
        if self.head is None:
            raise RuntimeInputError("this artifact has no classification head", field="task.kind",
                                    expected="classify", actual=str(self.task.get("kind")))
        self.check_ids(batch)
        pooler, classifier = self.head
        out: list[tuple[int, np.ndarray]] = [(0, np.empty(0))] * len(batch)
        for idx in self._chunks(batch):
            h, _ = self._encode([batch[i] for i in idx])                        # [b,T,H] Q.16 (backend)
            pooled = self.ops.tanh(self.ops.linear(h[:, 0, :], pooler), self.k_tanh)   # [b,H] Q.16
            logits = self.ops.numpy(self.ops.linear(pooled, classifier)).astype(np.int32)   # [b,L] Q.16
            for row, i in enumerate(idx):
                out[i] = (int(np.argmax(logits[row])), logits[row])
        return out
