"""What the binder's pages say: the template context, built from :class:`~kolm_audit.binder.evidence.Evidence`.

Every value the templates print is prepared here (formatted, clipped, counted), so the templates only lay out.
Texts that come from the evidence are shown with :func:`printable`, which replaces any character the pinned font
cannot draw by ``[U+XXXX]``: the binder never falls back to a machine's own fonts (which would change its bytes).

    >>> printable("café\\x07", frozenset(map(ord, "café")))
    'café[U+0007]'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kolm_audit import __version__
from kolm_audit.binder.chart import NAMES, ORDER, kscore_svg
from kolm_audit.binder.crosswalk import crosswalk_rows
from kolm_audit.binder.evidence import MISMATCH_DETAIL_LIMIT, Cited, Evidence, flatten
from kolm_audit.receipts.privacy import is_sealed
from kolm_audit.timefmt import format_time

TEXT_CLIP = 300


def printable(text: str, drawable: frozenset[int]) -> str:
    """``text`` with every character outside ``drawable`` (or a control character) written as ``[U+XXXX]``."""
    if all(ord(c) in drawable and (c >= " " or c in "\n\t") for c in text):
        return text
    return "".join(c if ord(c) in drawable and (c >= " " or c in "\n\t") else f"[U+{ord(c):04X}]" for c in text)


def _clip(text: str, n: int = TEXT_CLIP) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _pm(per_mille: object) -> str:
    """A per-mille integer as a percentage with one decimal (integer arithmetic only)."""
    if isinstance(per_mille, bool) or not isinstance(per_mille, int):
        return str(per_mille)
    sign = "-" if per_mille < 0 else ""
    v = abs(per_mille)
    return f"{sign}{v // 10}.{v % 10} %"


def _kscore(kscore: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if kscore is None:
        return None
    comps = kscore.get("components") if isinstance(kscore.get("components"), Mapping) else {}
    weights = kscore.get("weights") if isinstance(kscore.get("weights"), Mapping) else {}
    gate = kscore.get("gate") if isinstance(kscore.get("gate"), Mapping) else {}
    mins = gate.get("min_components") if isinstance(gate.get("min_components"), Mapping) else {}
    failed = set(gate.get("failed") or ())
    rows = []
    for name in [c for c in ORDER if c in comps] + sorted(c for c in comps if c not in ORDER):
        value, weight, low = comps[name], weights.get(name), mins.get(name)
        ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (value, weight))
        rows.append({"name": name, "label": NAMES.get(name, name), "value": _pm(value), "raw": value,
                     "weight": weight, "points": f"{value * weight // 1000}" if ints else "—",
                     "min": "—" if low is None else _pm(low), "ok": name not in failed})
    ints = all(isinstance(v, int) and isinstance(weights.get(k), int) for k, v in comps.items())
    recomputed = sum(v * weights[k] for k, v in comps.items()) // 1000 if ints and comps else None
    int_comps = {k: v for k, v in comps.items() if isinstance(v, int)}
    int_mins = {k: v for k, v in mins.items() if isinstance(v, int)}
    return {"spec": kscore.get("spec"), "k": kscore.get("k"), "recomputed": recomputed, "rows": rows,
            "min_k": gate.get("min_k"), "passed": gate.get("passed") is True, "failed": sorted(failed),
            "svg": kscore_svg(int_comps, minimums=int_mins) if int_comps else None,
            "inputs": flatten(kscore.get("inputs"), "", limit=40)}


def _counts(rows: Iterable[Mapping[str, Any]], key: str) -> list[dict[str, Any]]:
    table: dict[str, list[int]] = {}
    for r in rows:
        entry = table.setdefault(str(r[key]), [0, 0, 0])
        entry[0] += 1
        entry[1 if r["status"] == "matched" else 2] += 1
    return [{"name": k, "receipts": v[0], "matched": v[1], "mismatched": v[2]} for k, v in sorted(table.items())]


def _field(value: Any, *, clear: bool, text: bool = False) -> str:
    if value is None:
        return "—"
    if is_sealed(value) or not clear:
        return "sealed (digest only)"
    if text:
        return _clip(str(value))
    return _clip(", ".join(str(v) for v in value) if isinstance(value, list) else str(value), 160)


def _card(c: Cited) -> dict[str, Any]:
    rec = c.receipt
    card: dict[str, Any] = {"index": c.index, "why": c.why, "status": c.row["status"], "reasons": c.row["reasons"],
                            "expected": c.row["expected_digest"], "actual": c.row["actual_digest"],
                            "leaf_hash": c.leaf_hash, "proof": c.proof, "signers": c.signers,
                            "findings": [_finding(f) for f in c.findings], "receipt": None}
    if rec is None:
        return card
    clear = rec["privacy"]["mode"] == "clear"
    req, resp = rec["request"], rec["response"]
    outputs = [("output digest", resp["output_digest"])]
    if rec["task"] == "classify":
        outputs += [("label", _field(resp.get("label"), clear=clear)),
                    ("scores", _field(resp.get("scores"), clear=clear))]
    elif rec["task"] == "generate":
        outputs += [("output ids", _field(resp.get("output_ids"), clear=clear)),
                    ("output text", _field(resp.get("text"), clear=clear, text=True)),
                    ("finish reason", str(resp.get("finish_reason")))]
    else:
        outputs += [("dimension", str(resp.get("dim")))]
    card["receipt"] = {
        "id": rec["receipt_id"], "tenant": rec["tenant"], "task": rec["task"], "mode": rec["privacy"]["mode"],
        "start": rec["period"]["start"], "end": rec["period"]["end"], "artifact": rec["artifact"]["digest"],
        "operator": rec["operator"]["name"] + (f" (caller {rec['operator']['caller']})"
                                               if rec["operator"]["caller"] else ""),
        "text": _field(req.get("text"), clear=clear, text=True), "text_digest": req.get("text_digest") or "—",
        "input_digest": req["input_digest"],
        "input_ids": (f"{len(req['input_ids'])} token ids" if clear and isinstance(req["input_ids"], list)
                      else "sealed (digest only)"),
        "decoding": (", ".join(f"{k} {v}" for k, v in sorted(rec["decoding"].items()) if v is not None)
                     if rec.get("decoding") else None),
        "outputs": outputs}
    return card


def _finding(f: Mapping[str, Any]) -> dict[str, Any]:
    return {"scope": f["scope"], "reason": f["reason"], "severity": f["severity"], "index": f["index"],
            "message": _clip(f["message"], 400), "expected": f["expected"], "actual": f["actual"],
            "position": f["position"],
            "excerpt": None if f["excerpt"] is None else {"expected": f["excerpt"]["expected"],
                                                          "actual": f["excerpt"]["actual"]}}


def _verify_steps(ev: Evidence, *, binder_name: str, artifact_name: str) -> list[tuple[str, str]]:
    log_kind = "the whole log" if ev.embedded_log == "full" else "the cited receipts"
    return [
        ("Check the binder's signature (role binder) and the digest of every embedded document",
         f"kolm-audit verify {binder_name} --trust trust.toml"),
        ("Get the evidence out (index.json lists every file and its sha256)",
         f"kolm-audit binder extract {binder_name} --out evidence"),
        ("The manifest's sha256 is the artifact digest",
         f"sha256sum evidence/artifact/manifest.json    # {ev.artifact_digest.removeprefix('sha256:')}"),
        (f"Verify the embedded log ({log_kind}): checkpoints, consistency, inclusion proofs, receipt signatures",
         "kolm-audit log verify evidence/log --trust trust.toml"),
        ("Verify the artifact file you hold: every tensor digest and its signature",
         f"kolm-audit verify {artifact_name} --trust trust.toml"),
        (f"Replay {log_kind} on it, byte for byte",
         f"kolm-audit replay evidence/log --artifact {artifact_name} --trust trust.toml --report replayed.json"),
        ("Without kolm-audit: the PDF's sha256 is the signed subject; poppler extracts the same files",
         f"sha256sum {binder_name}; pdfdetach -saveall -o raw {binder_name}"),
    ]


def build_context(ev: Evidence, *, binder_name: str, artifact_name: str, key_id: str,
                  drawable: frozenset[int]) -> dict[str, Any]:
    """The template context (strings from the evidence are made :func:`printable` by the template filter)."""
    report, res = ev.report, ev.report["results"]
    counts, m = res["counts"], ev.manifest
    verdict_ok = res["verdict"] == "matched"
    mismatches = [_card(c) for c in ev.cited if c.why == "mismatch"]
    prov = m["provenance"]
    latest = ev.latest
    return {
        "title": f"Audit binder: {m['name']} {m['version']}",
        "subject": (f"Replay of {counts['receipts']} recorded decisions of artifact {ev.artifact_digest} "
                    f"from log {ev.origin}: {res['verdict']}"),
        "keywords": ", ".join(("kolm-audit", "audit binder", "replay", m["name"], ev.artifact_digest, ev.origin)),
        "created": format_time(ev.created), "tool": f"kolm-audit {__version__}", "key_id": key_id,
        "binder_name": binder_name, "artifact_name": artifact_name,
        "verdict_ok": verdict_ok,
        "verdict": (f"All {counts['matched']} replayed decisions matched" if verdict_ok
                    else f"{counts['mismatched']} of {counts['receipts']} decisions do not match"),
        "report": report, "res": res, "counts": counts, "env": report["environment"],
        "report_digest": ev.report_digest, "manifest": m, "artifact_digest": ev.artifact_digest,
        "artifact_signers": ev.artifact_signers,
        "tensors": len(m["tensors"]), "parameters": sum(_product(t["shape"]) for t in m["tensors"].values()),
        "labels": ", ".join(m["task"].get("labels") or ()) or "—",
        "prov": {"recipe": prov["recipe"] or "— (none)", "base_name": prov["base_model"].get("name") or "—",
                 "base_files": sorted(prov["base_model"]["files"].items()), "data": sorted(prov["data"].items()),
                 "toolchain": sorted(prov["toolchain"].items()), "seed": prov["seed"],
                 "build": flatten(prov["build"], "", limit=40)},
        "statement": ev.provenance, "kscore": _kscore(m.get("kscore")),
        "origin": ev.origin, "log_size": ev.log_size, "checkpoints": ev.checkpoints, "latest": latest,
        "unsigned": ev.log_size - (latest.size if latest else 0), "first_time": ev.first_time,
        "last_time": ev.last_time, "embedded_log": ev.embedded_log,
        "embedded_receipts": (ev.log_size if ev.embedded_log == "full"
                              else sum(1 for c in ev.cited if c.proof is not None)),
        "cited": ev.cited, "general_findings": [_finding(f) for f in res["findings"] if f["index"] is None],
        "tenants": _counts(res["receipts"], "tenant"), "tasks": _counts(res["receipts"], "task"),
        "mismatches": mismatches, "more_mismatches": _ranges(ev.more_mismatches),
        "more_count": len(ev.more_mismatches), "detail_limit": MISMATCH_DETAIL_LIMIT,
        "samples": [_card(c) for c in ev.cited if c.why == "sample"],
        "crosswalk": crosswalk_rows(receipts=counts["receipts"], matched=counts["matched"],
                                    mismatched=counts["mismatched"], log_size=ev.log_size,
                                    checkpoint_size=latest.size if latest else None, first=ev.first_time,
                                    last=ev.last_time, kscore=m.get("kscore"), provenance=ev.provenance is not None,
                                    artifact_digest=ev.artifact_digest),
        "steps": _verify_steps(ev, binder_name=binder_name, artifact_name=artifact_name),
        "documents": ev.documents,
    }


def _product(shape: Iterable[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _ranges(indices: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1–3, 7"`` (compact list of log indices)."""
    parts: list[str] = []
    run: list[int] = []
    for i in indices:
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}–{run[-1]}")
        run = [i]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}–{run[-1]}")
    return ", ".join(parts)
