"""Write new tokens' K and V into the paged cache through a slot mapping (one launch)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import FLOAT_DTYPES, FP8_DTYPE, check_caches, check_kv_scales, check_tensor, scale_stride
from .fp8 import round_to_e4m3
from .reference import reference_reshape_and_cache  # noqa: F401  (the spec, beside the kernel)


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_ptr, k_scale_ptr, v_scale_ptr,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_kcb, stride_kcs, stride_kch, stride_kcd,
    stride_vcb, stride_vcs, stride_vch, stride_vcd,
    stride_slot, stride_ksh, stride_vsh,
    block_size, num_heads, head_dim,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, FP8: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok * stride_slot)
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
    if FP8:
        # Quantize: cache = round(x / scale); the attention multiplies the scale back in.
        ks = tl.load(k_scale_ptr + h * stride_ksh, mask=h < num_heads, other=1.0)
        vs = tl.load(v_scale_ptr + h * stride_vsh, mask=h < num_heads, other=1.0)
        k = round_to_e4m3(k.to(tl.float32) / ks)
        v = round_to_e4m3(v.to(tl.float32) / vs)
    kc = key_cache_ptr + blk * stride_kcb + off * stride_kcs + h * stride_kch + d * stride_kcd
    vc = value_cache_ptr + blk * stride_vcb + off * stride_vcs + h * stride_vch + d * stride_vcd
    tl.store(kc, k.to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(value_cache_ptr.dtype.element_ty), mask=mask)


def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, slot_mapping: torch.Tensor,
                      k_scale: torch.Tensor | None = None,
                      v_scale: torch.Tensor | None = None) -> None:
    """Scatter ``key``/``value`` ``[num_tokens, kv_heads, head_dim]`` into the caches in place.

    ``slot_mapping`` (int64 ``[num_tokens]``) gives each token's slot
    ``block * block_size + offset`` in ``key_cache``/``value_cache``
    ``[num_blocks, block_size, kv_heads, head_dim]``; a negative slot marks a padding token,
    which is skipped. Values are cast to the cache dtype. Strides may be arbitrary.

    fp8 cache (``torch.float8_e4m3fn``): ``k_scale``/``v_scale`` (fp32, one per tensor or
    ``[kv_heads]``) are required; the cache holds ``x / scale`` rounded to nearest even and
    saturated at +-448.
    """
    kc_device = check_caches(key_cache, value_cache)
    kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    key = check_tensor("key", key, dtypes=FLOAT_DTYPES, shape=(None, kv_heads, head_dim),
                       device=kc_device)
    num_tokens = key.shape[0]
    value = check_tensor("value", value, dtypes=FLOAT_DTYPES, shape=key.shape, device=kc_device)
    slot_mapping = check_tensor("slot_mapping", slot_mapping, dtypes=(torch.int64,),
                                shape=(num_tokens,), device=kc_device)
    fp8 = key_cache.dtype == FP8_DTYPE
    k_scale, v_scale = check_kv_scales(fp8, k_scale, v_scale, kv_heads, kc_device)
    if num_tokens == 0:
        return
    ks = k_scale if k_scale is not None else slot_mapping  # unused pointer when not fp8
    vs = v_scale if v_scale is not None else slot_mapping
    _reshape_and_cache_kernel[(num_tokens,)](
        key, value, key_cache, value_cache, slot_mapping, ks, vs,
        *key.stride(), *value.stride(), *key_cache.stride(), *value_cache.stride(),
        slot_mapping.stride(0),
        scale_stride(k_scale) if k_scale is not None else 0,
        scale_stride(v_scale) if v_scale is not None else 0,
        key_cache.shape[1], kv_heads, head_dim,
        BLOCK_H=triton.next_power_of_2(kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
        FP8=fp8,
    )
