"""Merge attention computed over disjoint key sets by their log-sum-exps.

Used for split-KV (flash-decoding) partitions and for cascade / shared-prefix attention,
where a shared prefix is attended once and merged with each sequence's own suffix. The
LSEs are natural-log, as ``paged_attention(return_lse=True)`` returns them (and as vLLM's
``merge_attn_states`` and FlashAttention take them); base 2 is accepted on request.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check, check_tensor
from .reference import reference_merge_attention_states  # noqa: F401

LOG2E = 1.4426950408889634


@triton.jit
def _merge_kernel(
    part_out_ptr, lse_ptr, out_ptr, lse_out_ptr,
    stride_ps, stride_ph, stride_pp, stride_pd,
    stride_ls, stride_lh, stride_lp,
    stride_os, stride_oh, stride_od,
    stride_mls, stride_mlh,
    num_parts, head_dim, to_log2,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, STORE_LSE: tl.constexpr,
):
    # out = sum_p 2^(l_p - max) * o_p / sum_p 2^(l_p - max), l_p = lse_p in base 2.
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    p_mask = offs_p < num_parts
    d_mask = offs_d < head_dim
    lse = tl.load(lse_ptr + seq * stride_ls + head * stride_lh + offs_p * stride_lp,
                  mask=p_mask, other=float("-inf")) * to_log2
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # all partitions empty: weights all 0
    w = tl.exp2(lse - m)
    # Mask the partitions' outputs too: an empty partition's slot may hold garbage or NaN.
    o = tl.load(part_out_ptr + seq * stride_ps + head * stride_ph + offs_p[:, None] * stride_pp
                + offs_d[None, :] * stride_pd,
                mask=p_mask[:, None] & d_mask[None, :] & (w[:, None] > 0), other=0.0)
    total = tl.sum(w, axis=0)
    res = tl.sum(o.to(tl.float32) * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * stride_os + head * stride_oh + offs_d * stride_od,
             res.to(out_ptr.dtype.element_ty), mask=d_mask)
    if STORE_LSE:
        merged = tl.where(total > 0, m + tl.log2(tl.where(total > 0, total, 1.0)), float("-inf"))
        tl.store(lse_out_ptr + seq * stride_mls + head * stride_mlh, merged / to_log2)


def _merge(part_out: torch.Tensor, lse: torch.Tensor, out: torch.Tensor,
           lse_out: torch.Tensor | None, to_log2: float) -> None:
    s, h, p, d = part_out.shape
    if s * h == 0:
        return
    lo = lse_out if lse_out is not None else lse
    _merge_kernel[(s, h)](
        part_out, lse, out, lo, *part_out.stride(), *lse.stride(), *out.stride(),
        lo.stride(0) if lse_out is not None else 0, lo.stride(1) if lse_out is not None else 0,
        p, d, to_log2,
        BLOCK_P=triton.next_power_of_2(p), BLOCK_D=triton.next_power_of_2(d),
        STORE_LSE=lse_out is not None,
    )


def merge_attention_partitions(
    part_out: torch.Tensor, lse: torch.Tensor, out: torch.Tensor | None = None, *,
    lse_base2: bool = False, return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Merge partial outputs ``[S, H, P, D]`` with their log-sum-exps ``[S, H, P]`` (fp32,
    natural log; base 2 with ``lse_base2``) into ``[S, H, D]`` (dtype of ``out``, default
    that of ``part_out``). A partition with ``lse = -inf`` gets no weight. With
    ``return_lse`` also returns the merged LSE ``[S, H]`` in the same base."""
    part_out = check_tensor("part_out", part_out,
                            dtypes=(torch.float32, torch.float16, torch.bfloat16), ndim=4)
    s, h, p, d = part_out.shape
    check(p >= 1, "part_out needs at least one partition")
    lse = check_tensor("lse", lse, dtypes=(torch.float32,), shape=(s, h, p),
                       device=part_out.device)
    if out is None:
        out = part_out.new_empty((s, h, d))
    out = check_tensor("out", out, shape=(s, h, d), device=part_out.device)
    lse_out = torch.empty((s, h), dtype=torch.float32, device=part_out.device) \
        if return_lse else None
    _merge(part_out, lse, out, lse_out, 1.0 if lse_base2 else LOG2E)
    return (out, lse_out) if lse_out is not None else out


def merge_attention_states(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor, *,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cascade merge: attention over keys A (``out_a`` ``[T, H, D]``, natural-log ``lse_a``
    ``[T, H]``) and over disjoint keys B, combined into attention over A and B, in the dtype
    of ``out_a``; with ``return_lse`` also its LSE (so merges can be chained)."""
    out_a = check_tensor("out_a", out_a, dtypes=(torch.float32, torch.float16, torch.bfloat16),
                         ndim=3)
    t, h, d = out_a.shape
    check_tensor("out_b", out_b, shape=(t, h, d), device=out_a.device)
    check_tensor("lse_a", lse_a, dtypes=(torch.float32,), shape=(t, h), device=out_a.device)
    check_tensor("lse_b", lse_b, dtypes=(torch.float32,), shape=(t, h), device=out_a.device)
    parts = torch.stack([out_a, out_b.to(out_a.dtype)], dim=2)  # [T, H, 2, D]
    lses = torch.stack([lse_a, lse_b], dim=2)
    return merge_attention_partitions(parts, lses, out_a.new_empty((t, h, d)),
                                      return_lse=return_lse)
