"""BERT family for ``kolm-int/1``: the integer-only forward (spec §6).

Post-LN encoder: absolute position embeddings, LayerNorm, erf-GELU, bidirectional attention with padding
masks; tasks ``embed`` (mean pooling over the request's own tokens) and ``classify`` with one of two heads:
``pooling = "cls-pooler"`` (pooler tanh on ``[CLS]`` + linear, as HF ``BertForSequenceClassification``) or
``pooling = "mean"`` (a linear classifier on the mean-pooled embedding, as compile's trainers build it); argmax
with lowest-index tie-break. Every tensor line below says its shape, dtype
and fixed-point format; nothing here touches a float. Building an artifact is
:mod:`kolm_audit.compile.bert`.

Example::

    >>> cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...     intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, layer_norm_eps="1e-12",
    ...     layer_norm_eps_q32=0, pad_token_id=0)
    >>> cfg.head_dim, cfg.to_manifest()["family"]
    (8, 'bert')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from itertools import accumulate, chain
from typing import Any

import numpy as np

from kolm_audit.errors import ArtifactError, RuntimeInputError, UnsupportedModel, naming_file
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime.models import Generation, check_token_ids
from kolm_audit.runtime.ops import NumpyOps, Ops, fuse_linears
from kolm_audit.runtime.tables import EXP_LEN, SIG_LEN, load_table
from kolm_audit.runtime.weights import check_embedding, load_linear, need_tensor, quantization_params

MAX_DIM = 1 << 16          # spec §4.3: K <= 2^16 and T <= 2^16 keep every accumulation inside its bound
MAX_HIDDEN = 1 << 14       # spec §5.3: norms over H <= 2^14
MAX_HEAD_DIM = 256         # spec §5.2
MAX_FIELD = 1 << 20        # any size field
BATCH_CHUNK = 32           # requests per packed forward (results never depend on it)
_FIXED = {"family": "bert", "model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
CLASSIFY_POOLINGS = ("cls-pooler", "mean")   # spec §6.4; a classify task without "pooling" is "cls-pooler"


@dataclass(frozen=True, kw_only=True)
class BertConfig:
    """The manifest ``architecture`` of a BERT artifact, validated against the spec's bounds.

    Raises :class:`UnsupportedModel` naming the field (:meth:`from_manifest` names the file ``architecture``).
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: str               # decimal text of the HF value
    layer_norm_eps_q32: int           # rnd(eps · 2^32)
    pad_token_id: int

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_FIELD:
                raise UnsupportedModel("expected a positive integer", field=name, actual=repr(value))
        if self.hidden_size % self.num_attention_heads:
            raise UnsupportedModel("hidden_size must be a multiple of num_attention_heads", field="num_attention_heads",
                                   actual=str(self.num_attention_heads))
        for name, limit in (("hidden_size", MAX_HIDDEN), ("intermediate_size", MAX_DIM),
                            ("max_position_embeddings", MAX_DIM)):
            if getattr(self, name) > limit:
                raise UnsupportedModel(f"above the kolm-int/1 limit {limit}", field=name,
                                       actual=str(getattr(self, name)))
        if self.head_dim > MAX_HEAD_DIM:
            raise UnsupportedModel(f"head dimension above {MAX_HEAD_DIM}", field="num_attention_heads")
        try:
            eps = Decimal(self.layer_norm_eps)
        except (InvalidOperation, TypeError):
            raise UnsupportedModel("expected a decimal string", field="layer_norm_eps",
                                   actual=repr(self.layer_norm_eps)[:40]) from None
        if not 0 <= eps < 1:
            raise UnsupportedModel("expected a small non-negative number", field="layer_norm_eps",
                                   actual=repr(self.layer_norm_eps))
        if self.layer_norm_eps_q32 != fp.eps_q32(self.layer_norm_eps):
            raise UnsupportedModel("layer_norm_eps_q32 does not match layer_norm_eps", field="layer_norm_eps_q32",
                                   expected=str(fp.eps_q32(self.layer_norm_eps)))
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int) or self.pad_token_id < 0:
            raise UnsupportedModel("expected a non-negative integer", field="pad_token_id",
                                   actual=repr(self.pad_token_id))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_manifest(cls, arch: Mapping[str, Any]) -> BertConfig:
        """Validate a stored ``architecture`` object (errors name the file ``architecture`` and the field)."""
        with naming_file("architecture"):
            for name, value in _FIXED.items():
                if arch.get(name) != value:
                    raise UnsupportedModel("unsupported value", field=name, expected=value, actual=repr(arch.get(name)))
            eps = arch.get("layer_norm_eps")
            return cls(**{name: arch.get(name) for name in cls.__annotations__ if name != "layer_norm_eps"},
                       layer_norm_eps=eps if isinstance(eps, str) else repr(eps))

    def to_manifest(self) -> dict[str, Any]:
        """The manifest ``architecture`` object (integers and strings only)."""
        return {**_FIXED, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class _Tables:
    """The integer tables a BERT forward reads."""

    exp: np.ndarray            # [4097] Q.30 exp(-i/128)
    rsqrt: np.ndarray          # [3073] Q.30
    cdf: np.ndarray            # [2049] Q.30 Φ(x)
    tanh: np.ndarray           # [2049] Q.30
    scale: tuple[int, int]     # attention scale (M, S): M / 2^S ≈ 1/sqrt(D)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray]) -> _Tables:
        m, s = (int(v) for v in load_table(tensors, "tables.attn_scale", (2,)))
        if not ((1 << 30) <= m < (1 << 31) and 30 <= s <= 40):
            raise ArtifactError("attention scale out of range", field="tensors.tables.attn_scale",
                                expected="[M, S] with 2^30 <= M < 2^31, 30 <= S <= 40")
        return cls(exp=load_table(tensors, "tables.exp", (EXP_LEN,)),
                   rsqrt=load_table(tensors, "tables.rsqrt", (fp.RSQRT_TABLE_LEN,)),
                   cdf=load_table(tensors, "tables.gelu_cdf", (SIG_LEN,)),
                   tanh=load_table(tensors, "tables.tanh", (SIG_LEN,)), scale=(m, s))


class BertRuntime:
    """The integer BERT forward over an artifact's tensors (build one with :meth:`from_tensors`).

    ``ops`` is the backend (:class:`kolm_audit.runtime.ops.NumpyOps`, the reference, by default; or a torch
    backend): every backend yields the same integers.
    """

    def __init__(self, *, config: BertConfig, task: Mapping[str, Any], tables: _Tables, layers: list[dict[str, Any]],
                 head: tuple[Any, Any] | None, word_emb: Any, position: np.ndarray, token_type: np.ndarray,
                 norms: Mapping[str, tuple[Any, Any]], ops: Ops) -> None:
        self.cfg, self.task, self.ops, self.layers, self.head = config, dict(task), ops, layers, head
        self.word_emb, self.norms = word_emb, norms
        self.k_pos_type = ops.const(np.asarray(position, dtype=np.int64) + np.asarray(token_type, dtype=np.int64)[0])
        self.heads, self.head_dim, self.eps = config.num_attention_heads, config.head_dim, config.layer_norm_eps_q32
        self.scale_m, self.scale_s = tables.scale
        self.k_exp, self.k_rsqrt, self.k_cdf, self.k_tanh = (ops.const(a) for a in (tables.exp, tables.rsqrt,
                                                                                   tables.cdf, tables.tanh))
        # the constant operands of a one-kernel forward (ops.encode_forward, where the backend has it)
        self._encode_consts = {
            "word_emb": word_emb, "pos_type": self.k_pos_type, "emb_norm": norms["embeddings.ln"], "layers": layers,
            "layer_norms": tuple((*norms[f"layers.{i}.attn_ln"], *norms[f"layers.{i}.ffn_ln"])
                                 for i in range(len(layers))),
            "eps_q32": self.eps, "rsqrt_table": self.k_rsqrt, "heads": self.heads, "head_dim": self.head_dim,
            "scale_mult": self.scale_m, "scale_shift": self.scale_s, "exp_table": self.k_exp, "cdf_table": self.k_cdf}

    @classmethod
    def from_tensors(cls, *, architecture: Mapping[str, Any], quantization: Mapping[str, Any],
                     task: Mapping[str, Any], tensors: Mapping[str, np.ndarray], ops: Ops | None = None) -> BertRuntime:
        """Check an artifact's manifest parts and tensors against the spec and load them onto ``ops``."""
        ops = ops or NumpyOps()
        cfg = BertConfig.from_manifest(architecture)
        if task.get("kind") not in ("embed", "classify"):
            raise UnsupportedModel("a BERT artifact embeds or classifies", field="task.kind",
                                   expected="embed | classify", actual=repr(task.get("kind")))
        scheme = str(quantization.get("scheme"))
        quantization_params(scheme)
        tables = _Tables.from_tensors(tensors)
        hid, inter = cfg.hidden_size, cfg.intermediate_size
        check_embedding(tensors, "embeddings.word", rows=cfg.vocab_size, dim=hid)
        need_tensor(tensors, "embeddings.position", "int32", (cfg.max_position_embeddings, hid))
        need_tensor(tensors, "embeddings.token_type", "int32", (cfg.type_vocab_size, hid))
        norm_names = ["embeddings.ln"] + [f"layers.{i}.{ln}" for i in range(cfg.num_hidden_layers)
                                          for ln in ("attn_ln", "ffn_ln")]
        for ln in norm_names:
            need_tensor(tensors, f"{ln}.gamma", "int32", (hid,))
            need_tensor(tensors, f"{ln}.beta", "int32", (hid,))
        shapes = {"attn.q": (hid, hid), "attn.k": (hid, hid), "attn.v": (hid, hid), "attn.o": (hid, hid),
                  "ffn.up": (inter, hid), "ffn.down": (hid, inter)}
        loaded = [{name: load_linear(tensors, f"layers.{i}.{name}", scheme=scheme) for name in shapes}
                  for i in range(cfg.num_hidden_layers)]
        for i, lay in enumerate(loaded):
            for name, lin in lay.items():
                if lin.weight.shape != shapes[name]:
                    raise ArtifactError("linear weight has the wrong shape", field=f"tensors.layers.{i}.{name}.weight",
                                        expected=str(list(shapes[name])), actual=str(list(lin.weight.shape)))
        head = None
        if task.get("kind") == "classify":
            pooling = task.get("pooling", "cls-pooler")
            if pooling not in CLASSIFY_POOLINGS:
                raise UnsupportedModel("unknown classification head", field="task.pooling",
                                       expected=" | ".join(CLASSIFY_POOLINGS), actual=repr(pooling))
            classifier = load_linear(tensors, "classifier", scheme=scheme)
            if classifier.weight.shape != (len(task.get("labels", ())), hid):
                raise ArtifactError("classifier shape differs from label count and hidden size",
                                    field="tensors.classifier.weight")
            pooler = None
            if pooling == "cls-pooler":
                pooler = load_linear(tensors, "pooler", scheme=scheme)
                if pooler.weight.shape != (hid, hid):
                    raise ArtifactError("pooler shape differs from the hidden size", field="tensors.pooler.weight")
            head = (None if pooler is None else ops.prepare_linear(pooler), ops.prepare_linear(classifier))
        layers = [{"qkv": ops.prepare_linear(fuse_linears([lay["attn.q"], lay["attn.k"], lay["attn.v"]])),
                   **{name: ops.prepare_linear(lay[name]) for name in ("attn.o", "ffn.up", "ffn.down")}}
                  for lay in loaded]      # q|k|v share their input: fused, same integers
        return cls(config=cfg, task=task, tables=tables, layers=layers, head=head,
                   word_emb=ops.prepare_embedding(tensors, "embeddings.word"), position=tensors["embeddings.position"],
                   token_type=tensors["embeddings.token_type"],
                   norms={n: (ops.const(tensors[f"{n}.gamma"]), ops.const(tensors[f"{n}.beta"])) for n in norm_names},
                   ops=ops)

    def _ln(self, x: Any, name: str) -> Any:
        gamma, beta = self.norms[name]                                          # [H] Q.24, [H] Q.16
        return self.ops.layer_norm(x, gamma, beta, eps_q32=self.eps, rsqrt_table=self.k_rsqrt)

    def check_ids(self, batch: Sequence[Sequence[int]]) -> None:
        """Refuse empty, over-long or out-of-vocabulary requests (RuntimeInputError naming the field)."""
        check_token_ids(batch, limit=self.cfg.max_position_embeddings, vocab=self.cfg.vocab_size)

    def encode(self, batch: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Final hidden states of a padded batch: (h int64 [B, T, H] Q.16, valid bool [B, T]); a padding position
        repeats its request's first row (padding is never read, spec §6.1)."""
        self.check_ids(batch)
        if len(batch) == 0:
            return np.zeros((0, 0, self.cfg.hidden_size), np.int64), np.zeros((0, 0), bool)
        x, valid = self._encode(batch)
        return self.ops.numpy(x), valid

    def _encode(self, batch: Sequence[Sequence[int]]) -> tuple[Any, np.ndarray]:
        """:meth:`encode` with h in the backend's arrays (the packed forward, then gathered into [B, T])."""
        x, bounds = self._forward(batch)                                        # [N,H] Q.16, [B+1]
        lens = np.diff(bounds)                                                  # [B] tokens per request
        steps = np.arange(int(lens.max()))[None, :]                             # [1,T]
        valid = steps < lens[:, None]                                           # [B,T] real token?
        rows = np.where(valid, bounds[:-1, None] + steps, bounds[:-1, None])    # [B,T] packed row of each position
        h = self.ops.take(x, rows.reshape(-1))                                  # [B·T,H] Q.16
        return h.reshape(len(batch), steps.shape[1], -1), valid

    def _forward(self, batch: Sequence[Sequence[int]]) -> tuple[Any, np.ndarray]:
        """The forward of every request packed without padding (each one's result is the same alone or in any
        batch: attention only combines a request's own rows). Returns (h [N, H] Q.16 in the backend's arrays,
        bounds int64 [B+1]: request ``i`` owns rows ``bounds[i]:bounds[i+1]``)."""
        ops = self.ops
        lens = [len(ids) for ids in batch]                                      # [B] tokens per request
        bounds = np.fromiter(accumulate(lens, initial=0), np.int64, len(lens) + 1)   # [B+1] row ranges
        n = int(bounds[-1])
        ids = np.fromiter(chain.from_iterable(batch), np.int64, n)             # [N] token ids
        pos = np.fromiter(chain.from_iterable(map(range, lens)), np.int64, n)  # [N] position in own request
        whole = getattr(ops, "encode_forward", None)                            # the backend's one-kernel forward
        x = None if whole is None else whole(ids, pos, bounds, **self._encode_consts)   # [N,H] Q.16 | None
        if x is not None:
            return x, bounds
        x = ops.embedding(self.word_emb, ids, add=self.k_pos_type, add_rows=pos)   # [N,H] Q.16 sat(word+pos+type 0)
        x = self._ln(x, "embeddings.ln")                                        # [N,H] Q.16
        for i in range(len(self.layers)):
            x = self._layer(i, x, bounds)                                       # [N,H] Q.16
        return x, bounds

    def _layer(self, i: int, x: Any, bounds: np.ndarray) -> Any:
        """Encoder layer ``i`` (spec §6.1) on the packed rows x [N, H] Q.16 of requests ``bounds``."""
        ops, lay, eps, rs = self.ops, self.layers[i], self.eps, self.k_rsqrt
        (g_attn, b_attn), (g_ffn, b_ffn) = self.norms[f"layers.{i}.attn_ln"], self.norms[f"layers.{i}.ffn_ln"]
        qkv = ops.linear(x, lay["qkv"])                                         # [N,3H] q|k|v Q.16
        ctx = ops.segment_attention(qkv, bounds, heads=self.heads, head_dim=self.head_dim, scale_mult=self.scale_m,
                                    scale_shift=self.scale_s, exp_table=self.k_exp)   # [N,H] Q.16 per request
        _, x = ops.linear_norm(ctx, lay["attn.o"], residual=x, gamma=g_attn, beta=b_attn, eps_q32=eps,
                               rsqrt_table=rs)                                  # [N,H] Q.16 LN(sat(x + o))
        f = ops.linear_gelu(x, lay["ffn.up"], self.k_cdf)                       # [N,I] Q.16 gelu(up)
        _, x = ops.linear_norm(f, lay["ffn.down"], residual=x, gamma=g_ffn, beta=b_ffn, eps_q32=eps,
                               rsqrt_table=rs)                                  # [N,H] Q.16 LN(sat(x + down))
        return x

    def _chunks(self, batch: Sequence[Sequence[int]]) -> list[list[int]]:
        order = sorted(range(len(batch)), key=lambda i: (len(batch[i]), i))
        return [order[i:i + BATCH_CHUNK] for i in range(0, len(order), BATCH_CHUNK)]

    def _mean_pool(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Mean over each request's own tokens of the final hidden states: int64 [b,H] Q.16 (spec §6.3)."""
        x, bounds = self._forward(batch)                                        # [N,H] Q.16, [b+1] (packed)
        pool = getattr(self.ops, "mean_pool", None)                             # the backend's one-kernel mean
        if pool is not None:
            return pool(x, bounds)                                              # [b,H] Q.16 mean
        h = self.ops.numpy(x).astype(np.int64, copy=False)                      # [N,H] Q.16 (host)
        total = np.add.reduceat(h, bounds[:-1], axis=0)                         # [b,H] Q.16 sum over own tokens
        return fp.rdiv(total, np.diff(bounds)[:, None])                         # [b,H] Q.16 mean

    def embed(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Mean-pooled embedding of each request: int32 [H], Q.16 (spec §6.3)."""
        self.check_ids(batch)
        out: list[np.ndarray] = [np.empty(0)] * len(batch)
        for idx in self._chunks(batch):
            pooled = self._mean_pool([batch[i] for i in idx]).astype(np.int32)  # [b,H] Q.16
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
            if pooler is None:                                                  # task.pooling == "mean"
                pooled = self.ops.const(self._mean_pool([batch[i] for i in idx]))   # [b,H] Q.16
            else:                                                               # "cls-pooler"
                h, _ = self._encode([batch[i] for i in idx])                    # [b,T,H] Q.16 (backend)
                pooled = self.ops.tanh(self.ops.linear(h[:, 0, :], pooler), self.k_tanh)   # [b,H] Q.16
            logits = self.ops.numpy(self.ops.linear(pooled, classifier)).astype(np.int32)   # [b,L] Q.16
            for row, i in enumerate(idx):
                out[i] = (int(np.argmax(logits[row])), logits[row])
        return out

    def generate(self, batch: Sequence[Sequence[int]], *, max_new_tokens: int, seed: int | None = None,
                 temperature: int | None = None, top_k: int | None = None,
                 top_p: int | None = None) -> list[Generation]:
        raise RuntimeInputError("this artifact does not generate", field="task.kind", expected="generate",
                                actual=str(self.task.get("kind")))
