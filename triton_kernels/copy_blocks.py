"""copy_blocks: copy-on-write and prefix-sharing block copies, all layers in one launch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ._checks import check, check_tensor
from .reference import reference_copy_blocks  # noqa: F401


@triton.jit
def _copy_blocks_kernel(
    cache_ptrs_ptr, mapping_ptr, dtype_ref_ptr, stride_block, numel_per_block,
    BLOCK: tl.constexpr,
):
    # One program per (cache tensor, pair, chunk). Every layer's K and V cache is a separate
    # allocation; their base addresses arrive as int64 and are cast back to typed pointers,
    # so one launch covers all layers without stacking (copying) the caches first.
    cache = tl.program_id(0)
    pair = tl.program_id(1)
    chunk = tl.program_id(2).to(tl.int64)
    base = tl.load(cache_ptrs_ptr + cache).to(tl.pointer_type(dtype_ref_ptr.dtype.element_ty))
    src = tl.load(mapping_ptr + 2 * pair)
    dst = tl.load(mapping_ptr + 2 * pair + 1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel_per_block
    x = tl.load(base + src * stride_block + offs, mask=mask)
    tl.store(base + dst * stride_block + offs, x, mask=mask)


def copy_blocks(key_caches: Sequence[torch.Tensor], value_caches: Sequence[torch.Tensor],
                block_mapping: torch.Tensor) -> None:
    """Copy whole blocks ``src -> dst`` in every layer's K and V cache, in one launch.

    ``key_caches``/``value_caches``: one tensor per layer, all the same shape, dtype, device
    and strides ``[num_blocks, block_size, kv_heads, head_dim]``, each block contiguous.
    ``block_mapping``: int64 ``[num_pairs, 2]`` rows ``(src, dst)`` as produced by the block
    manager's copy-on-write. Destinations must be distinct and not also be sources in the same
    call (the manager guarantees this: a fresh block is never a source).
    """
    caches = list(key_caches) + list(value_caches)
    check(len(key_caches) == len(value_caches), "one key cache and one value cache per layer")
    if not caches or block_mapping.numel() == 0:
        return
    ref = check_tensor("key_caches[0]", caches[0], ndim=4)
    for i, c in enumerate(caches):
        name = f"caches[{i}]"
        check_tensor(name, c, dtypes=(ref.dtype,), shape=ref.shape, device=ref.device)
        check(c.stride() == ref.stride(), f"{name} has strides {c.stride()}, "
              f"the first cache {ref.stride()}")
    numel = ref[0].numel()
    # Blocks must be contiguous runs of memory, so a copy is one flat range per block.
    check(ref[0].is_contiguous(), "each cache block must be contiguous")
    check_tensor("block_mapping", block_mapping, dtypes=(torch.int32, torch.int64),
                 shape=(None, 2))
    # A strided or int32 mapping is copied into the layout the kernel indexes (tiny).
    mapping = block_mapping.to(device=ref.device, dtype=torch.int64).contiguous()
    ptrs = torch.tensor([c.data_ptr() for c in caches], dtype=torch.int64, device=ref.device)
    block = min(4096, triton.next_power_of_2(numel))
    grid = (len(caches), mapping.shape[0], triton.cdiv(numel, block))
    _copy_blocks_kernel[grid](ptrs, mapping, ref, ref.stride(0), numel, BLOCK=block)
