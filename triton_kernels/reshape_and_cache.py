"""Write new tokens' K and V into the paged cache through a slot mapping (one launch)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import reference_reshape_and_cache  # noqa: F401  (the spec, beside the kernel)


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_kcb, stride_kcs, stride_kch, stride_kcd,
    stride_vcb, stride_vcs, stride_vch, stride_vcd,
    block_size, num_heads, head_dim,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok)
    # A negative slot is a padding token: write nothing. It is folded into the mask rather
    # than an early return; the scalar test is broadcast to the tile by hand because the
    # interpreter rejects a mask built from a scalar bool.
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < num_heads) & (d < head_dim) & ((slot + h * 0 + d * 0) >= 0)
    slot = tl.maximum(slot, 0)
    blk = slot // block_size
    off = slot % block_size
    k = tl.load(key_ptr + tok * stride_kt + h * stride_kh + d * stride_kd, mask=mask)
    v = tl.load(value_ptr + tok * stride_vt + h * stride_vh + d * stride_vd, mask=mask)
    kc = key_cache_ptr + blk * stride_kcb + off * stride_kcs + h * stride_kch + d * stride_kcd
    vc = value_cache_ptr + blk * stride_vcb + off * stride_vcs + h * stride_vch + d * stride_vcd
    tl.store(kc, k.to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(value_cache_ptr.dtype.element_ty), mask=mask)


def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Scatter ``key``/``value`` ``[num_tokens, kv_heads, head_dim]`` into the caches in place.

    ``slot_mapping`` (int64 ``[num_tokens]``) gives each token's slot
    ``block * block_size + offset`` in ``key_cache``/``value_cache``
    ``[num_blocks, block_size, kv_heads, head_dim]``; a negative slot marks a padding token,
    which is skipped. Values are cast to the cache dtype. Strides may be arbitrary.
    """
    num_tokens, num_heads, head_dim = key.shape
    assert value.shape == key.shape
    assert key_cache.shape[2:] == (num_heads, head_dim) and value_cache.shape == key_cache.shape
    assert slot_mapping.dtype == torch.int64 and slot_mapping.shape == (num_tokens,)
    if num_tokens == 0:
        return
    _reshape_and_cache_kernel[(num_tokens,)](
        key, value, key_cache, value_cache, slot_mapping,
        *key.stride(), *value.stride(), *key_cache.stride(), *value_cache.stride(),
        key_cache.shape[1], num_heads, head_dim,
        BLOCK_H=triton.next_power_of_2(num_heads), BLOCK_D=triton.next_power_of_2(head_dim),
    )
