"""Paged decode attention: achieved memory bandwidth on a GPU, correctness everywhere.

On a CUDA GPU: sweeps batch x context (H_kv=8, H_q=32, D=128, bf16, block 16; the KV read
far exceeds the 50 MB L2), timing the Triton kernel and the PyTorch reference (block-table
gather + SDPA) with ``triton.testing.do_bench`` (which flushes L2 between runs), and reports
achieved bytes/s as a share of the 3.35 TB/s H100 SXM peak and of a large device-to-device
copy measured in the same run. It first checks bf16 (and fp16) results against the fp32
reference. ``--tune`` also times a few tile/warp/stage choices on one shape.

Without a GPU it says so and runs a small correctness sweep in Triton's interpreter
(fp32/fp16; the interpreter's bf16 arithmetic is wrong), exiting 0 when it passes.

    python bench/kv_decode.py [--batches 1,4,16,64] [--contexts 1024,4096,16384] [--tune]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are decorated

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton  # noqa: E402
import triton.testing  # noqa: E402

import triton_kernels as tk  # noqa: E402
import triton_kernels.paged_decode as pd  # noqa: E402

PEAK_BPS = 3.35e12  # H100 SXM5 HBM3
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1.5e-2, 1e-2)}


def make_case(batch, context, kv_heads, q_heads, head_dim, block_size, dtype, device, seed=0,
              ragged=False, nan_fill=False):
    """Random paged K/V with a random permuted block table. ``ragged`` draws seq_lens in
    [1, context]; otherwise every sequence has ``context`` tokens."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    if ragged:
        lens = torch.randint(1, context + 1, (batch,), generator=g)
        lens[0] = 1
        lens[-1] = context
    else:
        lens = torch.full((batch,), context)
    max_blocks = math.ceil(context / block_size)
    num_blocks = batch * max_blocks
    table = torch.randperm(num_blocks, generator=g).view(batch, max_blocks).to(torch.int32)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    if nan_fill:
        kc = torch.full(shape, float("nan"), dtype=dtype, device=device)
        vc = torch.full(shape, float("nan"), dtype=dtype, device=device)
        for i, n in enumerate(lens.tolist()):
            pos = torch.arange(n)
            blk, off = table[i].long()[pos // block_size], pos % block_size
            kc[blk.to(device), off.to(device)] = torch.randn(n, kv_heads, head_dim,
                                                            generator=g).to(device, dtype)
            vc[blk.to(device), off.to(device)] = torch.randn(n, kv_heads, head_dim,
                                                            generator=g).to(device, dtype)
    else:
        kc = torch.randn(shape, device=device, dtype=dtype)
        vc = torch.randn(shape, device=device, dtype=dtype)
    q = torch.randn(batch, q_heads, head_dim, generator=g).to(device, dtype)
    return q, kc, vc, table.to(device), lens.to(torch.int32).to(device)


def torch_decode(q, kc, vc, table, context):
    """The PyTorch baseline a user would write: gather pages, then SDPA with GQA."""
    batch, q_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = kc.shape
    nblk = math.ceil(context / block_size)
    idx = table[:, :nblk].long()
    k = kc[idx].view(batch, nblk * block_size, kv_heads, head_dim)[:, :context].transpose(1, 2)
    v = vc[idx].view(batch, nblk * block_size, kv_heads, head_dim)[:, :context].transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(2), k, v, enable_gqa=True)
    return out.squeeze(2)


