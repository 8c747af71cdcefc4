"""Input checks shared by the kernel entry points.

A kernel trusts every pointer and stride it is given: a wrong dtype, shape or device turns
into silently wrong numbers or a crash far from the call. Each entry point therefore checks
its arguments here and raises one ``ValueError`` naming the argument and what was expected.
(Real exceptions, not ``assert``: ``python -O`` strips asserts.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# e4m3 with the "fn" encoding (no infinities, max 448): the fp8 KV-cache format vLLM uses.
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0


def check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def check_tensor(name: str, t: object, *, dtypes: Sequence[torch.dtype] | None = None,
                 ndim: int | None = None, shape: Sequence[int | None] | None = None,
                 device: torch.device | None = None) -> torch.Tensor:
    """Check one argument; ``None`` in ``shape`` means any size in that dimension."""
    check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    assert isinstance(t, torch.Tensor)  # for type checkers; check() above raised otherwise
    if dtypes is not None:
        check(t.dtype in dtypes,
              f"{name} must have dtype {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None:
        check(t.dim() == ndim, f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        ok = all(want is None or got == want for got, want in zip(t.shape, shape))
        want_s = "[" + ", ".join("*" if w is None else str(w) for w in shape) + "]"
        check(ok, f"{name} must have shape {want_s}, got {list(t.shape)}")
    if device is not None:
        check(t.device == device, f"{name} is on {t.device}, the query/cache on {device}")
    return t


def check_caches(key_cache: object, value_cache: object,
                 dtypes: Sequence[torch.dtype] = (*FLOAT_DTYPES, FP8_DTYPE)) -> torch.device:
    """K and V caches ``[num_blocks, block_size, kv_heads, head_dim]``, same shape/dtype/device."""
    kc = check_tensor("key_cache", key_cache, dtypes=dtypes, ndim=4)
    vc = check_tensor("value_cache", value_cache, dtypes=(kc.dtype,), shape=kc.shape,
                      device=kc.device)
    check(vc.dtype == kc.dtype, "key_cache and value_cache dtypes differ")
    return kc.device


def check_kv_scale(name: str, scale: object, kv_heads: int, device: torch.device) -> torch.Tensor:
    """An fp8 dequantization scale: fp32, one per tensor (``[]``/``[1]``) or per KV head."""
    s = check_tensor(name, scale, dtypes=(torch.float32,), device=device)
    check(s.numel() in (1, kv_heads) and s.dim() <= 1,
          f"{name} must be a scalar, [1] or [kv_heads={kv_heads}] tensor, got {list(s.shape)}")
    return s


def check_kv_scales(fp8: bool, k_scale: object, v_scale: object, kv_heads: int,
                    device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The scales of a cache: both (checked, see check_kv_scale) for an fp8 cache on a device
    that can convert it, neither for any other cache."""
    if not fp8:
        check(k_scale is None and v_scale is None, "k_scale/v_scale apply to an fp8 cache only")
        return None, None
    check(k_scale is not None and v_scale is not None, "an fp8 cache needs k_scale and v_scale")
    check_fp8_device(device)
    return (check_kv_scale("k_scale", k_scale, kv_heads, device),
            check_kv_scale("v_scale", v_scale, kv_heads, device))


def scale_stride(scale: torch.Tensor) -> int:
    """Stride between KV heads in a scale tensor: 0 broadcasts a per-tensor scale."""
    return 0 if scale.numel() == 1 else scale.stride(0)


def check_metadata_values(block_tables: torch.Tensor, seq_lens: torch.Tensor, num_blocks: int,
                          block_size: int, query_start_loc: torch.Tensor | None = None,
                          num_tokens: int | None = None, causal: bool = True) -> None:
    """The values the kernels trust, checked on the host (a device sync, so only on request):
    ``seq_lens`` within the block table, the blocks a sequence uses inside the cache, and
    ``query_start_loc`` starting at 0, never decreasing, ending at ``num_tokens``, with no
    sequence having more new tokens than tokens."""
    sl = seq_lens.to("cpu", torch.int64)
    check(bool((sl >= 0).all()), "seq_lens has a negative length")
    width = block_tables.shape[1]
    most = int(sl.max()) if sl.numel() else 0
    check(most <= width * block_size,
          f"a seq_len of {most} needs more than the block table's {width} blocks of {block_size}")
    bt = block_tables.to("cpu", torch.int64)
    used = torch.arange(width)[None, :] * block_size < sl[:, None]
    bad = used & ((bt < 0) | (bt >= num_blocks))
    if bool(bad.any()):
        seq, col = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"block_tables[{seq}, {col}] = {int(bt[seq, col])} is not a block of "
                         f"the cache (0..{num_blocks - 1})")
    if query_start_loc is None:
        return
    qsl = query_start_loc.to("cpu", torch.int64)
    q_lens = qsl[1:] - qsl[:-1]
    check(int(qsl[0]) == 0 and bool((q_lens >= 0).all()),
          "query_start_loc must start at 0 and never decrease")
    check(int(qsl[-1]) == num_tokens,
          f"query_start_loc ends at {int(qsl[-1])}, the query has {num_tokens} tokens")
    over = (q_lens > sl).nonzero()
    if causal and over.numel():
        i = int(over[0])
        raise ValueError(f"sequence {i} has {int(q_lens[i])} new tokens but seq_len {int(sl[i])}")


def check_fp8_device(device: torch.device) -> None:
    """Triton converts e4m3 on NVIDIA GPUs of compute capability 8.9 or later only."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        check((major, minor) >= (8, 9),
              f"an fp8 (e4m3) cache needs a GPU of compute capability >= 8.9 (Ada, Hopper); "
              f"{device} is {major}.{minor}")
