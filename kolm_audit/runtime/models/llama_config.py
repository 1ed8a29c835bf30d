"""The architecture of a Llama-family artifact (``docs/runtime-spec-llama.md`` §2): :class:`LlamaConfig`, checked
against the bounds under which every integer of the forward is proven exact.

Example::

    >>> cfg = LlamaConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
    ...     max_position_embeddings=16, rms_norm_eps="1e-05", rms_norm_eps_q32=42950, rope_theta="10000",
    ...     qkv_bias=False, o_bias=False, tie_word_embeddings=False, eos_token_ids=(2,))
    >>> cfg.to_manifest()["family"], cfg.num_attention_heads // cfg.num_key_value_heads
    ('llama', 2)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from kolm_audit.errors import ArtifactError, UnsupportedModel
from kolm_audit.runtime import fixedpoint as fp

__all__ = ["LLAMA_MODEL_TYPES", "MAX_POSITIONS", "LlamaConfig"]

LLAMA_MODEL_TYPES = ("llama", "qwen2", "mistral")
MAX_DIM = 1 << 16          # core spec §4.3: K <= 2^16 keeps every linear accumulation inside its bound
MAX_HIDDEN = 1 << 14       # core spec §5.3: RMSNorm over H <= 2^14
MAX_HEAD_DIM = 256         # core spec §5.2: attention with D <= 256
MAX_POSITIONS = 1 << 16    # core spec §5.2: attention over T <= 2^16 keys (longer contexts are capped)
MAX_VOCAB = 1 << 22        # spec §10: sampling sums 1000 · V · 2^30 stay below 2^63
_POSITIVE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "max_position_embeddings")


def _decimal(text: str, name: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise UnsupportedModel("expected a decimal string", field=name, actual=repr(text)[:40]) from None


@dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """The manifest ``architecture`` of a Llama-family artifact, validated against the spec's bounds.

    Raises :class:`UnsupportedModel` naming the field; :meth:`from_manifest` turns that into an
    :class:`ArtifactError` (a stored artifact that breaks a bound is a finding, not a request we cannot serve).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: str                 # decimal text of the HF value
    rms_norm_eps_q32: int             # rnd(eps · 2^32)
    rope_theta: str                   # decimal text
    qkv_bias: bool
    o_bias: bool
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.model_type not in LLAMA_MODEL_TYPES:
            raise UnsupportedModel("not a Llama-family model", field="model_type",
                                   expected=" | ".join(LLAMA_MODEL_TYPES), actual=repr(self.model_type))
        for name in _POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UnsupportedModel("expected a positive integer", field=name, actual=repr(value))
        heads, kv_heads = self.num_attention_heads, self.num_key_value_heads
        if kv_heads > heads or heads % kv_heads:
            raise UnsupportedModel("attention heads must be a multiple of KV heads", field="num_key_value_heads",
                                   actual=str(kv_heads))
        if self.head_dim % 2:
            raise UnsupportedModel("head_dim must be a positive even integer", field="head_dim",
                                   actual=repr(self.head_dim))
        limits = (("hidden_size", self.hidden_size, MAX_HIDDEN), ("intermediate_size", self.intermediate_size, MAX_DIM),
                  ("head_dim", self.head_dim, MAX_HEAD_DIM), ("num_attention_heads", heads * self.head_dim, MAX_DIM),
                  ("vocab_size", self.vocab_size, MAX_VOCAB),
                  ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS))
        for name, value, limit in limits:
            if value > limit:
                raise UnsupportedModel("dimension too large for kolm-int/1", field=name, expected=f"at most {limit}",
                                       actual=str(value))
        if not 0 < _decimal(self.rms_norm_eps, "rms_norm_eps") < 1:
            raise UnsupportedModel("bad rms_norm_eps", field="rms_norm_eps", actual=repr(self.rms_norm_eps))
        if self.rms_norm_eps_q32 != fp.eps_q32(self.rms_norm_eps):
            raise UnsupportedModel("architecture fields disagree", field="rms_norm_eps_q32",
                                   expected=str(fp.eps_q32(self.rms_norm_eps)), actual=str(self.rms_norm_eps_q32))
        if not _decimal(self.rope_theta, "rope_theta") > 1:
            raise UnsupportedModel("bad rope_theta", field="rope_theta", actual=repr(self.rope_theta))
        eos = self.eos_token_ids
        if list(eos) != sorted(set(eos)) or any(
                isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size for t in eos):
            raise UnsupportedModel("bad eos_token_id", field="eos_token_id", actual=repr(list(eos)))

    @classmethod
    def from_manifest(cls, arch: Mapping[str, Any]) -> LlamaConfig:
        """Validate a stored ``architecture`` object (raises :class:`ArtifactError` naming ``architecture.<field>``)."""
        fields: dict[str, Any] = {}
        for name, typ in cls.__annotations__.items():
            want = {"int": int, "str": str, "bool": bool, "tuple[int, ...]": list}[typ]
            value = arch.get(name)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ArtifactError("bad Llama architecture field", field=f"architecture.{name}",
                                    expected=want.__name__, actual=repr(value))
            fields[name] = tuple(value) if want is list else value
        if arch.get("family") != "llama":
            raise ArtifactError("bad Llama architecture field", field="architecture.family", expected="llama",
                                actual=repr(arch.get("family")))
        try:
            return cls(**fields)
        except UnsupportedModel as exc:
            raise ArtifactError(exc.message, field=f"architecture.{exc.field}", expected=exc.expected,
                                actual=exc.actual) from None

    def to_manifest(self) -> dict[str, Any]:
        """The manifest ``architecture`` object (integers, strings, booleans: no floats)."""
        return {"family": "llama", **asdict(self), "eos_token_ids": list(self.eos_token_ids)}
