"""Progress bars for long compile steps: tqdm on stderr when it is a terminal, nothing otherwise.

The compile stage reports progress through a :data:`Bars` factory so the library never decides about the
terminal: the CLI passes :func:`terminal_bars` (disabled with ``--json`` or when stderr is not a terminal), the
Python API defaults to :func:`no_bars`.

Example::

    >>> bar = no_bars("features", total=3, unit="text")
    >>> bar.update(3); bar.set_postfix_str("done"); bar.close()
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol


class Bar(Protocol):
    def update(self, n: int = 1) -> object: ...
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> object: ...
    def close(self) -> object: ...


Bars = Callable[..., Bar]     # (desc: str, *, total: int, unit: str) -> Bar


class _NoBar:
    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def close(self) -> None:
        return None


def no_bars(desc: str, *, total: int, unit: str) -> Bar:
    """A bar that shows nothing."""
    return _NoBar()


def terminal_bars(*, enabled: bool) -> Bars:
    """tqdm bars on stderr when ``enabled`` and stderr is a terminal; otherwise :func:`no_bars`."""
    if not enabled or not sys.stderr.isatty():
        return no_bars
    from tqdm import tqdm

    def make(desc: str, *, total: int, unit: str) -> Bar:
        return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)
    return make
