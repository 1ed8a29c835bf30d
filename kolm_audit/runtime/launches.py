"""Count the device kernels a forward pass issues, on any device (the CUDA cost model, measured without a GPU).

On a GPU at small and medium model sizes the time of a forward is mostly host time per kernel launch, so the
number of launches per layer is the figure to reduce (``docs/benchmarks.md``). :class:`LaunchCounter` counts

* every torch operator that runs a kernel on CUDA (seen through a ``TorchDispatchMode``: views, allocations and
  metadata queries launch nothing and are not counted), keyed ``torch:<op>``;
* every Triton kernel launched through :func:`triton_launch` (the fused backends' single launch point), keyed
  ``triton:<kernel>`` — while a Triton kernel runs, the torch operators it may use internally (Triton's CPU
  interpreter does) are not counted;
* host synchronizations (a tensor value read on the host, ``aten._local_scalar_dense``), keyed ``sync``: a step that
  synchronizes cannot be captured in a CUDA graph.

Host-to-device copies of host arrays are not seen on a CPU run (they are no-ops there); they happen once per
forward step (masks, positions, ids), not per layer.

:meth:`LaunchCounter.section` attributes counts to a named section while a method of an object runs (e.g. each
decoder layer), so per-layer figures need no second model.

Example::

    >>> import torch
    >>> with LaunchCounter() as c:
    ...     x = torch.arange(6).reshape(2, 3)          # arange: one kernel; reshape: a view
    ...     y = (x + 1).sum()
    >>> c.launches(), c.counts["torch:add"], c.counts["sync"]
    (3, 1, 0)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

_NO_KERNEL = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "detach", "alias",
    "set_", "resize_", "is_same_size", "is_nonzero", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
    "record_stream", "clone_meta", "_unsafe_view",
})
_SYNC = frozenset({"_local_scalar_dense", "item"})
_ACTIVE: list[LaunchCounter] = []


class LaunchCounter(TorchDispatchMode):
    """Counts kernel launches (torch operators and Triton kernels) and host synchronizations while active.

    ``counts`` maps ``torch:<op>``, ``triton:<kernel>`` and ``sync`` to totals; ``sections`` maps a section name
    (see :meth:`section`) to a ``Counter`` of the same keys for the launches issued inside it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.sections: dict[str, Counter[str]] = {}
        self._section: str | None = None
        self._paused = 0

    def __enter__(self) -> LaunchCounter:
        _ACTIVE.append(self)
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        _ACTIVE.remove(self)

    def _add(self, key: str) -> None:
        self.counts[key] += 1
        if self._section is not None:
            self.sections.setdefault(self._section, Counter())[key] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not self._paused:
            name = func.overloadpacket.__name__
            if name in _SYNC:
                self._add("sync")
            elif name not in _NO_KERNEL and not func.is_view:
                self._add(f"torch:{name}")
        return func(*args, **(kwargs or {}))

    def launches(self, counts: Counter[str] | None = None) -> int:
        """Kernel launches in ``counts`` (default: everything counted): torch operators plus Triton kernels."""
        found = self.counts if counts is None else counts
        return sum(n for key, n in found.items() if key != "sync")

    @contextmanager
    def section(self, obj: Any, method: str, name: str | None = None) -> Iterator[None]:
        """While active, launches issued inside ``obj.<method>`` are also counted under ``sections[name]``
        (default: the method's name); calls are counted under ``sections[name + ".calls"]["calls"]``."""
        label = name or method
        inner: Callable[..., Any] = getattr(obj, method)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            outer, self._section = self._section, label
            self.sections.setdefault(label + ".calls", Counter())["calls"] += 1
            try:
                return inner(*args, **kwargs)
            finally:
                self._section = outer

        setattr(obj, method, wrapped)
        try:
            yield
        finally:
            delattr(obj, method)

    def per_call(self, name: str) -> dict[str, float]:
        """The launches of section ``name`` divided by its number of calls (e.g. launches per layer)."""
        calls = self.sections.get(name + ".calls", Counter())["calls"]
        found = self.sections.get(name, Counter())
        return {key: n / calls for key, n in sorted(found.items())} if calls else {}


@contextmanager
def triton_launch(name: str) -> Iterator[None]:
    """Wrap one Triton kernel launch: counted as ``triton:<name>`` by every active :class:`LaunchCounter`, and the
    torch operators issued inside it (by Triton's interpreter on CPU) are not counted."""
    for counter in _ACTIVE:
        counter._add(f"triton:{name}")
        counter._paused += 1
    try:
        yield
    finally:
        for counter in _ACTIVE:
            counter._paused -= 1


def launch_summary(counts: Counter[str] | dict[str, float]) -> str:
    """A one-line summary: ``N launches (T Triton, G torch) [, S syncs]: op×n, …``."""
    triton = sum(n for k, n in counts.items() if k.startswith("triton:"))
    torch_ops = sum(n for k, n in counts.items() if k.startswith("torch:"))
    syncs = counts.get("sync", 0)
    parts = ", ".join(f"{k.split(':', 1)[1]}×{n:g}" for k, n in sorted(counts.items()) if ":" in k)
    head = f"{triton + torch_ops:g} launches ({triton:g} Triton, {torch_ops:g} torch)"
    return head + (f", {syncs:g} host syncs" if syncs else "") + (f": {parts}" if parts else "")

