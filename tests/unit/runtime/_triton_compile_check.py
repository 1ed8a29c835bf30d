"""Compile every Triton kernel of the CUDA backend ahead of time for an H100/H200 (sm_90), without a GPU.

    python tests/unit/runtime/_triton_compile_check.py

Triton lowers each kernel to PTX and assembles a cubin with its bundled ``ptxas``; that catches what the interpreter
(``TRITON_INTERPRET=1``) does not: type errors, constexpr branches, loop-carried types, 64-bit offsets. Each kernel
is compiled in the argument dtypes and constexpr variants the glue (``triton_fused.py``) launches it with; scalars as
32-bit integers (how Triton passes small Python ints) and, for one variant each, as 64-bit. Prints one JSON object
per kernel variant and exits 1 if any fails to compile.
"""

from __future__ import annotations

import json
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kolm_audit.runtime import triton_blocks as kb
from kolm_audit.runtime import triton_kernels as kt

TARGET = GPUTarget("cuda", 90, 32)


def _signature(kernel: Any, pointers: dict[str, str], consts: dict[str, Any], scalar: str) -> dict[str, str]:
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = "*" + pointers[name]
        else:
            sig[name] = scalar
    return sig


def _variants() -> list[tuple[str, Any, dict[str, str], dict[str, Any]]]:
    i64, i32, i8 = "i64", "i32", "i8"
    lin_ptrs = {"m_ptr": i64, "e_ptr": i64, "mult_ptr": i64, "shift_ptr": i64, "bias_ptr": i64, "res_ptr": i32,
                "out_ptr": i32, "h_ptr": i32, "gamma_ptr": i64, "beta_ptr": i64, "rs_ptr": i64, "act_ptr": i64,
                "qm_ptr": i64, "qe_ptr": i64}
    out = []
    for part, flags, q in (("fp32", (0, False, 0, False), "bf16"), ("fp32", (1, False, 0, True), "bf16"),
                           ("i32", (2, False, 0, True), "i8"), ("fp32", (0, True, 1, True), "bf16"),
                           ("fp64", (0, True, 2, True), "fp32")):
        act, res, norm, quant = flags
        out.append((f"linear_block p={part} q={q} act={act} res={res} norm={norm} quant={quant}", kb.linear_block,
                    {**lin_ptrs, "p_ptr": part, "q_ptr": q},
                    {"ACT": act, "RES": res, "NORM": norm, "QUANT": quant, "BLOCK": 1024}))
    out.append(("linear_block residual int64", kb.linear_block, {**lin_ptrs, "p_ptr": "fp32", "q_ptr": "bf16",
                                                                 "res_ptr": i64},
                {"ACT": 0, "RES": True, "NORM": 1, "QUANT": True, "BLOCK": 256}))
    norm_ptrs = {"x_ptr": i64, "gamma_ptr": i64, "beta_ptr": i64, "out_ptr": i32, "q_ptr": "bf16", "qm_ptr": i64,
                 "qe_ptr": i64, "table_ptr": i64}
    out.append(("norm_quant", kb.norm_quant, norm_ptrs, {"CENTER": False, "QUANT": True, "BLOCK": 2048}))
    out.append(("norm_quant int64 out, no quant", kb.norm_quant, {**norm_ptrs, "x_ptr": i32, "out_ptr": i64},
                {"CENTER": True, "QUANT": False, "BLOCK": 512}))
    qkv_ptrs = {"p_ptr": "fp32", "m_ptr": i64, "e_ptr": i64, "mult_ptr": i64, "shift_ptr": i64, "bias_ptr": i64,
                "pos_ptr": i64, "cos_ptr": i64, "sin_ptr": i64, "out_ptr": i32, "q8_ptr": i8, "qm_ptr": i64,
                "qe_ptr": i64, "k8_ptr": i8, "km_ptr": i64, "ke_ptr": i64}
    out.append(("qkv_rope", kb.qkv_rope, qkv_ptrs, {"ROPE": True, "BLOCK": 32}))
    out.append(("quantize_heads", kb.quantize_heads, {"x_ptr": i32, "q_ptr": i8, "m_ptr": i64, "e_ptr": i64},
                {"BLOCK": 64}))
    out.append(("kv_write", kb.kv_write, {"k_ptr": i32, "v_ptr": i32, "q8_ptr": i8, "qm_ptr": i64, "qe_ptr": i64,
                                          "kb_ptr": i32, "vb_ptr": i32, "k8b_ptr": i8, "kmb_ptr": i64, "keb_ptr": i64,
                                          "slot_ptr": i64}, {"BLOCK": 64}))
    out.append(("embedding", kb.embedding, {"ids_ptr": i64, "w_ptr": i8, "mult_ptr": i64, "shift_ptr": i64,
                                            "out_ptr": i64}, {"BLOCK": 1024}))
    att = {"q8_ptr": i8, "qm_ptr": i64, "qe_ptr": i64, "k8_ptr": i8, "km_ptr": i64, "ke_ptr": i64, "v_ptr": i32,
           "valid_ptr": "i1", "lo_ptr": i64, "hi_ptr": i64, "len_ptr": i64, "out_ptr": i32, "table_ptr": i64}
    for mask, seg, has_len, blk_d in ((True, False, True, 64), (True, False, False, 128), (False, True, False, 32)):
        out.append((f"attention mask={mask} segments={seg} len={has_len} D={blk_d}", kb.attention, att,
                    {"MASK": mask, "SEGMENTS": seg, "HAS_LEN": has_len, "BLOCK_T": max(16, 2048 // blk_d),
                     "BLOCK_D": blk_d}))
    out.append(("quantize_rows", kt.quantize_rows, {"x_ptr": i32, "q_ptr": "bf16", "m_ptr": i64, "e_ptr": i64},
                {"BLOCK": 2048}))
    out.append(("attention_probs", kt.attention_probs, {"acc_ptr": "fp32", "mq_ptr": i64, "eq_ptr": i64,
                                                        "mk_ptr": i64, "ek_ptr": i64, "valid_ptr": "i1",
                                                        "probs_ptr": "fp64", "table_ptr": i64}, {"BLOCK": 128}))
    out.append(("context_out", kt.context_out, {"ctx_ptr": "fp64", "out_ptr": i32}, {"BLOCK": 64}))
    out.append(("rope", kt.rope, {"x_ptr": i32, "pos_ptr": i64, "cos_ptr": i64, "sin_ptr": i64, "out_ptr": i32},
                {"BLOCK": 32}))
    out.append(("swiglu", kt.swiglu, {"g_ptr": i32, "u_ptr": i32, "out_ptr": i32, "table_ptr": i64}, {"BLOCK": 1024}))
    out.append(("gelu", kt.gelu, {"x_ptr": i32, "out_ptr": i32, "table_ptr": i64}, {"BLOCK": 1024}))
    return out


def main() -> int:
    ok_all = True
    seen: set[str] = set()
    for name, kernel, pointers, consts in _variants():
        wide = kernel.fn.__name__ in ("linear_block", "attention", "qkv_rope") and kernel.fn.__name__ not in seen
        for scalar in ("i32", "i64") if wide else ("i32",):
            seen.add(kernel.fn.__name__)
            src = ASTSource(fn=kernel, signature=_signature(kernel, pointers, consts, scalar), constexprs=consts)
            try:
                triton.compile(src, target=TARGET)
                ok = True
                err = ""
            except Exception as exc:  # noqa: BLE001 (report any compiler failure as a failed check)
                ok, err = False, f"{type(exc).__name__}: {str(exc)[-600:]}"
            ok_all &= ok
            print(json.dumps({"check": f"{name} scalars={scalar}", "ok": ok, **({"error": err} if err else {})}))
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
