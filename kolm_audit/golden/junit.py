"""Deterministic JUnit XML for a golden run: the same run gives the same bytes, on any machine, at any time.

No ``timestamp``, ``hostname`` or ``time`` attributes; ``properties`` name what the run depends on (artifact
digest, backend, runtime spec, suite digest and pin, kolm-audit version). One ``testcase`` per golden case, in
suite order (classname = suite name, name = case id), plus one named ``[artifact]`` for the pin check, so a
dashboard shows a run on the wrong artifact as a failure: ``tests`` = cases + 1. A failed or unblessed case is a
``<failure>`` (``message`` = the first differences, body = all of them), a case the runtime refused an
``<error>``. Text that XML 1.0 cannot carry (control characters, lone surrogates) is written as ``\\uXXXX``.

    >>> _xml_text("ok\\x00")
    'ok\\\\u0000'
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from kolm_audit import __version__
from kolm_audit.errors import InputError
from kolm_audit.golden.runner import RunResult
from kolm_audit.runtime import SPEC

PIN_CASE = "[artifact]"
_MESSAGE_CHARS = 500
# characters XML 1.0 does not allow (§2.2 Char), as one class
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

__all__ = ["PIN_CASE", "junit_xml", "write_junit"]


def _xml_text(text: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _clip(text: str) -> str:
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


def junit_xml(result: RunResult) -> bytes:
    """The JUnit XML bytes of ``result`` (UTF-8, indented, ending in a newline)."""
    counts = result.counts()
    failures = counts["failed"] + counts["unblessed"] + (0 if result.pin_ok else 1)
    attrs = {"name": result.suite.name, "tests": str(counts["cases"] + 1), "failures": str(failures),
             "errors": str(counts["errors"]), "skipped": "0"}
    root = ET.Element("testsuites", attrs)
    suite_el = ET.SubElement(root, "testsuite", attrs)
    props = ET.SubElement(suite_el, "properties")
    for name, value in (("artifact_digest", result.artifact_digest), ("artifact_name", result.artifact_name),
                        ("backend", result.backend), ("runtime", SPEC), ("signature", result.signature),
                        ("suite_digest", result.suite.digest),
                        ("suite_pin", result.suite.artifact_digest or f"name:{result.suite.artifact_name}"),
                        ("kolm_audit_version", __version__)):
        ET.SubElement(props, "property", {"name": name, "value": _xml_text(value)})
    pin = ET.SubElement(suite_el, "testcase", {"classname": result.suite.name, "name": PIN_CASE})
    if not result.pin_ok:
        el = ET.SubElement(pin, "failure", {"type": "artifact-pin", "message": _xml_text(_clip(result.pin_message()))})
        el.text = _xml_text(result.pin_message())
    for case in result.cases:
        el_case = ET.SubElement(suite_el, "testcase", {"classname": result.suite.name, "name": case.case_id})
        if case.ok:
            continue
        tag = "error" if case.status == "error" else "failure"
        kind = case.differences[0].kind if case.differences else case.status
        el = ET.SubElement(el_case, tag, {"type": kind, "message": _xml_text(_clip(case.headline()))})
        el.text = _xml_text(case.explain())
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(result: RunResult, path: str | Path) -> Path:
    """Write :func:`junit_xml` to ``path``."""
    path = Path(path)
    try:
        path.write_bytes(junit_xml(result))
    except OSError as exc:
        raise InputError(f"cannot write JUnit XML ({exc.strerror})", file=str(path), field="--junit") from None
    return path
