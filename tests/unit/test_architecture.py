"""The stage layout holds (docs/architecture.md): no import cycles between modules, the runtime never imports a
later stage, the log never imports the receipts' recorder. Imports are read with ``ast``, inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kolm_audit"
LATER_THAN_RUNTIME = ("compile", "artifact", "receipts", "log", "replay", "cli", "binder", "golden", "serve")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module (or package) of ``MODULES`` that an imported dotted name lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            prefix = base
            for _ in range(max(node.level - 1, 0)):
                prefix = prefix.rpartition(".")[0]
            mod = (f"{prefix}.{node.module}" if node.module else prefix) if node.level else (node.module or "")
            names = [mod, *(f"{mod}.{a.name}" for a in node.names)]
        for name in names:
            owner = _owner(name) if name.startswith("kolm_audit") else None
            # a package's own submodules and a submodule's parent packages are not dependencies between stages
            if owner and owner != module and not module.startswith(owner + "."):
                found.add(owner)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(GRAPH):
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_package_has_stage_folders() -> None:
    for stage in ("compile", "artifact", "runtime", "receipts", "log", "replay", "cli"):
        assert f"kolm_audit.{stage}" in MODULES, stage


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["kolm_audit.canonical"].add("kolm_audit.errors")
        GRAPH["kolm_audit.errors"].add("kolm_audit.canonical")
        assert ["kolm_audit.canonical", "kolm_audit.errors"] in _cycles()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("kolm_audit.runtime")))
def test_the_runtime_never_imports_a_later_stage(module: str) -> None:
    later = sorted(t for t in GRAPH[module]
                   if any(t == f"kolm_audit.{s}" or t.startswith(f"kolm_audit.{s}.") for s in LATER_THAN_RUNTIME))
    assert later == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("kolm_audit.log")))
def test_the_log_never_imports_the_recorder(module: str) -> None:
    assert not any(t.startswith("kolm_audit.receipts") for t in GRAPH[module])
