"""Forward passes of ``kolm-int/1``, one module per model family (``bert``, ``llama``).

Example::

    >>> from kolm_audit.runtime.models import FAMILIES
    >>> FAMILIES
    ('bert', 'llama')
"""

from __future__ import annotations

FAMILIES = ("bert", "llama")

__all__ = ["FAMILIES"]
