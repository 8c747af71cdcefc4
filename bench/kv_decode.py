"""Paged decode attention: achieved memory bandwidth on a GPU, correctness everywhere.

On a CUDA GPU: sweeps batch x context (H_kv=8, H_q=32, D=128, bf16, block 16; the KV read
far exceeds the 50 MB L2), timing the Triton kernel and the PyTorch reference (block-table
gather + SDPA) with ``triton.testing.do_bench`` (which flushes L2 between runs), and reports
achieved bytes/s as a share of the 3.35 TB/s H100 SXM peak and of a large device-to-device
copy measured in the same run. It first checks bf16 (and fp16) results against the fp32
reference. ``--tune`` also times a few tile/warp/stage choices on one shape.

Then the mixed batch (``paged_attention``): decode sequences and prefill chunks in one launch
(``--mixed`` sets decodes x context + chunks x chunk length), checked against the reference
and timed, in bf16 and with an fp8 (e4m3) cache, beside the decode-only fast path on the
same decode sequences.

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

from slurmgov.context.kernels import import_kernels  # noqa: E402

tk = import_kernels()  # slurmgov_kernels: the triton_kernels/ folder
pd = tk.paged_decode

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


def make_mixed(decodes, context, chunks, chunk_len, kv_heads, q_heads, head_dim, block_size,
               dtype, device, seed=0, fp8=False):
    """A mixed batch: ``decodes`` sequences of ``context`` tokens with 1 new token each, then
    ``chunks`` prefill chunks of ``chunk_len`` new tokens after ``context // 2`` cached ones.
    Unused cache slots hold NaN. Returns ``(q, kc, vc, bt, sl, qsl, scales)``, ``scales``
    ``(k_scale, v_scale)`` for an fp8 cache (else ``(None, None)``)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q_lens = [1] * decodes + [chunk_len] * chunks
    seq_lens = [context] * decodes + [context // 2 + chunk_len] * chunks
    max_blocks = math.ceil(max(seq_lens) / block_size)
    num_blocks = len(seq_lens) * max_blocks
    table = torch.randperm(num_blocks, generator=g).view(len(seq_lens), max_blocks)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    cache_dtype = torch.float8_e4m3fn if fp8 else dtype
    kc = torch.full(shape, float("nan"), device=device).to(cache_dtype)
    vc = torch.full(shape, float("nan"), device=device).to(cache_dtype)
    slots = torch.cat([table[i, torch.arange(n) // block_size] * block_size
                       + torch.arange(n) % block_size for i, n in enumerate(seq_lens)])
    k = torch.randn(len(slots), kv_heads, head_dim, generator=g).to(device, dtype)
    v = torch.randn(len(slots), kv_heads, head_dim, generator=g).to(device, dtype)
    scales = (None, None)
    if fp8:  # per-head scales from the data, as a calibration pass would set them
        scales = tuple((x.float().abs().amax(dim=(0, 2)) / 448.0).contiguous() for x in (k, v))
    tk.reshape_and_cache(k, v, kc, vc, slots.to(device), *scales)
    q = torch.randn(sum(q_lens), q_heads, head_dim, generator=g).to(device, dtype)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    return (q, kc, vc, table.to(torch.int32).to(device), sl.to(device), qsl.to(device),
            scales)


def mixed_correctness(device, dtypes, configs, split_sizes=(0, 64)):
    """paged_attention on mixed batches vs the fp32 reference (output and LSE), with a
    window and a soft cap on every other config and an fp8 cache on each. Returns failures."""
    failures = 0
    print(f"{'dtype':>9} {'cache':>5} {'dec x ctx':>9} {'chunks':>9} {'Hq/Hkv':>7} {'D':>4} "
          f"{'bs':>3} {'extra':>10} {'split':>5} {'max|err|':>10} {'lse err':>9}  ok")
    for dtype in dtypes:
        atol, rtol = TOL[dtype]
        for n, (dec, ctx, chunks, clen, hq, hkv, d, bs) in enumerate(configs):
            extra = dict(sliding_window=ctx // 3, softcap=30.0) if n % 2 else {}
            for fp8 in (False, True):
                q, kc, vc, bt, sl, qsl, (ks, vs) = make_mixed(
                    dec, ctx, chunks, clen, hkv, hq, d, bs, dtype, device, seed=n, fp8=fp8)
                ref, ref_lse = tk.reference_paged_attention(q, kc, vc, bt, sl, qsl, k_scale=ks,
                                                            v_scale=vs, return_lse=True, **extra)
                for part in split_sizes:
                    out, lse = tk.paged_attention(q, kc, vc, bt, sl, qsl, k_scale=ks,
                                                  v_scale=vs, return_lse=True,
                                                  partition_size=part, **extra)
                    err = (out.float() - ref.float()).abs().max().item()
                    lerr = (lse - ref_lse).abs().max().item()
                    ok = bool(torch.allclose(out.float(), ref.float(), atol=atol, rtol=rtol)
                              and lerr < 1e-2)
                    failures += not ok
                    print(f"{str(dtype)[6:]:>9} {'fp8' if fp8 else 'same':>5} "
                          f"{f'{dec}x{ctx}':>9} {f'{chunks}x{clen}':>9} {f'{hq}/{hkv}':>7} "
                          f"{d:>4} {bs:>3} {'win+cap' if extra else '-':>10} {part:>5} "
                          f"{err:>10.2e} {lerr:>9.2e}  {'ok' if ok else 'FAIL'}")
    return failures


def cpu_sweep() -> int:
    print("No CUDA GPU present: no bandwidth numbers. Running a small correctness sweep in "
          "Triton's interpreter (fp32, fp16; bf16 arithmetic is wrong in the interpreter).")
    configs = [(3, 40, 4, 4, 16, 16), (3, 33, 8, 2, 32, 16), (2, 48, 5, 1, 16, 8),
               (2, 64, 8, 1, 64, 32)]
    failures = correctness("cpu", [torch.float32, torch.float16], configs)
    print("\n== mixed batch (paged_attention): decodes + prefill chunks, same and fp8 cache ==")
    failures += mixed_correctness("cpu", [torch.float32, torch.float16],
                                  [(3, 40, 1, 5, 8, 2, 32, 16), (2, 33, 1, 20, 5, 1, 64, 8)],
                                  split_sizes=(0, 32))
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
    failures += mixed_bench(args, copy_bps)
    if args.tune:
        tune(hkv, hq, d, bs, dtype)
    return 1 if failures else 0


def mixed_bench(args, copy_bps) -> int:
    """The mixed batch on a GPU: correctness first, then time and bandwidth."""
    print("\n== mixed batch correctness (paged_attention; bf16, fp16, and an fp8 cache) ==")
    configs = [(6, 1000, 2, 129, 32, 8, 128, 16), (4, 517, 1, 300, 40, 8, 128, 16),
               (3, 77, 2, 5, 5, 1, 80, 32), (2, 2049, 1, 64, 32, 4, 256, 16)]
    failures = mixed_correctness("cuda", [torch.bfloat16, torch.float16], configs,
                                 split_sizes=(0, 256))
    print("mixed correctness:", "PASS" if not failures else f"{failures} FAILED")
    hkv, hq, d, bs, dtype = 8, 32, 128, 16, torch.bfloat16
    decodes, ctx = args.mixed[0], args.mixed[1]
    chunks, clen = args.mixed[2], args.mixed[3]
    print(f"\n== mixed batch timing: {decodes} decodes x {ctx} tokens + {chunks} chunks x {clen} "
          f"new tokens (after {ctx // 2} cached); H_q={hq}, H_kv={hkv}, D={d}, block {bs} ==")
    print(f"{'cache':>5} {'kernel':>22} {'us':>9} {'KV MB':>7} {'GB/s':>7} {'%copy':>6} "
          f"{'TFLOP/s':>8}")
    for fp8 in (False, True):
        q, kc, vc, bt, sl, qsl, (ks, vs) = make_mixed(decodes, ctx, chunks, clen, hkv, hq, d,
                                                      bs, dtype, "cuda", seed=3, fp8=fp8)
        elem = 1 if fp8 else 2
        kv_bytes = int(sl.sum()) * hkv * d * 2 * elem  # each cached token read at least once
        # QK^T and PV: 4 * head_dim FLOPs per (query head, visible key); causal for chunks.
        chunk_keys = sum(ctx // 2 + j + 1 for j in range(clen))
        flops = 4 * d * hq * (decodes * ctx + chunks * chunk_keys)
        out = torch.empty_like(q)
        max_len = int(sl.max())
        # The default packs 16 // group query tokens per program (decode-friendly); a prefill
        # chunk may prefer 64 rows (block_q = 64 // group): both are timed.
        runs = [("paged_attention", lambda: tk.paged_attention(
                    q, kc, vc, bt, sl, qsl, k_scale=ks, v_scale=vs, max_seq_len=max_len,
                    out=out)),
                ("paged_attention M=64", lambda: tk.paged_attention(
                    q, kc, vc, bt, sl, qsl, k_scale=ks, v_scale=vs, max_seq_len=max_len,
                    out=out, block_q=64 // (hq // hkv)))]
        dq, dbt, dsl = q[:decodes], bt[:decodes], sl[:decodes]
        dec_bytes = decodes * ctx * hkv * d * 2 * elem
        runs.append(("decode part: fast path", lambda: tk.paged_decode_attention(
            dq, kc, vc, dbt, dsl, max_seq_len=ctx, k_scale=ks, v_scale=vs)))
        for name, fn in runs:
            ms = bench_ms(fn)
            whole = name.startswith("paged_attention")
            nbytes = kv_bytes if whole else dec_bytes
            nflops = flops if whole else 4 * d * hq * decodes * ctx
            bps = nbytes / (ms * 1e-3)
            print(f"{'fp8' if fp8 else 'bf16':>5} {name:>22} {ms * 1e3:>9.1f} "
                  f"{nbytes / 1e6:>7.0f} {bps / 1e9:>7.0f} {100 * bps / copy_bps:>5.0f}% "
                  f"{nflops / (ms * 1e-3) / 1e12:>8.1f}")
        del q, kc, vc, bt, sl, qsl, out
        torch.cuda.empty_cache()
    return failures


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
    ap.add_argument("--mixed", default="60,4096,2,512",
                    type=lambda s: [int(x) for x in s.split(",")],
                    help="mixed batch: decodes,context,chunks,chunk_len (default 60,4096,2,512)")
    ap.add_argument("--tune", action="store_true")
    args = ap.parse_args(argv)
    if not HAS_GPU:
        return cpu_sweep()
    return gpu_bench(args)


if __name__ == "__main__":
    sys.exit(main())
