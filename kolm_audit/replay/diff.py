"""``kolm-audit diff A B``: explain how two receipts, two artifacts or two replay reports differ.

The kind of each side is detected from its content:

* a **receipt** — a signed log leaf (DSSE envelope JSON), a bare ``kolm.receipt/1`` document, or ``LOG#INDEX``
  (leaf INDEX of a receipt log database or bundle): first divergent output token, the tokens and text around
  it, label and score differences, and every differing field (JSON paths, sorted);
* an **artifact** (``.kolm``) — manifest differences (JSON paths, sorted), then tensor by tensor (every tensor
  digest recomputed from the file, never trusted from the manifest): missing or extra tensors, dtype/shape
  changes, how many elements differ, the largest absolute difference and the first differing index — like
  diffoscope for models; two artifacts are identical only when their files are the same bytes, and a side whose
  tensors do not match its own manifest is named (``integrity``);
* a **replay report** — verdict, receipts whose status changed, findings that appeared or went away, and the
  environment (informational: it never makes two reports "different").

The result is a ``kolm.diff-report/1`` document (``schemas/diff-report.schema.json``); ``identical`` is false
exactly when the command exits 1.

    >>> json_paths({"a": 1, "b": [1, 2]}, {"a": 2, "b": [1]})
    [{'path': '$.a', 'a': '1', 'b': '2'}, {'path': '$.b[1]', 'a': '2', 'b': None}]
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kolm_audit.artifact.file import Artifact
from kolm_audit.canonical import DIGEST_PREFIX, jcs, loads_strict
from kolm_audit.errors import InputError
from kolm_audit.schemas import validate

DIFF_SCHEMA = "kolm.diff-report/1"
MAX_PATHS = 500
_SHOW = 200
_MISSING = object()
# receipt fields that differ between any two runs of the same decision (bookkeeping, not the decision)
BOOKKEEPING = ("$.receipt_id", "$.log_index", "$.period", "$.operator", "$.runtime", "$.request.id",
               "$.privacy", "$.signatures")

__all__ = ["DIFF_SCHEMA", "artifact_side", "diff", "diff_artifacts", "diff_receipts", "diff_reports", "json_paths", "load_side",
           "path_key"]


def _show(value: Any) -> str | None:
    if value is _MISSING:
        return None
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= _SHOW else text[: _SHOW - 1] + "…"


def path_key(path: str) -> str:
    """Sort key of a JSON path: array indices in numeric order (``[2]`` before ``[10]``)."""
    return re.sub(r"\[(\d+)\]", lambda m: f"[{int(m.group(1)):016d}]", path)


def json_paths(a: Any, b: Any, path: str = "$", out: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every leaf-level difference between two JSON values, as ``{"path", "a", "b"}`` sorted by path."""
    out = [] if out is None else out
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            json_paths(a.get(key, _MISSING), b.get(key, _MISSING), f"{path}.{key}", out)
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            json_paths(a[i] if i < len(a) else _MISSING, b[i] if i < len(b) else _MISSING, f"{path}[{i}]", out)
    elif a is _MISSING or b is _MISSING or type(a) is not type(b) or a != b:
        out.append({"path": path, "a": _show(a), "b": _show(b)})
    if path == "$":
        out.sort(key=lambda d: path_key(d["path"]))
    return out


# --- loading --------------------------------------------------------------------------------------------


