"""The data a recipe pins: JSON Lines files, read strictly after their sha256 is checked.

* train / eval (``schemas/classify-example.schema.json``): one ``{"id", "text", "label"}`` object per line;
* probes (``schemas/fairness-probe.schema.json``): ``{"id", "attribute", "variants": [text, …]}`` — texts that
  differ only in a protected attribute (K-score S).

Refused with :class:`~kolm_audit.errors.InputError` (exit 2) naming the file, the line and the field: a file whose
bytes do not match the pinned digest, a line that is not one JSON object or fails the schema, a duplicate id, a
label the recipe does not declare, a declared label missing from train, an eval label that never occurs in train.
An eval text that also occurs in train (compared after case folding and whitespace collapsing) is a warning, counted
in the compile report.

Example::

    >>> import pathlib, tempfile, hashlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "train.jsonl"
    >>> _ = p.write_bytes(b'{"id": "a", "label": "yes", "text": "ok"}\\n{"id": "b", "label": "no", "text": "bad"}\\n')
    >>> from kolm_audit.compile.recipe import DataFile
    >>> f = DataFile(role="train", path=p, sha256="sha256:" + hashlib.sha256(p.read_bytes()).hexdigest())
    >>> read_examples(f, labels=("no", "yes")).labels
    (1, 0)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kolm_audit.canonical import DIGEST_PREFIX, no_duplicate_keys
from kolm_audit.compile.recipe import DataFile, Recipe
from kolm_audit.errors import InputError, KolmError
from kolm_audit.schemas import validate


@dataclass(frozen=True)
class Examples:
    """Labelled texts of one file (labels as indexes into the recipe's ``task.labels``)."""

    file: Path
    digest: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    lines: tuple[int, ...]                # line number of each example in its file

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Probes:
    """Fairness probes: each a tuple of texts that must all get the same decision."""

    file: Path
    digest: str
    ids: tuple[str, ...]
    attributes: tuple[str, ...]
    variants: tuple[tuple[str, ...], ...]
    lines: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.variants)


@dataclass(frozen=True)
class TrainingData:
    train: Examples
    eval: Examples
    probes: Probes | None
    eval_overlap: int                     # eval texts that also occur in train (normalised)
    warnings: tuple[str, ...] = field(default=())

    @property
    def digests(self) -> dict[str, str]:
        out = {"train": self.train.digest, "eval": self.eval.digest}
        if self.probes is not None:
            out["probes"] = self.probes.digest
        return out


def read_pinned(entry: DataFile) -> bytes:
    """The file's bytes, after checking them against the digest the recipe pins."""
    try:
        raw = entry.path.read_bytes()
    except FileNotFoundError:
        raise InputError("data file not found", file=str(entry.path), field=f"data.{entry.role}.path") from None
    except OSError as exc:
        raise InputError(f"cannot read the data file ({exc.strerror})", file=str(entry.path),
                         field=f"data.{entry.role}.path") from None
    got = DIGEST_PREFIX + hashlib.sha256(raw).hexdigest()
    if got != entry.sha256:
        raise InputError("file does not match the digest pinned in the recipe", file=str(entry.path),
                         field=f"data.{entry.role}.sha256", expected=entry.sha256, actual=got)
    return raw


def _lines(raw: bytes, entry: DataFile, schema: str) -> Iterator[tuple[int, dict[str, Any]]]:
    file = str(entry.path)
    if raw and not raw.endswith(b"\n"):
        raw += b"\n"
    for n, line in enumerate(raw.split(b"\n")[:-1], start=1):
        where = f"line {n}"
        try:
            doc = json.loads(line.decode("utf-8"), object_pairs_hook=no_duplicate_keys)
        except UnicodeDecodeError:
            raise InputError("not UTF-8", file=file, field=where) from None
        except ValueError as exc:
            raise InputError(f"not a JSON object ({exc})", file=file, field=where) from None
        try:
            validate(doc, schema, source=file, error=InputError)
        except KolmError as exc:
            raise InputError(exc.message, file=file, field=f"{where}: {exc.field}") from None
        yield n, doc


def _unique(ids: Sequence[str], lines: Sequence[int], file: str) -> None:
    seen: dict[str, int] = {}
    for i, line in zip(ids, lines, strict=True):
        if i in seen:
            raise InputError("duplicate id", file=file, field=f"line {line}: $.id",
                             expected=f"an id not used before (line {seen[i]} has {i!r})", actual=repr(i))
        seen[i] = line


def read_examples(entry: DataFile, *, labels: Sequence[str]) -> Examples:
    """Read a train or eval file (digest checked, every line validated, labels mapped to indexes)."""
    raw = read_pinned(entry)
    index = {name: i for i, name in enumerate(labels)}
    ids, texts, ys, lines = [], [], [], []
    for n, doc in _lines(raw, entry, "classify-example"):
        if doc["label"] not in index:
            raise InputError("label not declared in the recipe's task.labels", file=str(entry.path),
                             field=f"line {n}: $.label", expected=" | ".join(labels), actual=repr(doc["label"]))
        ids.append(doc["id"])
        texts.append(doc["text"])
        ys.append(index[doc["label"]])
        lines.append(n)
    if not texts:
        raise InputError("data file has no examples", file=str(entry.path), field=f"data.{entry.role}")
    _unique(ids, lines, str(entry.path))
    return Examples(file=entry.path, digest=entry.sha256, ids=tuple(ids), texts=tuple(texts), labels=tuple(ys),
                    lines=tuple(lines))


def read_probes(entry: DataFile) -> Probes:
    """Read a probes file (digest checked, every line validated)."""
    raw = read_pinned(entry)
    ids, attrs, variants, lines = [], [], [], []
    for n, doc in _lines(raw, entry, "fairness-probe"):
        ids.append(doc["id"])
        attrs.append(doc["attribute"])
        variants.append(tuple(doc["variants"]))
        lines.append(n)
    if not variants:
        raise InputError("probes file has no probes", file=str(entry.path), field="data.probes")
    _unique(ids, lines, str(entry.path))
    return Probes(file=entry.path, digest=entry.sha256, ids=tuple(ids), attributes=tuple(attrs),
                  variants=tuple(variants), lines=tuple(lines))


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def load_data(recipe: Recipe) -> TrainingData:
    """Every data file of ``recipe``, checked (digests, schema, labels) and cross-checked (eval vs train)."""
    labels = recipe.labels
    train = read_examples(recipe.data["train"], labels=labels)
    evals = read_examples(recipe.data["eval"], labels=labels)
    seen = set(train.labels)
    missing = [labels[i] for i in range(len(labels)) if i not in seen]
    for i, y in enumerate(evals.labels):
        if y not in seen:
            raise InputError("eval label never occurs in train: the model cannot learn it", file=str(evals.file),
                             field=f"line {evals.lines[i]}: $.label", expected="a label present in train",
                             actual=repr(labels[y]))
    if missing:
        raise InputError("declared label never occurs in train", file=str(train.file), field="task.labels",
                         expected="at least one train example per label", actual=", ".join(map(repr, missing)))
    probes = read_probes(recipe.data["probes"]) if "probes" in recipe.data else None
    train_texts = {_norm(t) for t in train.texts}
    overlap = sum(_norm(t) in train_texts for t in evals.texts)
    warnings = ()
    if overlap:
        warnings = (f"{overlap} of {len(evals)} eval texts also occur in train ({evals.file}): accuracy on them "
                    "is not held-out accuracy",)
    return TrainingData(train=train, eval=evals, probes=probes, eval_overlap=overlap, warnings=warnings)
