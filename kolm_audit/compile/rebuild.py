"""``rebuild``: compile a recipe again in a fresh process and compare the result with an existing artifact.

The fresh process (``python -m kolm_audit.compile.rebuild --worker …``) runs :func:`kolm_audit.compile.build.build`
— every pin checked, the trainer, V, the K-score — and writes the unsigned result; nothing is shared with the
caller's process (no cached features, tables or imported state). Then:

* ``identical`` — the same artifact digest (the manifest names every tensor's sha256, the recipe, the data, the
  K-score): the recipe builds exactly this file's contents (signatures aside);
* ``environment-differs`` — a float (``torch``) trainer's artifact differs, and so does the environment it recorded
  (software versions and pins in ``provenance.build.environment``, or the CPU named by the provenance statement
  beside the artifact): that trainer promises reproducibility in the same environment only;
* ``mismatch`` — anything else, with the tensor-level difference of ``kolm-audit diff``.

Example::

    >>> result = rebuild("model.kolm", "recipe.toml")                       # doctest: +SKIP
    >>> result.status, result.to_json()["schema"]                           # doctest: +SKIP
    ('identical', 'kolm.rebuild-report/1')
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kolm_audit import errors
from kolm_audit.artifact.file import Artifact, read_artifact
from kolm_audit.errors import InputError, KolmError

REPORT_SCHEMA = "kolm.rebuild-report/1"


@dataclass(frozen=True)
class RebuildResult:
    status: str                              # identical | environment-differs | mismatch
    artifact: str
    recipe: str
    original_digest: str
    rebuilt_digest: str
    environment_differences: tuple[dict[str, Any], ...]
    diff: Mapping[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        from kolm_audit.schemas import validate

        doc = {"schema": REPORT_SCHEMA, "status": self.status, "artifact": self.artifact, "recipe": self.recipe,
               "original_digest": self.original_digest, "rebuilt_digest": self.rebuilt_digest,
               "environment_differences": list(self.environment_differences),
               "diff": None if self.diff is None else dict(self.diff)}
        validate(doc, "rebuild-report")
        return doc


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


def environment_differences(original: Artifact, rebuilt: Artifact) -> list[dict[str, Any]]:
    """What differs between the environments the two builds recorded (float trainers only; [] otherwise): the
    manifest's ``provenance.build.environment`` and the CPU model named by the original's provenance statement."""
    build_a, build_b = original.manifest["provenance"]["build"], rebuilt.manifest["provenance"]["build"]
    if build_a.get("trainer") != "torch":
        return []
    a = _flat("", build_a.get("environment", {}), {})
    b = _flat("", build_b.get("environment", {}), {})
    out = [{"name": k, "recorded": _text(a.get(k)), "here": _text(b.get(k))}
           for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if original.path is not None:
        from kolm_audit.compile.provenance import machine_facts, provenance_path, read_provenance

        prov = provenance_path(original.path)
        if prov.is_file():
            recorded = read_provenance(prov).byproducts.get("build-machine", {}).get("cpu_model")
            here = machine_facts()["cpu_model"]
            if recorded is not None and recorded != here:
                out.append({"name": "cpu_model", "recorded": str(recorded), "here": here})
    return out


def _text(value: Any) -> str | None:
    return None if value is None else json.dumps(value) if not isinstance(value, str) else value


def _raise_from(result: Path) -> None:
    doc = json.loads(result.read_text(encoding="utf-8"))
    cls = getattr(errors, str(doc.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, KolmError)):
        cls = InputError
    raise cls(doc.get("message", "rebuild failed"), file=doc.get("file"), field=doc.get("field"),
              expected=doc.get("expected"), actual=doc.get("actual"))


def compare(original: Artifact, rebuilt: Artifact, *, recipe: str | Path) -> RebuildResult:
    """The verdict on ``original`` given the artifact ``rebuilt`` from ``recipe`` (see the module docstring)."""
    from kolm_audit.replay.diff import DIFF_SCHEMA, artifact_side, diff_artifacts
    from kolm_audit.schemas import validate

    name = str(original.path) if original.path is not None else "artifact"
    if rebuilt.digest == original.digest:
        return RebuildResult(status="identical", artifact=name, recipe=str(recipe), original_digest=original.digest,
                             rebuilt_digest=rebuilt.digest, environment_differences=(), diff=None)
    env = environment_differences(original, rebuilt)
    details = diff_artifacts(artifact_side(original), artifact_side(rebuilt))
    details.pop("identical")
    diff = {"schema": DIFF_SCHEMA, "kind": "artifact", "a": name, "b": f"rebuilt from {recipe}", "identical": False,
            "details": details}
    validate(diff, "diff-report")
    return RebuildResult(status="environment-differs" if env else "mismatch", artifact=name, recipe=str(recipe),
                         original_digest=original.digest, rebuilt_digest=rebuilt.digest,
                         environment_differences=tuple(env), diff=diff)


def rebuild(artifact: str | Path, recipe: str | Path, *, backend: str = "auto", threads: int | None = None,
            progress: bool = False, keep: str | Path | None = None) -> RebuildResult:
    """Recompile ``recipe`` in a fresh process and :func:`compare` the result with ``artifact``."""
    original = read_artifact(artifact)
    with tempfile.TemporaryDirectory(prefix="kolm-rebuild-") as tmp:
        out = Path(keep) if keep is not None else Path(tmp) / "rebuilt.kolm"
        err = Path(tmp) / "error.json"
        cmd = [sys.executable, "-m", "kolm_audit.compile.rebuild", "--worker", str(recipe), str(out), "--backend",
               backend, "--error-file", str(err)]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if progress:
            cmd.append("--progress")
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=False,
                              env=dict(os.environ))
        if proc.returncode != 0:
            if err.is_file():
                _raise_from(err)
            raise InputError("the fresh compile failed", file=str(recipe), actual=f"exit status {proc.returncode}")
        return compare(original, read_artifact(out), recipe=recipe)     # while the rebuilt file exists


def _worker(argv: list[str]) -> int:
    """The fresh process: build, write the unsigned artifact (whatever its gate says), report errors as JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kolm_audit.compile.rebuild")
    parser.add_argument("--worker", dest="recipe", required=True)
    parser.add_argument("out")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--error-file", required=True)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    from kolm_audit.artifact.file import write_artifact
    from kolm_audit.compile.build import build
    from kolm_audit.compile.progress import terminal_bars

    try:
        b = build(args.recipe, backend=args.backend, threads=args.threads, bars=terminal_bars(enabled=args.progress))
        write_artifact(args.out, manifest=b.manifest, tensors=b.tensors)
    except KolmError as exc:
        Path(args.error_file).write_text(json.dumps(exc.to_json()), encoding="utf-8")
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
