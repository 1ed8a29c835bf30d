"""Run pytest with the kolm golden plugin in a subprocess (its own rootdir and ini, so this repository's settings do
not leak in). Plugin autoloading is off unless asked for (the installed plugins cost seconds per process): the
plugin comes from ``-p kolm_audit.golden.pytest_plugin`` and xdist from ``-p xdist``; with ``autoload=True`` the
``pytest11`` entry points load as in a user's run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLUGIN = ["-p", "kolm_audit.golden.pytest_plugin"]


def run_pytest(workdir: Path, *args: object, plugin: list[str] | None = None, autoload: bool = False,
               extra_path: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``python -m pytest ARGS`` in ``workdir`` (with an empty ``pytest.ini``); returns the finished process."""
    (workdir / "pytest.ini").write_text("[pytest]\n")
    env = dict(os.environ)
    paths = [str(REPO)] + ([str(extra_path)] if extra_path is not None else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS",
                 "PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)                            # this test may itself run inside an xdist worker
    base = ["-p", "no:cacheprovider", "--rootdir", str(workdir), "-c", str(workdir / "pytest.ini")]
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        base += ["-p", "xdist"]
    cmd = [sys.executable, "-m", "pytest", *base, *(PLUGIN if plugin is None else plugin), *map(str, args)]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False)
