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

from .reference import reference_paged_decode  # noqa: F401

LOG2E = 1.4426950408889634


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, bt_ptr, seq_lens_ptr, out_ptr, lse_ptr,
    scale_log2,
    stride_qs, stride_qh, stride_qd,
    stride_kcb, stride_kcs, stride_kch, stride_kcd,
    stride_vcb, stride_vcs, stride_vch, stride_vcd,
    stride_bt,
    stride_os, stride_oh, stride_op, stride_od,
    stride_ls, stride_lh, stride_lp,
    group, head_dim, partition_size,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, TILE_N: tl.constexpr,
    IS_SPLIT: tl.constexpr, DOT_PREC: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    part = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
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
        phys = tl.load(bt_ptr + seq * stride_bt + pos // BLOCK_SIZE, mask=n_mask, other=0)
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


@triton.jit
def _merge_splits_kernel(
    part_out_ptr, lse_ptr, out_ptr,
    stride_ps, stride_ph, stride_pp, stride_pd,
    stride_ls, stride_lh, stride_lp,
    stride_os, stride_oh, stride_od,
    num_parts, head_dim,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Log-sum-exp merge: out = sum_p 2^(lse_p - max) * o_p / sum_p 2^(lse_p - max).
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    p_mask = offs_p < num_parts
    d_mask = offs_d < head_dim
    lse = tl.load(lse_ptr + seq * stride_ls + head * stride_lh + offs_p * stride_lp,
                  mask=p_mask, other=float("-inf"))
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # all partitions empty: weights all 0
    w = tl.exp2(lse - m)
    o = tl.load(part_out_ptr + seq * stride_ps + head * stride_ph + offs_p[:, None] * stride_pp
                + offs_d[None, :] * stride_pd, mask=p_mask[:, None] & d_mask[None, :], other=0.0)
    total = tl.sum(w, axis=0)
    total = tl.where(total > 0, total, 1.0)
    res = tl.sum(o * w[:, None], axis=0) / total
    tl.store(out_ptr + seq * stride_os + head * stride_oh + offs_d * stride_od,
             res.to(out_ptr.dtype.element_ty), mask=d_mask)


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
) -> torch.Tensor:
    """Decode attention: one new query token per sequence against its paged K/V.

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

    Returns ``[num_seqs, q_heads, head_dim]`` in the query dtype (or ``out``).
    """
    num_seqs, q_heads, head_dim = query.shape
    _, block_size, kv_heads, d2 = key_cache.shape
    assert d2 == head_dim and value_cache.shape == key_cache.shape
    assert q_heads % kv_heads == 0, "q_heads must be a multiple of kv_heads"
    assert block_tables.dtype == torch.int32 and seq_lens.dtype == torch.int32
    assert query.dtype == key_cache.dtype == value_cache.dtype, "query and cache dtypes differ"
    group = q_heads // kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    if out is None:
        out = torch.empty_like(query)
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
    strides = (*query.stride(), *key_cache.stride(), *value_cache.stride(), block_tables.stride(0))
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
    _merge_splits_kernel[(num_seqs, q_heads)](
        part_out, lse, out, *part_out.stride(), *lse.stride(), *out.stride(),
        num_parts, head_dim,
        BLOCK_P=triton.next_power_of_2(num_parts), BLOCK_D=triton.next_power_of_2(head_dim),
    )
    return out


def merge_attention_partitions(part_out: torch.Tensor, lse_log2: torch.Tensor,
                               out: torch.Tensor | None = None) -> torch.Tensor:
    """Merge split-KV partial outputs ``[S, H, P, D]`` (fp32) with their base-2 log-sum-exps
    ``[S, H, P]`` into ``[S, H, D]``; a partition with ``lse = -inf`` gets no weight."""
    s, h, p, d = part_out.shape
    if out is None:
        out = part_out.new_empty((s, h, d))
    _merge_splits_kernel[(s, h)](
        part_out, lse_log2, out, *part_out.stride(), *lse_log2.stride(), *out.stride(),
        p, d, BLOCK_P=triton.next_power_of_2(p), BLOCK_D=triton.next_power_of_2(d),
    )
    return out


__all__ = ["auto_partition_size", "paged_decode_attention", "merge_attention_partitions",
           "reference_paged_decode"]