def load_side(spec: str) -> tuple[str, Any]:
    """``(kind, value)`` of one side: ``receipt`` (dict with ``receipt`` and ``signers``), ``artifact``
    (:class:`~kolm_audit.artifact.Artifact`) or ``report`` (dict)."""
    from kolm_audit.receipts.document import parse_leaf

    base, sep, index = spec.rpartition("#")
    if sep and index.isdigit() and Path(base).exists():
        from kolm_audit.log.source import open_log_source

        with open_log_source(base) as src:
            if int(index) >= src.size():  # asking for a receipt the log does not have: bad input, not a finding
                raise InputError("no such receipt in this log", file=base, field=f"#{index}",
                                 expected=f"an index below {src.size()}")
            leaf = src.leaf(int(index))
        signed = parse_leaf(leaf, source=spec)
        return "receipt", {"receipt": signed.receipt, "signers": sorted(s.keyid for s in signed.envelope.signatures)}
    path = Path(spec)
    if not path.is_file():
        raise InputError("no such file (or LOG#INDEX)", file=spec,
                         expected="a receipt JSON, LOG#INDEX, a .kolm artifact or a replay report")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(9)
            # safetensors: u64 little-endian header length, then the JSON header itself
            if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
                return "artifact", _read_artifact_side(path)
            data = head + fh.read()
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", file=spec) from None
    doc = loads_strict(data, file=spec, error=InputError)
    if isinstance(doc, dict) and set(doc) == {"payload", "payloadType", "signatures"}:
        signed = parse_leaf(jcs(doc), source=spec)
        return "receipt", {"receipt": signed.receipt, "signers": sorted(s.keyid for s in signed.envelope.signatures)}
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema == "kolm.receipt/1":
        validate(doc, "receipt", source=spec)
        return "receipt", {"receipt": doc, "signers": []}
    if schema == "kolm.replay-report/1":
        validate(doc, "replay-report", source=spec)
        return "report", doc
    raise InputError("not a receipt, artifact or replay report", file=spec, field="schema",
                     expected="kolm.receipt/1, a signed receipt envelope, kolm.replay-report/1 or a .kolm file",
                     actual=repr(schema)[:60])


@dataclass(frozen=True)
class ArtifactSide:
    """One artifact of a diff: the file as read, the sha256 of its bytes and of each tensor's stored data.

    The tensor digests are recomputed from the file, never taken from the manifest, so a changed weight byte
    shows as a changed tensor even when the manifest still names the old digest (and as a failed integrity check).
    """

    artifact: Artifact
    file_digest: str
    tensor_digests: Mapping[str, str]

    @property
    def tampered(self) -> list[str]:
        """Tensors whose data do not hash to the manifest's digest, sorted."""
        table = self.artifact.manifest["tensors"]
        return sorted(n for n, d in self.tensor_digests.items() if table[n]["sha256"] != d)


def _read_artifact_side(path: Path) -> ArtifactSide:
    from kolm_audit.artifact import read_artifact

    # the strict header/manifest/signature-structure checks; tensor digests are recomputed below
    return artifact_side(read_artifact(path, check_tensors=False))


def artifact_side(art: Artifact) -> ArtifactSide:
    """The :class:`ArtifactSide` of an artifact read from a file that is still on disk (``art.path``)."""
    from kolm_audit.artifact.manifest import tensor_digests

    if art.path is None:
        raise InputError("an artifact diff needs the artifact's file", expected="an artifact read from a path")
    path = Path(art.path)
    hasher = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                hasher.update(block)
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", file=str(path)) from None
    return ArtifactSide(artifact=art, file_digest=DIGEST_PREFIX + hasher.hexdigest(),
                        tensor_digests=tensor_digests(dict(art.tensors)))


# --- receipts ---------------------------------------------------------------------------------------------


def _excerpt(text: Any, pos: int) -> str | None:
    if not isinstance(text, str):
        return None
    lo = max(0, pos - 40)
    return ("…" if lo else "") + text[lo:pos + 40] + ("…" if pos + 40 < len(text) else "")