def correctness(device, dtypes, configs, split_sizes=(0, 16), tile_ns=(None,)):
    """Kernel vs fp32 reference (NaN in unused slots). Returns the number of failures."""
    failures = 0
    print(f"{'dtype':>9} {'B':>3} {'ctx':>5} {'Hq/Hkv':>7} {'D':>4} {'bs':>3} {'split':>5} "
          f"{'tile':>4} {'max|err|':>10}  ok")
    for dtype in dtypes:
        atol, rtol = TOL[dtype]
        for batch, ctx, hq, hkv, d, bs in configs:
            q, kc, vc, bt, sl = make_case(batch, ctx, hkv, hq, d, bs, dtype, device, seed=ctx,
                                          ragged=True, nan_fill=True)
            ref = tk.reference_paged_decode(q, kc, vc, bt, sl).float()
            for part in split_sizes:
                for tile in tile_ns:
                    out = tk.paged_decode_attention(q, kc, vc, bt, sl, partition_size=part,
                                                    tile_n=tile).float()
                    err = (out - ref).abs().max().item()
                    ok = bool(torch.allclose(out, ref, atol=atol, rtol=rtol))
                    failures += not ok
                    print(f"{str(dtype)[6:]:>9} {batch:>3} {ctx:>5} {f'{hq}/{hkv}':>7} {d:>4} "
                          f"{bs:>3} {str('auto' if part is None else part):>5} {str(tile or '-'):>4} {err:>10.2e}  "
                          f"{'ok' if ok else 'FAIL'}")
    return failures


def cpu_sweep() -> int:
    print("No CUDA GPU present: no bandwidth numbers. Running a small correctness sweep in "
          "Triton's interpreter (fp32, fp16; bf16 arithmetic is wrong in the interpreter).")
    configs = [(3, 40, 4, 4, 16, 16), (3, 33, 8, 2, 32, 16), (2, 48, 5, 1, 16, 8),
               (2, 64, 8, 1, 64, 32)]
    failures = correctness("cpu", [torch.float32, torch.float16], configs)
    print("correctness:", "PASS" if not failures else f"{failures} FAILED")
    return 1 if failures else 0


