"""The Python API: ``kolm_audit.load(...)`` → :class:`Model` with ``embed`` / ``classify`` / ``generate``.

``load`` verifies the artifact (strict read, every tensor digest, a trusted signature) before it returns.
Every result carries the request's token ids and the digests a receipt records; the digests are defined in
``docs/runtime-spec.md`` §8 (sha256 over RFC 8785 bytes) and computed by :mod:`kolm_audit.runtime.digests`.

Example::

    >>> import kolm_audit
    >>> model = kolm_audit.load("model.kolm", trust="trust.toml")              # doctest: +SKIP
    >>> [r.output_digest[:7] for r in model.embed(["hello world"])]           # doctest: +SKIP
    ['sha256:']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kolm_audit.errors import InputError, RuntimeInputError, UnsupportedModel
from kolm_audit.runtime import SPEC
from kolm_audit.runtime.digests import classification_digest, embedding_digest, generation_digest, input_digest
from kolm_audit.runtime.models import FamilyRuntime, load_runtime
from kolm_audit.runtime.ops import BACKENDS, Ops, get_ops
from kolm_audit.runtime.tokenize import Tokenizer, check_tokenizer_fits


@dataclass(frozen=True, eq=False)
class EmbedResult:
    input_ids: tuple[int, ...]
    input_digest: str
    embedding: np.ndarray            # int32 [H], Q.16 (integer e stands for e / 2^16)
    output_digest: str

    def to_json(self) -> dict[str, Any]:
        return {"input_ids": list(self.input_ids), "input_digest": self.input_digest,
                "embedding": [int(v) for v in self.embedding.tolist()], "embedding_format": "q16",
                "output_digest": self.output_digest}


@dataclass(frozen=True)
class ClassifyResult:
    input_ids: tuple[int, ...]
    input_digest: str
    label: str
    label_index: int
    scores: tuple[int, ...]          # logits, Q.16
    output_digest: str

    def to_json(self) -> dict[str, Any]:
        return {"input_ids": list(self.input_ids), "input_digest": self.input_digest, "label": self.label,
                "label_index": self.label_index, "scores": list(self.scores), "scores_format": "q16",
                "output_digest": self.output_digest}


@dataclass(frozen=True)
class GenerateResult:
    input_ids: tuple[int, ...]
    input_digest: str
    output_ids: tuple[int, ...]
    text: str
    finish_reason: str
    output_digest: str

    def to_json(self) -> dict[str, Any]:
        return {"input_ids": list(self.input_ids), "input_digest": self.input_digest,
                "output_ids": list(self.output_ids), "text": self.text, "finish_reason": self.finish_reason,
                "output_digest": self.output_digest}


class Model:
    """A verified ``kolm-int/1`` artifact ready to run.

    ``backend`` (``auto`` | ``numpy`` | ``cpu`` | ``cuda``) picks the implementation; :attr:`backend` records the
    one actually used (``numpy``, ``cpu`` or ``cuda``) and :attr:`threads` the torch thread count (``threads``
    argument, else ``$KOLM_THREADS``, else torch's default). Both are informational: outputs never depend on them.
    ``ops`` runs the model on a given backend object instead (e.g. ``get_ops("cpu", fused=False)``); its name is
    recorded as :attr:`backend`.
    """

    def __init__(self, *, manifest: dict[str, Any], digest: str, tensors: Mapping[str, np.ndarray],
                 backend: str = "numpy", path: Path | None = None, threads: int | None = None,
                 ops: Ops | None = None) -> None:
        if backend not in BACKENDS:
            raise InputError("backend not available in this build", field="backend",
                             expected=" | ".join(BACKENDS), actual=backend)
        if manifest.get("runtime") != SPEC:
            raise UnsupportedModel("runtime spec not supported", file=str(path) if path else None,
                                   field="runtime", expected=SPEC, actual=repr(manifest.get("runtime")))
        ops = ops if ops is not None else get_ops(backend, threads=threads)
        self.manifest, self.digest, self.backend, self.path = manifest, digest, str(ops.name), path
        self.device = "cuda" if ops.name == "cuda" else "cpu"
        self.threads: int | None = ops.threads
        self.tokenizer = Tokenizer.from_tensors(tensors)
        check_tokenizer_fits(self.tokenizer, vocab_size=int(manifest["architecture"].get("vocab_size", 0)),
                             file=str(path) if path else None)
        self._rt: FamilyRuntime = load_runtime(manifest=manifest, tensors=tensors, ops=ops,
                                               file=str(path) if path else None)

    @classmethod
    def from_artifact(cls, artifact: Any, *, backend: str = "numpy", threads: int | None = None) -> Model:
        """A Model over an already read (and verified) :class:`kolm_audit.artifact.Artifact`."""
        return cls(manifest=artifact.manifest, digest=artifact.digest, tensors=artifact.tensors, backend=backend,
                   path=artifact.path, threads=threads)

    @property
    def task(self) -> str:
        return str(self.manifest["task"].get("kind"))

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text with the artifact's own tokenizer (special tokens added, never truncated)."""
        return self.tokenizer.encode(texts)

    def _ids(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        if isinstance(inputs, str | bytes) or not isinstance(inputs, Sequence):
            raise RuntimeInputError("inputs must be a list of texts or a list of token-id lists", field="inputs")
        if all(isinstance(x, str) for x in inputs):
            return self.tokenize(list(inputs))  # type: ignore[arg-type]
        if isinstance(inputs[0], str):                    # texts, then something else: name the first other input
            i = next(i for i, x in enumerate(inputs) if not isinstance(x, str))
            raise RuntimeInputError("mixed inputs: every input must be a text, or every input a token-id list",
                                    field=f"inputs[{i}]", expected="a text, like inputs[0]",
                                    actual=type(inputs[i]).__name__)
        out = []
        for i, x in enumerate(inputs):
            if isinstance(x, str | bytes) or not isinstance(x, Sequence | np.ndarray):
                raise RuntimeInputError("mixed inputs: every input must be a text, or every input a token-id list",
                                        field=f"inputs[{i}]", actual=type(x).__name__)
            ids = list(x)
            for j, tok in enumerate(ids):
                if isinstance(tok, bool) or not isinstance(tok, int | np.integer):
                    raise RuntimeInputError("token ids must be integers", field=f"inputs[{i}][{j}]",
                                            actual=repr(tok)[:40])
            out.append([int(t) for t in ids])
        return out

    def check_inputs(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """The token ids of ``inputs`` after the runtime's own checks (empty, longer than the artifact's context,
        token id out of range), without running the model: raises :class:`RuntimeInputError` naming the input."""
        batch = self._ids(inputs)
        self._rt.check_ids(batch)
        return batch

    def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[EmbedResult]:
        """Integer (Q.16) mean-pooled embeddings of each input, with digests."""
        batch = self._ids(inputs)
        out = []
        for ids, emb in zip(batch, self._rt.embed(batch), strict=True):
            emb = np.asarray(emb, dtype=np.int32)
            emb.flags.writeable = False
            out.append(EmbedResult(input_ids=tuple(ids), input_digest=input_digest(ids), embedding=emb,
                                   output_digest=embedding_digest(emb)))
        return out

    def classify(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[ClassifyResult]:
        """Label (argmax, lowest index on ties) and integer Q.16 logits of each input, with digests."""
        if self.task != "classify":
            raise RuntimeInputError("this artifact is not a classifier", field="task.kind", expected="classify",
                                    actual=self.task)
        labels = [str(x) for x in self.manifest["task"]["labels"]]
        batch = self._ids(inputs)
        out = []
        for ids, (idx, logits) in zip(batch, self._rt.classify(batch), strict=True):
            scores = tuple(int(v) for v in logits.tolist())
            out.append(ClassifyResult(input_ids=tuple(ids), input_digest=input_digest(ids), label=labels[idx],
                                      label_index=idx, scores=scores,
                                      output_digest=classification_digest(labels[idx], scores)))
        return out

    def generate(self, inputs: Sequence[str] | Sequence[Sequence[int]], *, max_new_tokens: int = 32,
                 seed: int | None = None, temperature: int | None = None, top_k: int | None = None,
                 top_p: int | None = None) -> list[GenerateResult]:
        """Generated continuation of each input (delegates to :mod:`kolm_audit.runtime.models.llama`)."""
        if self.task != "generate":
            raise RuntimeInputError("this artifact does not generate", field="task.kind", expected="generate",
                                    actual=self.task)
        batch = self._ids(inputs)
        results = self._rt.generate(batch, max_new_tokens=max_new_tokens, seed=seed, temperature=temperature,
                                    top_k=top_k, top_p=top_p)
        out = []
        for ids, (output_ids, finish_reason) in zip(batch, results, strict=True):
            out_ids = tuple(int(t) for t in output_ids)
            out.append(GenerateResult(input_ids=tuple(ids), input_digest=input_digest(ids), output_ids=out_ids,
                                      text=self.tokenizer.decode(list(out_ids)), finish_reason=str(finish_reason),
                                      output_digest=generation_digest(out_ids, str(finish_reason))))
        return out


def load(path: str | Path, *, trust: str | Path | None = None, key: str | Path | None = None,
         backend: str = "auto", require_signature: bool = True, threads: int | None = None) -> Model:
    """Verify ``path`` (strict read, tensor digests, trusted signature) and return a runnable :class:`Model`.

    ``trust`` is a trust file (``trust.toml``), ``key`` a PEM public key trusted for every role. With
    ``require_signature=False`` and neither given, only the strict read and the tensor digests are checked.
    """
    from kolm_audit.artifact import read_artifact, verify_artifact
    from kolm_audit.trust import load_policy

    if backend not in BACKENDS:
        raise InputError("backend not available in this build", field="backend", expected=" | ".join(BACKENDS),
                         actual=backend)
    policy = None
    if trust is not None or key is not None or require_signature:
        policy = load_policy(trust=trust, keys=() if key is None else (key,), what="the artifact's signature")
    # Run exactly the tensors that were verified: one read, one hashing pass, no window for a swap.
    verified = None if policy is None else verify_artifact(path, policy=policy, require_signature=require_signature)
    art = verified.artifact if verified is not None and verified.artifact is not None else read_artifact(path)
    return Model.from_artifact(art, backend=backend, threads=threads)
