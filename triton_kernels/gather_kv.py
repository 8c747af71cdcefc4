"""Gather sequences from the paged cache into contiguous tensors (swap-out, reference paths)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check, check_caches, check_tensor
from .reference import reference_gather_kv  # noqa: F401


@triton.jit
def _gather_kv_kernel(
    key_cache_ptr, value_cache_ptr, bt_ptr, seq_lens_ptr, cu_ptr, key_out_ptr, value_out_ptr,
    stride_kcb, stride_kcs, stride_kch, stride_kcd,
    stride_vcb, stride_vcs, stride_vch, stride_vcd,
    stride_bts, stride_btb, stride_sl, stride_ot, stride_oh, stride_od,
    block_size, num_heads, head_dim,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program per (sequence, logical block). Tokens past seq_len are masked on the load
    # as well as the store: the cache may hold anything (NaN) there.
    seq = tl.program_id(0).to(tl.int64)
    lblk = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq * stride_sl)
    out_start = tl.load(cu_ptr + seq)
    pos = lblk * block_size + tl.arange(0, BLOCK_T)
    tmask = (tl.arange(0, BLOCK_T) < block_size) & (pos < seq_len)
    phys = tl.load(bt_ptr + seq * stride_bts + lblk * stride_btb, mask=lblk * block_size < seq_len, other=0)
    phys = phys.to(tl.int64)
    t = tl.arange(0, BLOCK_T)[:, None, None]
    h = tl.arange(0, BLOCK_H)[None, :, None]
    d = tl.arange(0, BLOCK_D)[None, None, :]
    mask = tmask[:, None, None] & (h < num_heads) & (d < head_dim)
    k = tl.load(key_cache_ptr + phys * stride_kcb + t * stride_kcs + h * stride_kch
                + d * stride_kcd, mask=mask)
    v = tl.load(value_cache_ptr + phys * stride_vcb + t * stride_vcs + h * stride_vch
                + d * stride_vcd, mask=mask)
    o = (out_start + pos.to(tl.int64))[:, None, None] * stride_ot + h * stride_oh + d * stride_od
    tl.store(key_out_ptr + o, k, mask=mask)
    tl.store(value_out_ptr + o, v, mask=mask)


def gather_kv(key_cache: torch.Tensor, value_cache: torch.Tensor, block_tables: torch.Tensor,
              seq_lens: torch.Tensor):
    """Copy each sequence's first ``seq_lens[i]`` tokens out of the paged cache.

    Returns ``(keys, values, cu_seq_lens)`` with keys/values ``[sum(seq_lens), kv_heads,
    head_dim]`` (sequence after sequence, contiguous, cache dtype) and int64 ``cu_seq_lens``
    ``[num_seqs + 1]``. Used to swap a sequence out of GPU memory and by reference paths.
    """
    device = check_caches(key_cache, value_cache)
    _, block_size, num_heads, head_dim = key_cache.shape
    block_tables = check_tensor("block_tables", block_tables, dtypes=(torch.int32,), ndim=2,
                                device=device)
    num_seqs, max_blocks = block_tables.shape
    seq_lens = check_tensor("seq_lens", seq_lens, dtypes=(torch.int32,), shape=(num_seqs,),
                            device=device)
    cu = torch.zeros(num_seqs + 1, dtype=torch.int64, device=key_cache.device)
    cu[1:] = torch.cumsum(seq_lens.to(torch.int64), 0)
    total = int(cu[-1])
    keys = key_cache.new_empty((total, num_heads, head_dim))
    values = value_cache.new_empty((total, num_heads, head_dim))
    if total == 0:
        return keys, values, cu
    # Only launch over logical blocks that some sequence actually uses.
    used_blocks = triton.cdiv(int(seq_lens.max()), block_size)
    check(used_blocks <= max_blocks, "seq_lens exceed the block table")
    _gather_kv_kernel[(num_seqs, used_blocks)](
        key_cache, value_cache, block_tables, seq_lens, cu, keys, values,
        *key_cache.stride(), *value_cache.stride(), *block_tables.stride(), seq_lens.stride(0),
        *keys.stride(),
        block_size, num_heads, head_dim,
        BLOCK_T=triton.next_power_of_2(block_size), BLOCK_H=triton.next_power_of_2(num_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
    return keys, values, cu