def bench_ms(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes/s of a 2 GiB device-to-device copy (read + write counted)."""
    n = 2 * 1024 ** 3
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / (ms * 1e-3)


def gpu_bench(args) -> int:
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, {props.multi_processor_count} SMs, "
          f"{props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, triton "
          f"{triton.__version__}")
    print("\n== correctness (bf16, fp16 vs fp32 reference; NaN in unused slots) ==")
    configs = [(4, 1000, 32, 8, 128, 16), (3, 4099, 32, 8, 128, 16), (2, 517, 40, 8, 128, 16),
               (5, 300, 8, 2, 64, 32), (2, 77, 5, 1, 80, 16)]
    failures = correctness("cuda", [torch.bfloat16, torch.float16], configs,
                           split_sizes=(0, 256, None), tile_ns=(None, 64))
    print("correctness:", "PASS" if not failures else f"{failures} FAILED")

    copy_bps = copy_bandwidth()
    print(f"\ndevice-to-device copy (2 GiB): {copy_bps / 1e9:.0f} GB/s = "
          f"{100 * copy_bps / PEAK_BPS:.0f}% of {PEAK_BPS / 1e12:.2f} TB/s")

    hkv, hq, d, bs, dtype = 8, 32, 128, 16, torch.bfloat16
    elem = 2
    print(f"\n== decode sweep: H_q={hq}, H_kv={hkv}, D={d}, block {bs}, bf16; times are "
          f"medians of do_bench ==")
    hdr = (f"{'B':>3} {'ctx':>6} {'KV MB':>8} {'split':>5} {'triton us':>10} {'GB/s':>7} "
           f"{'%peak':>6} {'%copy':>6} {'torch us':>9} {'GB/s':>7} {'speedup':>8}")
    print(hdr)
    rows = []
    for batch in args.batches:
        for ctx in args.contexts:
            kv_bytes = batch * ctx * hkv * d * 2 * elem
            need = kv_bytes * (1 if args.skip_reference else 3)  # reference gathers a copy
            if need > 0.8 * props.total_memory:
                print(f"{batch:>3} {ctx:>6}  skipped (needs {need / 2**30:.1f} GiB)")
                continue
            q, kc, vc, bt, sl = make_case(batch, ctx, hkv, hq, d, bs, dtype, "cuda", seed=1)
            # bytes moved: KV once, plus q, out and the block table
            total = kv_bytes + 2 * q.numel() * elem + bt.numel() * 4 + sl.numel() * 4
            out = torch.empty_like(q)

            def run_triton():
                tk.paged_decode_attention(q, kc, vc, bt, sl, max_seq_len=ctx, out=out)

            t_ms = bench_ms(run_triton)
            # The number of partitions the wrapper's auto heuristic picks (1 = single pass).
            part = pd.auto_partition_size(batch, hkv, ctx, q.device)
            part = triton.cdiv(part, 32) * 32  # the wrapper rounds up to its GPU tile
            nparts = triton.cdiv(ctx, part) if part else 1
            if args.skip_reference:
                r_ms = float("nan")
            else:
                r_ms = bench_ms(lambda: torch_decode(q, kc, vc, bt, ctx))
            bps = total / (t_ms * 1e-3)
            rbps = total / (r_ms * 1e-3)
            rows.append((batch, ctx, bps, rbps))
            print(f"{batch:>3} {ctx:>6} {kv_bytes / 1e6:>8.0f} {nparts:>5} {t_ms * 1e3:>10.1f} "
                  f"{bps / 1e9:>7.0f} {100 * bps / PEAK_BPS:>5.0f}% {100 * bps / copy_bps:>5.0f}% "
                  f"{r_ms * 1e3:>9.1f} {rbps / 1e9:>7.0f} {r_ms / t_ms:>7.1f}x")
            del q, kc, vc, bt, sl, out
            torch.cuda.empty_cache()
    if rows:
        big = [r for r in rows if r[0] * r[1] * hkv * d * 2 * elem >= 256e6]
        sel = big or rows
        mean = sum(r[2] for r in sel) / len(sel)
        print(f"\nmean over {len(sel)} shapes with KV >= 256 MB: {mean / 1e9:.0f} GB/s = "
              f"{100 * mean / PEAK_BPS:.0f}% of peak, {100 * mean / copy_bps:.0f}% of copy")
    if args.tune:
        tune(hkv, hq, d, bs, dtype)
    return 1 if failures else 0


def tune(hkv, hq, d, bs, dtype):
    print("\n== --tune: tile / warps / stages on B=16, ctx=4096 (single pass) and B=1, "
          "ctx=16384 (split 512) ==")
    for batch, ctx, part in ((16, 4096, 0), (1, 16384, 512)):
        q, kc, vc, bt, sl = make_case(batch, ctx, hkv, hq, d, bs, dtype, "cuda", seed=2)
        total = batch * ctx * hkv * d * 2 * 2
        for tile in (16, 32, 64):
            for warps in (2, 4, 8):
                for stages in (1, 2, 3):
                    try:
                        ms = bench_ms(lambda: tk.paged_decode_attention(
                            q, kc, vc, bt, sl, max_seq_len=ctx, partition_size=part,
                            tile_n=tile, num_warps=warps, num_stages=stages))
                    except Exception as e:  # e.g. out of shared memory
                        print(f"B={batch} ctx={ctx} tile={tile} warps={warps} stages={stages}: "
                              f"{type(e).__name__}")
                        continue
                    print(f"B={batch:>2} ctx={ctx:>5} tile={tile:>2} warps={warps} "
                          f"stages={stages}: {ms * 1e3:8.1f} us {total / ms / 1e6:7.0f} GB/s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,4,16,64",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--contexts", default="1024,4096,16384",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--skip-reference", action="store_true",
                    help="time only the Triton kernel (the gather baseline needs 3x the KV)")
    ap.add_argument("--tune", action="store_true")
    args = ap.parse_args(argv)
    if not HAS_GPU:
        return cpu_sweep()
    return gpu_bench(args)


if __name__ == "__main__":
    sys.exit(main())