def _first(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    from kolm_audit.replay.report import first_divergence

    return first_divergence(list(a), list(b))


def diff_receipts(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    ra, rb = a["receipt"], b["receipt"]
    fields = json_paths({**ra, "signatures": a["signers"]}, {**rb, "signatures": b["signers"]})
    decision = [f for f in fields if not f["path"].startswith(BOOKKEEPING)]
    out: dict[str, Any] = {"task": {"a": ra["task"], "b": rb["task"]},
                           "output_digest": {"a": ra["response"]["output_digest"],
                                             "b": rb["response"]["output_digest"]},
                           "input_digest": {"a": ra["request"]["input_digest"], "b": rb["request"]["input_digest"]},
                           "first_divergence": None, "label": None, "scores": None, "fields": fields[:MAX_PATHS],
                           "decision_fields": len(decision), "bookkeeping_fields": len(fields) - len(decision)}
    pa, pb = ra["response"], rb["response"]
    ia, ib = pa.get("output_ids"), pb.get("output_ids")
    if isinstance(ia, list) and isinstance(ib, list):
        pos = _first(ia, ib)
        if pos is not None:
            lo = max(0, pos - 8)
            ta, tb = pa.get("text"), pb.get("text")
            tpos = _first(ta, tb) if isinstance(ta, str) and isinstance(tb, str) else None
            out["first_divergence"] = {
                "position": pos, "a_token": ia[pos] if pos < len(ia) else None,
                "b_token": ib[pos] if pos < len(ib) else None, "window_start": lo,
                "a_tokens": ia[lo:pos + 8], "b_tokens": ib[lo:pos + 8],
                "text_position": tpos,
                "a_text": None if tpos is None else _excerpt(ta, tpos),
                "b_text": None if tpos is None else _excerpt(tb, tpos)}
    if ra["task"] == "classify":
        if pa.get("label") != pb.get("label"):
            out["label"] = {"a": _show(pa.get("label")), "b": _show(pb.get("label"))}
        sa, sb = pa.get("scores"), pb.get("scores")
        if isinstance(sa, list) and isinstance(sb, list) and sa != sb:
            common = min(len(sa), len(sb))
            out["scores"] = {"first_index": _first(sa, sb), "differing": sum(x != y for x, y in zip(sa, sb,
                                                                                                    strict=False)),
                             "max_abs_difference": str(max((abs(x - y) for x, y in zip(sa[:common], sb[:common],
                                                                                        strict=True)), default=0)),
                             "a": sa, "b": sb}
    out["identical"] = not decision
    return out


# --- artifacts --------------------------------------------------------------------------------------------


def _tensor_stats(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if x.dtype.kind == "f":
        xf, yf = x.astype(np.float64), y.astype(np.float64)
        same = (xf == yf) | (np.isnan(xf) & np.isnan(yf))
    else:
        same = x == y
    flat = np.flatnonzero(~same.reshape(-1))
    if flat.size == 0:
        return {"differing": 0, "max_abs_difference": "0", "first_index": None, "first_flat_index": None,
                "a_value": None, "b_value": None}
    xs, ys = x.reshape(-1)[flat], y.reshape(-1)[flat]
    if x.dtype.kind == "f":
        with np.errstate(invalid="ignore", over="ignore"):
            mad = np.nanmax(np.abs(xs.astype(np.float64) - ys.astype(np.float64))) if flat.size else 0.0
        biggest = repr(float(mad))
    else:
        biggest = str(max(abs(int(p) - int(q)) for p, q in zip(xs.tolist(), ys.tolist(), strict=True)))
    first = int(flat[0])
    return {"differing": int(flat.size), "max_abs_difference": biggest,
            "first_index": [int(i) for i in np.unravel_index(first, x.shape)], "first_flat_index": first,
            "a_value": str(x.reshape(-1)[first].item()), "b_value": str(y.reshape(-1)[first].item())}


def _integrity(side: ArtifactSide) -> dict[str, Any]:
    bad = side.tampered
    return {"file_digest": side.file_digest, "tensors_verified": not bad, "tampered_tensors": bad[:MAX_PATHS]}


def diff_artifacts(sa: ArtifactSide, sb: ArtifactSide) -> dict[str, Any]:
    """Compare two artifacts by what their files hold: manifests, recomputed tensor digests, signers.

    ``identical`` only when the two files are the same bytes; a side whose tensors do not hash to its own
    manifest is named in ``integrity`` (it fails ``kolm-audit verify``).
    """
    a, b = sa.artifact, sb.artifact
    ma = {k: v for k, v in a.manifest.items() if k != "tensors"}
    mb = {k: v for k, v in b.manifest.items() if k != "tensors"}
    ta, tb = a.manifest["tensors"], b.manifest["tensors"]
    changed = []
    same = 0
    for name in sorted(set(ta) & set(tb)):
        ea, eb = ta[name], tb[name]
        if ea == eb and sa.tensor_digests[name] == sb.tensor_digests[name]:
            same += 1
            continue
        entry: dict[str, Any] = {"name": name,
                                 "a": {"dtype": ea["dtype"], "shape": ea["shape"], "sha256": sa.tensor_digests[name]},
                                 "b": {"dtype": eb["dtype"], "shape": eb["shape"], "sha256": sb.tensor_digests[name]},
                                 "elements": int(np.prod(ea["shape"], dtype=np.int64))}
        if (ea["dtype"], ea["shape"]) == (eb["dtype"], eb["shape"]):
            entry.update(_tensor_stats(np.asarray(a.tensors[name]), np.asarray(b.tensors[name])))
        else:
            entry.update(differing=None, max_abs_difference=None, first_index=None, first_flat_index=None,
                         a_value=None, b_value=None)
        changed.append(entry)
    sig = {"a": sorted(s["keyid"] for e in a.signatures for s in e["signatures"]),
           "b": sorted(s["keyid"] for e in b.signatures for s in e["signatures"])}
    return {"a_digest": a.digest, "b_digest": b.digest, "identical": sa.file_digest == sb.file_digest,
            "integrity": {"a": _integrity(sa), "b": _integrity(sb)},
            "manifest": json_paths(ma, mb)[:MAX_PATHS], "signers": sig,
            "tensors": {"only_in_a": sorted(set(ta) - set(tb)), "only_in_b": sorted(set(tb) - set(ta)),
                        "changed": changed, "unchanged": same}}


# --- replay reports ---------------------------------------------------------------------------------------


def _finding_key(f: Mapping[str, Any]) -> str:
    return json.dumps([f["scope"], f["index"], f["reason"], f["message"], f["expected"], f["actual"]])


def diff_reports(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    ra, rb = a["results"], b["results"]
    rows_a = {r["index"]: r for r in ra["receipts"]}
    rows_b = {r["index"]: r for r in rb["receipts"]}
    changed = []
    for index in sorted(set(rows_a) | set(rows_b)):
        x, y = rows_a.get(index), rows_b.get(index)
        if x != y:
            changed.append({"index": index, "a": x, "b": y})
    fa = {_finding_key(f): f for f in ra["findings"]}
    fb = {_finding_key(f): f for f in rb["findings"]}
    rest_a = {k: v for k, v in ra.items() if k not in ("receipts", "findings")}
    rest_b = {k: v for k, v in rb.items() if k not in ("receipts", "findings")}
    return {"a_results_digest": a["results_digest"], "b_results_digest": b["results_digest"],
            "identical": jcs(ra) == jcs(rb), "verdict": {"a": ra["verdict"], "b": rb["verdict"]},
            "receipts": changed[:MAX_PATHS], "receipts_changed": len(changed),
            "findings": {"only_in_a": [fa[k] for k in sorted(set(fa) - set(fb))][:MAX_PATHS],
                         "only_in_b": [fb[k] for k in sorted(set(fb) - set(fa))][:MAX_PATHS]},
            "results": json_paths(rest_a, rest_b)[:MAX_PATHS],
            "environment": json_paths(a["environment"], b["environment"])[:MAX_PATHS]}


def diff(spec_a: str, spec_b: str) -> dict[str, Any]:
    """Detect both sides, diff them, and return the schema-valid ``kolm.diff-report/1`` document."""
    kind_a, va = load_side(spec_a)
    kind_b, vb = load_side(spec_b)
    if kind_a != kind_b:
        raise InputError(f"cannot diff a {kind_a} with a {kind_b}", file=spec_b, expected=f"a {kind_a}",
                         actual=f"a {kind_b}")
    details = {"receipt": diff_receipts, "artifact": diff_artifacts, "report": diff_reports}[kind_a](va, vb)
    identical = bool(details.pop("identical"))
    doc = {"schema": DIFF_SCHEMA, "kind": kind_a, "a": spec_a, "b": spec_b, "identical": identical,
           "details": details}
    jcs(doc)
    validate(doc, "diff-report")
    return doc
