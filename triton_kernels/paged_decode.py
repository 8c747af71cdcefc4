"""Paged decode attention over a block table, with an optional split-KV (flash-decoding) mode.

One program handles one (sequence, KV head[, KV partition]). The query heads that share that
KV head (grouped-query attention) are packed into the M dimension of ``tl.dot`` and padded to
>= 16 rows, so each K/V tile is read from memory once for the whole group and the GPU path
uses tensor cores. KV is tiled by ``TILE_N`` tokens independently of the block size: each
token's physical block is looked up in the block table, so any block size works.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import FLOAT_DTYPES, check, check_caches, check_metadata_values, check_tensor
from .merge_attention import LOG2E, _merge
from .paged_attention import paged_attention
from .reference import reference_paged_decode  # noqa: F401


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, bt_ptr, seq_lens_ptr, out_ptr, lse_ptr,
    scale_log2,
    stride_qs, stride_qh, stride_qd,
    stride_kcb, stride_kcs, stride_kch, stride_kcd,
    stride_vcb, stride_vcs, stride_vch, stride_vcd,
    stride_bts, stride_btb, stride_sl,
    stride_os, stride_oh, stride_op, stride_od,
    stride_ls, stride_lh, stride_lp,
    group, head_dim, partition_size,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, TILE_N: tl.constexpr,
    IS_SPLIT: tl.constexpr, DOT_PREC: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    part = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq * stride_sl)
    start = part * partition_size
    end = tl.minimum(seq_len, start + partition_size)

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, TILE_N)
    m_mask = offs_m < group
    d_mask = offs_d < head_dim
    q_heads = kvh * group + offs_m
    q = tl.load(q_ptr + seq * stride_qs + q_heads[:, None] * stride_qh
                + offs_d[None, :] * stride_qd, mask=m_mask[:, None] & d_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = k_cache_ptr + kvh * stride_kch
    v_base = v_cache_ptr + kvh * stride_vch
    # Every tile visited starts below `end`, so each has >= 1 live token and the running max
    # becomes finite on the first tile (no -inf - -inf).
    for tile_start in range(start, end, TILE_N):
        pos = tile_start + offs_n
        n_mask = pos < end
        # Mask the LOADS past seq_len (not just the scores): unused slots may hold NaN and
        # 0 * NaN would poison the P @ V product.
        phys = tl.load(bt_ptr + seq * stride_bts + (pos // BLOCK_SIZE) * stride_btb, mask=n_mask,
                       other=0)
        phys = phys.to(tl.int64)
        slot = pos % BLOCK_SIZE  # constexpr block size: shifts, not divisions, when a power of 2
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + phys[:, None] * stride_kcb + slot[:, None] * stride_kcs
                    + offs_d[None, :] * stride_kcd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + phys[:, None] * stride_vcb + slot[:, None] * stride_vcs
                    + offs_d[None, :] * stride_vcd, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2  # [BLOCK_M, TILE_N]
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    # An empty range (seq_len 0, or a partition past the end) leaves l_i = 0: emit zeros and,
    # in split mode, lse = -inf so the merge gives the partition no weight.
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    o_mask = m_mask[:, None] & d_mask[None, :]
    o_ptrs = (out_ptr + seq * stride_os + q_heads[:, None] * stride_oh + part * stride_op
              + offs_d[None, :] * stride_od)
    tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=o_mask)
    if IS_SPLIT:
        lse = tl.where(l_i > 0, m_i + tl.log2(l_safe), float("-inf"))  # log2 domain
        tl.store(lse_ptr + seq * stride_ls + q_heads * stride_lh + part * stride_lp, lse,
                 mask=m_mask)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def auto_partition_size(num_seqs: int, kv_heads: int, max_seq_len: int,
                        device: torch.device) -> int:
    """Tokens per split-KV partition, or 0 for the single-pass kernel.

    Split only on a GPU, and only when the (sequence, KV head) programs alone would leave it
    under-filled (< 2 programs per SM) and the context is long enough to be worth a merge.
    """
    programs = num_seqs * kv_heads
    target = 2 * _num_sms(device)
    if device.type != "cuda" or programs >= target or max_seq_len <= 1024:
        return 0
    splits = min(triton.cdiv(target, programs), triton.cdiv(max_seq_len, 256))
    return triton.cdiv(max_seq_len, splits)


def paged_decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    *,
    max_seq_len: int | None = None,
    partition_size: int | None = None,
    tile_n: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    out: torch.Tensor | None = None,
    return_lse: bool = False,
    sliding_window: int | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    validate: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decode attention: one new query token per sequence against its paged K/V.

    The fast path for a decode-only batch. With ``return_lse``, a window, soft cap, ALiBi
    or an fp8 cache it is a call of ``paged_attention`` (one query token per sequence,
    at position ``seq_lens[i] - 1``), whose arguments these are.

    Args:
        query: ``[num_seqs, q_heads, head_dim]``; query head ``h`` uses KV head
            ``h // (q_heads // kv_heads)``.
        key_cache, value_cache: ``[num_blocks, block_size, kv_heads, head_dim]``.
        block_tables: int32 ``[num_seqs, max_blocks]`` (physical block of each logical block).
        seq_lens: int32 ``[num_seqs]``; positions ``>= seq_lens[i]`` are never read.
        scale: softmax scale, default ``head_dim ** -0.5``.
        max_seq_len: an upper bound on ``seq_lens`` (avoids a device sync when given).
        partition_size: ``None`` picks automatically (split-KV on a GPU when there are too
            few (sequence, KV head) programs to fill it); ``0`` forces the single-pass kernel;
            ``> 0`` forces split-KV with that many tokens per partition (rounded up to a
            multiple of the tile), merged by a log-sum-exp kernel.
        tile_n: KV tokens per inner iteration (power of two >= 16), default 32 on GPU and
            16 in the interpreter.

    Returns ``[num_seqs, q_heads, head_dim]`` in the query dtype (or ``out``), and with
    ``return_lse`` the natural-log LSE, fp32 ``[num_seqs, q_heads]``.
    """
    device = check_caches(key_cache, value_cache)
    _, block_size, kv_heads, head_dim = key_cache.shape
    query = check_tensor("query", query, dtypes=FLOAT_DTYPES, shape=(None, None, head_dim),
                         device=device)
    num_seqs, q_heads, _ = query.shape
    check(q_heads % kv_heads == 0 and q_heads > 0,
          f"q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})")
    block_tables = check_tensor("block_tables", block_tables, dtypes=(torch.int32,),
                                shape=(num_seqs, None), device=device)
    seq_lens = check_tensor("seq_lens", seq_lens, dtypes=(torch.int32,), shape=(num_seqs,),
                            device=device)
    if (return_lse or sliding_window or softcap or alibi_slopes is not None
            or k_scale is not None or v_scale is not None or key_cache.dtype != query.dtype):
        qsl = torch.arange(num_seqs + 1, dtype=torch.int32, device=device)
        if max_seq_len is None and partition_size is None:
            max_seq_len = int(seq_lens.max()) if num_seqs else 0
        if partition_size is None:
            partition_size = auto_partition_size(num_seqs, kv_heads, max_seq_len or 0, device)
        return paged_attention(
            query, key_cache, value_cache, block_tables, seq_lens, qsl, scale,
            sliding_window=sliding_window, softcap=softcap, alibi_slopes=alibi_slopes,
            k_scale=k_scale, v_scale=v_scale, return_lse=return_lse, max_seq_len=max_seq_len,
            partition_size=partition_size, block_q=1, tile_n=tile_n, num_warps=num_warps,
            num_stages=num_stages, out=out, validate=validate)
    check(tile_n is None or (tile_n >= 16 and tile_n & (tile_n - 1) == 0),
          "tile_n must be a power of two >= 16")
    if validate:  # as paged_attention's validate
        check_metadata_values(block_tables, seq_lens, key_cache.shape[0], block_size)
    group = q_heads // kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    if out is None:
        out = torch.empty_like(query)
    out = check_tensor("out", out, dtypes=(query.dtype,), shape=query.shape, device=device)
    if num_seqs == 0:
        return out
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max())
    on_gpu = query.device.type == "cuda"
    if tile_n is None:
        tile_n = 32 if on_gpu else 16
    block_m = max(16, triton.next_power_of_2(group))  # tl.dot needs M >= 16 on a GPU
    block_d = max(16, triton.next_power_of_2(head_dim))
    # tf32 would lose ~3 decimal digits on fp32 inputs; fp16/bf16 inputs ignore this.
    dot_prec = "ieee" if query.dtype == torch.float32 else "tf32"

    if partition_size is None:
        partition_size = auto_partition_size(num_seqs, kv_heads, max_seq_len, query.device)
    if partition_size > 0:
        partition_size = triton.cdiv(partition_size, tile_n) * tile_n
    num_parts = triton.cdiv(max(max_seq_len, 1), partition_size) if partition_size > 0 else 1

    common = dict(BLOCK_M=block_m, BLOCK_D=block_d, TILE_N=tile_n, DOT_PREC=dot_prec,
                  num_warps=num_warps, num_stages=num_stages)
    strides = (*query.stride(), *key_cache.stride(), *value_cache.stride(),
               *block_tables.stride(), seq_lens.stride(0))
    if num_parts == 1:
        _paged_decode_kernel[(num_seqs, kv_heads, 1)](
            query, key_cache, value_cache, block_tables, seq_lens, out, out,
            scale * LOG2E, *strides,
            out.stride(0), out.stride(1), 0, out.stride(2), 0, 0, 0,
            group, head_dim, max(max_seq_len, 1),
            BLOCK_SIZE=block_size, IS_SPLIT=False, **common,
        )
        return out
    part_out = torch.empty((num_seqs, q_heads, num_parts, head_dim), dtype=torch.float32,
                           device=query.device)
    lse = torch.empty((num_seqs, q_heads, num_parts), dtype=torch.float32, device=query.device)
    _paged_decode_kernel[(num_seqs, kv_heads, num_parts)](
        query, key_cache, value_cache, block_tables, seq_lens, part_out, lse,
        scale * LOG2E, *strides,
        *part_out.stride(), *lse.stride(),
        group, head_dim, partition_size,
        BLOCK_SIZE=block_size, IS_SPLIT=True, **common,
    )
    _merge(part_out, lse, out, None, 1.0)  # this kernel's partition LSEs are base 2
    return out


__all__ = ["auto_partition_size", "paged_decode_attention", "reference_paged_decode"]
