"""Weight quantizers (int8 / int4 / NVFP4) and the quantize_checkpoint dispatch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _bert_fixtures import tiny_config, tiny_model, write_checkpoint
from hypothesis import given
from hypothesis import strategies as st

from kolm_audit.compile import hf
from kolm_audit.compile import quantize as qz
from kolm_audit.compile.hf import read_hf_checkpoint
from kolm_audit.errors import UnsupportedModel
from kolm_audit.runtime import fixedpoint as fp
from kolm_audit.runtime import weights as wt


def _real_weights(lin: object) -> np.ndarray:
    """Effective real weights W · mult / 2^shift of an IntLinear (test-side float decoding)."""
    w = lin.weight.astype(np.float64)  # type: ignore[attr-defined]
    return w * (lin.mult.astype(np.float64) / 2.0 ** lin.shift.astype(np.float64))[:, None]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("scheme", "tol"), [("int8", 0.5 / 127), ("int4", 0.5 / 7 + 1e-3), ("nvfp4", 0.26)])
def test_roundtrip_error_within_scheme_step(scheme: str, tol: float) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, size=(24, 64)).astype(np.float32)
    w[3] = 0.0                                     # an all-zero channel stays exactly zero
    b = rng.normal(0, 0.1, size=24)
    lin = wt.load_linear({**qz.quantize_linear(w, b, "p", scheme=scheme), **qz.nvfp4_tables()}, "p", scheme=scheme)
    back = _real_weights(lin)
    assert not back[3].any()
    rel = np.abs(back - w).max(axis=1) / np.maximum(np.abs(w).max(axis=1), 1e-30)
    assert rel.max() <= tol
    assert np.array_equal(lin.bias, fp.to_fixed(b, 16))


@given(st.lists(st.integers(min_value=0, max_value=15), min_size=2, max_size=64).filter(lambda v: len(v) % 2 == 0))
def test_nibble_packing_roundtrip(codes: list[int]) -> None:
    arr = np.array([codes], dtype=np.int64)
    packed = qz.pack_nibbles(arr)
    assert packed.dtype == np.uint8 and packed.shape == (1, len(codes) // 2)
    assert packed[0, 0] == codes[0] | (codes[1] << 4)
    assert np.array_equal(wt.unpack_nibbles(packed), arr)


def test_fp_tables_are_the_ocp_formats() -> None:
    e4 = qz.e4m3_table()
    assert e4[0x7E] == 448 << 9 and e4[0x01] == 1 and e4[0x08] == 8 and e4[0x38] == 1 << 9   # 448, 2^-9, 2^-6, 1.0
    assert e4[0x80 | 0x38] == -(1 << 9)
    assert qz.e2m1_table().tolist() == [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]


def test_nvfp4_uses_e2m1_values_and_e4m3_block_scales() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(0, 1, size=(4, 32))
    t = qz.quantize_linear(w, None, "p", scheme="nvfp4")
    assert t["p.weight"].shape == (4, 16) and t["p.block_scale"].shape == (4, 2)
    assert not np.any((t["p.block_scale"] & 0x7F) == 0x7F)
    assert len(set(t["p.mult"].tolist())) == 1           # one global (per-tensor) scale


def test_quantization_is_deterministic(tmp_path: Path) -> None:
    ckpt = read_hf_checkpoint(write_checkpoint(tiny_model(tiny_config(), seed=3), tmp_path / "hf"))
    for scheme in wt.SCHEMES:
        a = hf.quantize_checkpoint(ckpt, scheme=scheme)
        b = hf.quantize_checkpoint(ckpt, scheme=scheme)
        assert a.architecture == b.architecture and list(a.tensors) == list(b.tensors)
        assert all(np.array_equal(a.tensors[n], b.tensors[n]) and a.tensors[n].dtype == b.tensors[n].dtype
                   for n in a.tensors)
        assert all(arr.dtype.kind in "iu" for arr in a.tensors.values())
        assert a.quantization["scheme"] == scheme and a.task["kind"] == "classify"


def test_unknown_scheme_and_architecture_are_refused(tmp_path: Path) -> None:
    d = write_checkpoint(tiny_model(tiny_config(), seed=3), tmp_path / "hf")
    ckpt = read_hf_checkpoint(d)
    with pytest.raises(UnsupportedModel) as err:
        hf.quantize_checkpoint(ckpt, scheme="int2")
    assert err.value.field == "quantization.scheme" and err.value.exit_code == 2
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "t5"}))
    with pytest.raises(UnsupportedModel) as err:
        hf.quantize_checkpoint(read_hf_checkpoint(d), scheme="int8")
    assert err.value.field == "model_type"


def test_group_size_must_divide_the_input_dimension() -> None:
    with pytest.raises(UnsupportedModel) as err:
        qz.quantize_linear(np.ones((2, 48)), None, "p", scheme="int4")
    assert err.value.field == "p.weight.shape"
