"""The data of a generator recipe (``task.kind = "generate"``): JSON Lines files read strictly, then tokenized.

One reader for every algorithm; the schema of a file follows the algorithm of the stage that names it:

* ``prompt``/``completion`` (``schemas/completion-example.schema.json``): sft, lora, distill, and ``eval``;
* ``prompt``/``chosen``/``rejected`` (``schemas/preference-example.schema.json``): dpo, orpo, simpo;
* ``prompt``/``completion``/``label`` (``schemas/kto-example.schema.json``, ``label`` true = desirable): kto;
* ``probes`` (``schemas/generate-probe.schema.json``): ``{"id", "kind", "prompt"}`` (K-score S).

A prompt is encoded with the tokenizer's special tokens (its template, e.g. ``<|customer|> … <|bank|>``); a
completion without them, followed by the model's first EOS id. Refused with :class:`~kolm_audit.errors.InputError`
(exit 2) naming the file, the line and the field: everything :mod:`kolm_audit.compile.data` refuses (digest, JSON,
schema, duplicate id), a preference row whose chosen equals rejected, a row longer than the model's context.

Example::

    >>> import pathlib, tempfile, hashlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "pairs.jsonl"
    >>> _ = p.write_bytes(b'{"id": "a", "prompt": "hi", "chosen": "hello", "rejected": "hello"}\\n')
    >>> from kolm_audit.compile.recipe import DataFile
    >>> f = DataFile(role="pairs", path=p, sha256="sha256:" + hashlib.sha256(p.read_bytes()).hexdigest())
    >>> read_rows(f, algorithm="dpo")
    Traceback (most recent call last):
    ...
    kolm_audit.errors.InputError: ...pairs.jsonl: line 1: $.rejected: chosen and rejected are the same completion...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kolm_audit.compile.data import _lines, _norm, _unique, read_pinned
from kolm_audit.compile.recipe import DataFile, Recipe
from kolm_audit.errors import ConfigError, InputError

SCHEMAS = {"sft": "completion-example", "lora": "completion-example", "distill": "completion-example",
           "dpo": "preference-example", "orpo": "preference-example", "simpo": "preference-example",
           "kto": "kto-example"}
TEXT_FIELDS = {"completion-example": ("completion",), "preference-example": ("chosen", "rejected"),
               "kto-example": ("completion",), "generate-probe": ()}


@dataclass(frozen=True)
class Rows:
    """The rows of one data file (their texts as read), with the line number of each."""

    role: str
    file: Path
    digest: str
    schema: str
    rows: tuple[Mapping[str, Any], ...]
    lines: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class GenerateData:
    """Every data file of a generator recipe: the stages' files by role, eval, probes (what the report counts)."""

    files: Mapping[str, Rows]
    eval: Rows
    probes: Rows | None
    eval_overlap: int
    warnings: tuple[str, ...]

    @property
    def train(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(r for f in self.files.values() for r in f.rows)

    @property
    def digests(self) -> dict[str, str]:
        out = {role: f.digest for role, f in self.files.items()}
        out["eval"] = self.eval.digest
        if self.probes is not None:
            out["probes"] = self.probes.digest
        return dict(sorted(out.items()))


def read_rows(entry: DataFile, *, algorithm: str | None = None, schema: str | None = None) -> Rows:
    """Read one file (digest checked, each line validated against the algorithm's schema, ids unique)."""
    schema = schema or SCHEMAS[str(algorithm)]
    raw = read_pinned(entry)
    rows, lines = [], []
    for n, doc in _lines(raw, entry, schema):
        if schema == "preference-example" and doc["chosen"] == doc["rejected"]:
            raise InputError("chosen and rejected are the same completion: the pair prefers nothing",
                             file=str(entry.path), field=f"line {n}: $.rejected",
                             expected="a completion different from chosen", actual=repr(doc["rejected"][:80]))
        rows.append(doc)
        lines.append(n)
    if not rows:
        raise InputError("data file has no rows", file=str(entry.path), field=f"data.{entry.role}")
    _unique([r["id"] for r in rows], lines, str(entry.path))
    return Rows(role=entry.role, file=entry.path, digest=entry.sha256, schema=schema, rows=tuple(rows),
                lines=tuple(lines))


def load_generate_data(recipe: Recipe) -> GenerateData:
    """The data files the recipe's stages name, eval and probes; a role named with two schemas is refused."""
    file = str(recipe.path)
    schemas: dict[str, str] = {}
    for i, stage in enumerate(recipe.trainer["stages"]):
        role, schema = str(stage["data"]), SCHEMAS[str(stage["algorithm"])]
        where = f"trainer.stages[{i}].data"
        if role in ("eval", "probes") or role not in recipe.data:
            raise ConfigError("a stage trains on a data entry the recipe does not declare", file=file, field=where,
                              expected=" | ".join(sorted(set(recipe.data) - {"eval", "probes"})) or "a [data] entry",
                              actual=repr(role))
        if schemas.setdefault(role, schema) != schema:
            raise ConfigError("two stages read one data file with different formats", file=file, field=where,
                              expected=schemas[role], actual=schema)
    unused = sorted(set(recipe.data) - set(schemas) - {"eval", "probes"})
    if unused:
        raise ConfigError("a data file no stage trains on", file=file, field=f"data.{unused[0]}",
                          expected="an entry named by a stage's data")
    files = {role: read_rows(recipe.data[role], schema=schema) for role, schema in sorted(schemas.items())}
    evals = read_rows(recipe.data["eval"], schema="completion-example")
    probes = read_rows(recipe.data["probes"], schema="generate-probe") if "probes" in recipe.data else None
    prompts = {_norm(r["prompt"]) for f in files.values() for r in f.rows}
    overlap = sum(_norm(r["prompt"]) in prompts for r in evals.rows)
    warnings = ()
    if overlap:
        warnings = (f"{overlap} of {len(evals)} eval prompts also occur in training data ({evals.file}): "
                    "accuracy on them is not held-out accuracy",)
    return GenerateData(files=files, eval=evals, probes=probes, eval_overlap=overlap, warnings=warnings)


class Encoder:
    """Token ids of prompts (with the tokenizer's template) and completions (without it, plus EOS), checked
    against the model's context."""

    def __init__(self, tokenizer_json: bytes, *, eos: int, context: int) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        self._tok.no_truncation()
        self._tok.no_padding()
        self.eos, self.context = eos, context

    def prompt(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=True).ids)

    def completion(self, text: str) -> list[int]:
        return [*self._tok.encode(text, add_special_tokens=False).ids, self.eos]

    def rows(self, rows: Rows, *, reserve: int = 0) -> list[dict[str, Any]]:
        """Each row tokenized (``prompt`` and every completion field); ``reserve`` tokens must stay free after a
        prompt (eval and probes: room to generate at least one token)."""
        out = []
        for row, line in zip(rows.rows, rows.lines, strict=True):
            doc: dict[str, Any] = {"prompt": self.prompt(row["prompt"])}
            self._fits(len(doc["prompt"]) + reserve, rows.file, f"line {line}: $.prompt")
            for name in TEXT_FIELDS[rows.schema]:
                doc[name] = self.completion(row[name])
                self._fits(len(doc["prompt"]) + len(doc[name]), rows.file, f"line {line}: $.{name}")
            if "label" in row:
                doc["label"] = bool(row["label"])
            out.append(doc)
        return out

    def _fits(self, tokens: int, file: Path, field: str) -> None:
        if tokens > self.context:
            raise InputError("prompt and completion are longer than the model's context", file=str(file),
                             field=field, expected=f"at most {self.context} tokens (max_position_embeddings)",
                             actual=f"{tokens} tokens")


def prompts(rows: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """The prompt ids of tokenized rows."""
    return [list(r["prompt"]) for r in rows]
