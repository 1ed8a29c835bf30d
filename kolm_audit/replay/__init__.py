"""The replay stage: re-run every recorded decision on an artifact and prove it matches — or say where not.

Start at :func:`replay` (``kolm-audit replay``): it verifies the artifact, the log and each receipt, re-runs the
selected decisions in batches (:mod:`~kolm_audit.replay.workers`: local processes or Ray actors) and writes a
``kolm.replay-report/1`` (:mod:`~kolm_audit.replay.report`). :class:`Selection` (:mod:`~kolm_audit.replay.selection`)
picks receipts by index, tenant, time or id; :func:`diff` (:mod:`~kolm_audit.replay.diff`) compares two artifacts,
receipts or reports. A guide for auditors: docs/replay.md.

Example::

    >>> from kolm_audit.replay import ReplayOptions
    >>> ReplayOptions().batch_size
    32
"""

from __future__ import annotations

from kolm_audit.replay.diff import diff
from kolm_audit.replay.engine import ReplayOptions, replay
from kolm_audit.replay.report import REPORT_SCHEMA, summary_text
from kolm_audit.replay.selection import Selection

__all__ = ["REPORT_SCHEMA", "ReplayOptions", "Selection", "diff", "replay", "summary_text"]
