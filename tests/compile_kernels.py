"""Compile every paged-KV kernel for NVIDIA GPUs without one: Triton's own compiler down to a
cubin (ptxas ships with triton), for sm_80 and sm_90 (fp8 needs sm_89+, so sm_90 only).

The interpreter accepts code a GPU compile refuses (tl.dot shapes, a loop variable changing
type, non-constexpr globals), so this catches what CPU tests cannot. Run without
TRITON_INTERPRET (the kernels must be decorated as compilable functions):
``python tests/compile_kernels.py``; tests/test_paged_attention.py runs it in a subprocess.
Prints one line per variant; exits 1 if any fails.
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback
from pathlib import Path

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from slurmgov.context.kernels import import_kernels  # noqa: E402

import_kernels()  # the package slurmgov_kernels (triton_kernels/): its submodules by name below

FLOAT_ARGS = {"scale", "softcap", "scale_log2", "to_log2"}


def mod(name):
    return sys.modules[f"slurmgov_kernels.{name}"]


def compile_kernel(fn, ptrs: dict, consts: dict, arch: int, ints: dict | None = None):
    """``ptrs``: pointer parameter -> Triton type (``*fp16``); other parameters are i32 (or
    fp32 when in FLOAT_ARGS) unless given in ``consts`` (constexpr, also ints that a launch
    would specialize, e.g. a value of 1)."""
    names = list(inspect.signature(fn.fn).parameters)
    sig = {}
    for n in names:
        if n in consts:
            sig[n] = "constexpr"
        elif n in ptrs:
            sig[n] = ptrs[n]
        else:
            sig[n] = "fp32" if n in FLOAT_ARGS else (ints or {}).get(n, "i32")
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=4, num_stages=2))


def attention_variants():
    fn = mod("paged_attention")._paged_attention_kernel
    base = dict(BLOCK_SIZE=16, BLOCK_M=16, BLOCK_Q=4, BLOCK_D=128, TILE_N=32, USE_WINDOW=True,
                USE_SOFTCAP=True, USE_ALIBI=True, FP8=False, STORE_LSE=True, DOT_PREC="tf32",
                CAUSAL=True)

    def ptrs(q, cache, out=None):
        return {"q_ptr": q, "k_cache_ptr": cache, "v_cache_ptr": cache, "bt_ptr": "*i32",
                "seq_lens_ptr": "*i32", "q_start_ptr": "*i32", "alibi_ptr": "*fp32",
                "k_scale_ptr": "*fp32", "v_scale_ptr": "*fp32", "out_ptr": out or q,
                "lse_ptr": "*fp32"}

    yield "paged_attention fp16, all options", fn, ptrs("*fp16", "*fp16"), base, 80
    yield "paged_attention bf16, all options", fn, ptrs("*bf16", "*bf16"), base, 90
    yield ("paged_attention fp32, none, one sequence, MQA group 1 (specialized)", fn,
           ptrs("*fp32", "*fp32"), {**base, "USE_WINDOW": False, "USE_SOFTCAP": False,
                                    "USE_ALIBI": False, "STORE_LSE": False, "DOT_PREC": "ieee",
                                    "num_seqs": 1, "group": 1, "BLOCK_Q": 16, "CAUSAL": False}, 80)
    yield ("paged_attention bf16 query, fp8 cache, split-KV", fn,
           ptrs("*bf16", "*fp8e4nv", "*fp32"), {**base, "FP8": True}, 90)
    yield ("paged_attention fp16, fp8 cache, head 256, block 1, decode", fn,
           ptrs("*fp16", "*fp8e4nv"), {**base, "FP8": True, "BLOCK_D": 256, "BLOCK_SIZE": 1,
                                        "BLOCK_Q": 1}, 90)


def other_variants():
    merge = mod("merge_attention")._merge_kernel
    for store in (False, True):
        yield (f"merge STORE_LSE={store}", merge,
               {"part_out_ptr": "*fp32", "lse_ptr": "*fp32", "out_ptr": "*bf16",
                "lse_out_ptr": "*fp32"}, dict(BLOCK_P=128, BLOCK_D=128, STORE_LSE=store), 80)
    rc = mod("reshape_and_cache")._reshape_and_cache_kernel
    for cache, fp8, arch in (("*fp16", False, 80), ("*fp8e4nv", True, 90)):
        yield (f"reshape_and_cache -> {cache[1:]}", rc,
               {"key_ptr": "*bf16", "value_ptr": "*bf16", "key_cache_ptr": cache,
                "value_cache_ptr": cache, "slot_ptr": "*i64", "k_scale_ptr": "*fp32",
                "v_scale_ptr": "*fp32"}, dict(BLOCK_H=8, BLOCK_D=128, FP8=fp8), arch)
    dec = mod("paged_decode")._paged_decode_kernel
    for split in (False, True):
        yield (f"paged_decode split={split}", dec,
               {"q_ptr": "*bf16", "k_cache_ptr": "*bf16", "v_cache_ptr": "*bf16",
                "bt_ptr": "*i32", "seq_lens_ptr": "*i32",
                "out_ptr": "*fp32" if split else "*bf16", "lse_ptr": "*fp32"},
               dict(BLOCK_SIZE=16, BLOCK_M=16, BLOCK_D=128, TILE_N=32, IS_SPLIT=split,
                    DOT_PREC="tf32"), 80)
    yield ("gather_kv", mod("gather_kv")._gather_kv_kernel,
           {"key_cache_ptr": "*fp16", "value_cache_ptr": "*fp16", "bt_ptr": "*i32",
            "seq_lens_ptr": "*i32", "cu_ptr": "*i64", "key_out_ptr": "*fp16",
            "value_out_ptr": "*fp16"}, dict(BLOCK_T=16, BLOCK_H=8, BLOCK_D=128), 80)
    yield ("copy_blocks", mod("copy_blocks")._copy_blocks_kernel,
           {"cache_ptrs_ptr": "*i64", "mapping_ptr": "*i64", "dtype_ref_ptr": "*fp16"},
           dict(BLOCK=4096), 80)


def main() -> int:
    failures = 0
    for name, fn, ptrs, consts, arch in [*attention_variants(), *other_variants()]:
        try:
            k = compile_kernel(fn, ptrs, consts, arch)
            print(f"ok    sm_{arch} {name} (shared memory {k.metadata.shared} B)")
        except Exception:  # report every variant, then fail
            failures += 1
            print(f"FAIL  sm_{arch} {name}")
            traceback.print_exc(limit=4)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
