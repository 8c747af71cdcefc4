"""Paged attention for a mixed batch: prefill, chunked prefill and decode in one launch.

Modelled on vLLM's unified Triton attention. Each sequence brings ``q_len`` new query tokens
(1 for decode, many for a prefill chunk) packed back to back in ``query``; they are the last
``q_len`` of its ``seq_len`` cached tokens and attend causally. One program handles one tile
of ``BLOCK_Q`` query tokens of one sequence, for one KV head (and one KV partition in
split-KV mode): the ``BLOCK_Q x group`` (token, query head) pairs that share the KV head
form the M dimension of ``tl.dot`` (>= 16 rows), so each K/V tile is loaded once for all of
them. KV is tiled by ``TILE_N`` tokens independently of the block size.

Programs are numbered over all sequences' query tiles without a host sync: program ``i``
finds its sequence by a binary search over ``query_start_loc // BLOCK_Q + seq`` (an upper
bound of ``num_tokens // BLOCK_Q + num_seqs`` programs; the spare ones return at once).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import (
    FLOAT_DTYPES,
    FP8_DTYPE,
    check,
    check_caches,
    check_kv_scales,
    check_metadata_values,
    check_tensor,
    scale_stride,
)
from .merge_attention import LOG2E, _merge
from .reference import reference_paged_attention  # noqa: F401  (the spec, beside the kernel)

# A jitted function may read only constexpr globals (a GPU compile refuses plain floats).
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _find_seq(q_start_ptr, stride_qsl, prog, num_seqs, BLOCK_Q: tl.constexpr):
    # Largest seq with q_start[seq] // BLOCK_Q + seq <= prog (that sum is where its tiles begin).
    # Both bounds start as int32 tensors: an int literal (or num_seqs, which Triton makes a
    # constexpr when it is 1) would change type inside the loop, which a GPU compile refuses.
    lo = prog * 0
    hi = lo + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first = tl.load(q_start_ptr + mid * stride_qsl) // BLOCK_Q + mid
        if first <= prog:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, bt_ptr, seq_lens_ptr, q_start_ptr, alibi_ptr,
    k_scale_ptr, v_scale_ptr, out_ptr, lse_ptr,
    scale, softcap, window,
    stride_qt, stride_qh, stride_qd,
    stride_kcb, stride_kcs, stride_kch, stride_kcd,
    stride_vcb, stride_vcs, stride_vch, stride_vcd,
    stride_bts, stride_btb, stride_sl, stride_qsl, stride_al, stride_ksh, stride_vsh,
    stride_ot, stride_oh, stride_op, stride_od,
    stride_lt, stride_lh, stride_lp,
    num_seqs, group, head_dim, partition_size,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr, TILE_N: tl.constexpr,
    USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr, USE_ALIBI: tl.constexpr,
    FP8: tl.constexpr, STORE_LSE: tl.constexpr, DOT_PREC: tl.constexpr, CAUSAL: tl.constexpr,
):
    prog = tl.program_id(0)
    kvh = tl.program_id(1).to(tl.int64)
    part = tl.program_id(2)
    seq = _find_seq(q_start_ptr, stride_qsl, prog, num_seqs, BLOCK_Q)
    q_start = tl.load(q_start_ptr + seq * stride_qsl)
    q_len = tl.load(q_start_ptr + (seq + 1) * stride_qsl) - q_start
    q_tile = prog - (q_start // BLOCK_Q + seq)
    if q_tile * BLOCK_Q >= q_len:
        return  # a spare program of the upper-bound grid
    seq64 = seq.to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + seq64 * stride_sl)
    ctx_len = seq_len - q_len  # cached tokens before the new ones

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, TILE_N)
    tok = q_tile * BLOCK_Q + offs_m // group  # new-token index within the sequence
    m_mask = (offs_m < BLOCK_Q * group) & (tok < q_len)
    d_mask = offs_d < head_dim
    q_heads = kvh * group + offs_m % group
    q_rows = (q_start + tok).to(tl.int64)
    q_pos = ctx_len + tok  # each row's position in the sequence
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + q_heads[:, None] * stride_qh
                + offs_d[None, :] * stride_qd, mask=m_mask[:, None] & d_mask[None, :], other=0.0)

    # Keys this tile can see: up to its last token (causal), from its first token's window.
    first_pos = ctx_len + q_tile * BLOCK_Q
    if CAUSAL:
        kv_end = tl.minimum(seq_len, ctx_len + tl.minimum(q_len, q_tile * BLOCK_Q + BLOCK_Q))
    else:  # every new token sees every cached one (a shared prefix's pass in a cascade)
        kv_end = seq_len
    kv_start = part * 0
    if USE_WINDOW:
        kv_start = tl.maximum(first_pos - window + 1, 0)
    kv_start = tl.maximum(kv_start, part * partition_size)
    kv_end = tl.minimum(kv_end, part * partition_size + partition_size)

    if USE_ALIBI:
        slope = tl.load(alibi_ptr + q_heads * stride_al, mask=m_mask, other=0.0).to(tl.float32)
    qk_scale = scale
    v_scale = 1.0
    if FP8:
        # One KV head per program, so a per-head scale is a scalar here: scale the scores
        # and the output instead of every K and V element.
        qk_scale = qk_scale * tl.load(k_scale_ptr + kvh * stride_ksh)
        v_scale = tl.load(v_scale_ptr + kvh * stride_vsh)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = k_cache_ptr + kvh * stride_kch
    v_base = v_cache_ptr + kvh * stride_vch
    bt_row = bt_ptr + seq64 * stride_bts
    for tile_start in range(kv_start, kv_end, TILE_N):
        pos = tile_start + offs_n
        n_mask = pos < kv_end
        # Mask the LOADS past seq_len (not just the scores): unused slots may hold NaN.
        phys = tl.load(bt_row + (pos // BLOCK_SIZE) * stride_btb, mask=n_mask, other=0)
        phys = phys.to(tl.int64)
        slot = pos % BLOCK_SIZE
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + phys[:, None] * stride_kcb + slot[:, None] * stride_kcs
                    + offs_d[None, :] * stride_kcd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + phys[:, None] * stride_vcb + slot[:, None] * stride_vcs
                    + offs_d[None, :] * stride_vcd, mask=kv_mask, other=0.0)
        # An e4m3 value is exact in fp16 and fp32, so this cast loses nothing.
        k = k.to(q.dtype)
        v = v.to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # [BLOCK_M, TILE_N]
        if USE_SOFTCAP:
            # c * tanh(s / c), with tanh(y) = 1 - 2 / (e^2y + 1): no inf / inf at large |y|.
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
        if USE_ALIBI:
            s += slope[:, None] * (pos[None, :] - q_pos[:, None]).to(tl.float32)
        allowed = n_mask[None, :] & m_mask[:, None]
        if CAUSAL:
            allowed = allowed & (pos[None, :] <= q_pos[:, None])
        if USE_WINDOW:
            allowed = allowed & (pos[None, :] > q_pos[:, None] - window)
        s = tl.where(allowed, s * _LOG2E, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row with nothing allowed yet keeps m = -inf; shift by 0 then, not by -inf
        # (-inf - -inf = NaN). Its p and alpha are exp2(-inf) = 0.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    # No allowed key (an empty partition, seq_len 0): output 0 and lse = -inf, so a merge
    # gives the partition no weight.
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc * (v_scale / l_safe)[:, None]
    o_mask = m_mask[:, None] & d_mask[None, :]
    tl.store(out_ptr + q_rows[:, None] * stride_ot + q_heads[:, None] * stride_oh
             + part * stride_op + offs_d[None, :] * stride_od,
             o.to(out_ptr.dtype.element_ty), mask=o_mask)
    if STORE_LSE:
        lse = tl.where(l_i > 0, (m_i + tl.log2(l_safe)) * _LN2, float("-inf"))  # natural log
        tl.store(lse_ptr + q_rows * stride_lt + q_heads * stride_lh + part * stride_lp, lse,
                 mask=m_mask)


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float | None = None,
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    return_lse: bool = False,
    max_seq_len: int | None = None,
    partition_size: int = 0,
    block_q: int | None = None,
    tile_n: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    out: torch.Tensor | None = None,
    validate: bool = False,
    causal: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of a mixed batch's new tokens over their paged K/V.

    Args:
        query: ``[num_tokens, q_heads, head_dim]``, the sequences' new tokens back to back;
            query head ``h`` uses KV head ``h // (q_heads // kv_heads)``.
        key_cache, value_cache: ``[num_blocks, block_size, kv_heads, head_dim]``; the new
            tokens' K/V must already be written (``reshape_and_cache``). fp16, fp32, bf16 or
            ``torch.float8_e4m3fn`` (then ``k_scale``/``v_scale`` are required: fp32, one per
            tensor or ``[kv_heads]``; the cache holds ``x / scale``).
        block_tables: int32 ``[num_seqs, max_blocks]``.
        seq_lens: int32 ``[num_seqs]``, every token of the sequence, new ones included.
        query_start_loc: int32 ``[num_seqs + 1]``, cumulative new-token counts starting at 0
            (``q_len`` of sequence ``i`` is the difference of entries ``i + 1`` and ``i``,
            at most ``seq_lens[i]``). A decode-only batch is ``arange(num_seqs + 1)``.
        scale: softmax scale, default ``head_dim ** -0.5``.
        sliding_window: a token sees only the last ``sliding_window`` positions (itself
            included); ``None`` or 0: unlimited.
        softcap: scores ``s`` become ``softcap * tanh(s / softcap)`` (Gemma 2); ``None``/0: off.
        alibi_slopes: fp32 ``[q_heads]``: adds ``slope * (key_pos - query_pos)`` after the cap.
        causal: ``False`` lets every new token see all ``seq_lens[i]`` cached tokens (no
            window or ALiBi then): the shared-prefix pass of cascade attention, whose queries
            come after the prefix; ``query_start_loc`` may then give more new tokens than
            ``seq_lens``.
        return_lse: also return the natural-log log-sum-exp of each row's scores, fp32
            ``[num_tokens, q_heads]`` (``-inf`` where no key is visible), for
            ``merge_attention_states``.
        max_seq_len: an upper bound on ``seq_lens``; needed only for split-KV (avoids a sync).
        partition_size: ``0`` single pass; ``> 0`` splits each sequence's keys into
            partitions of that many tokens (rounded up to the tile), merged by LSE.
        block_q: query tokens per program (default: as many as fill 16 rows with the group).
        tile_n: KV tokens per inner iteration, a power of two >= 16.

    Metadata (block tables, seq_lens, query_start_loc) may be non-contiguous views. Its
    values are trusted (checking them needs a device sync); ``validate=True`` checks them
    first (``seq_lens`` within the table, used blocks inside the cache, ``query_start_loc``
    from 0 to ``num_tokens``, no ``q_len`` above its ``seq_len``) and raises ``ValueError``.
    Returns ``[num_tokens, q_heads, head_dim]`` in the query dtype (or ``out``), and the LSE
    with ``return_lse``.
    """
    device = check_caches(key_cache, value_cache)
    num_blocks, block_size, kv_heads, head_dim = key_cache.shape
    query = check_tensor("query", query, dtypes=FLOAT_DTYPES, shape=(None, None, head_dim),
                         device=device)
    num_tokens, q_heads, _ = query.shape
    check(q_heads % kv_heads == 0 and q_heads > 0,
          f"q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})")
    fp8 = key_cache.dtype == FP8_DTYPE
    check(fp8 or key_cache.dtype == query.dtype,
          f"query dtype {query.dtype} differs from cache dtype {key_cache.dtype} "
          "(only an fp8 cache may differ)")
    block_tables = check_tensor("block_tables", block_tables, dtypes=(torch.int32,), ndim=2,
                                device=device)
    num_seqs = block_tables.shape[0]
    seq_lens = check_tensor("seq_lens", seq_lens, dtypes=(torch.int32,), shape=(num_seqs,),
                            device=device)
    query_start_loc = check_tensor("query_start_loc", query_start_loc, dtypes=(torch.int32,),
                                   shape=(num_seqs + 1,), device=device)
    k_scale, v_scale = check_kv_scales(fp8, k_scale, v_scale, kv_heads, device)
    if alibi_slopes is not None:
        alibi_slopes = check_tensor("alibi_slopes", alibi_slopes, dtypes=(torch.float32,),
                                    shape=(q_heads,), device=device)
    check(sliding_window is None or sliding_window >= 0, "sliding_window must be >= 0")
    check(causal or (not sliding_window and alibi_slopes is None),
          "causal=False takes no sliding_window or alibi_slopes (no query positions)")
    check(softcap is None or softcap >= 0, "softcap must be >= 0")
    check(partition_size >= 0, "partition_size must be >= 0")
    if validate:
        check_metadata_values(block_tables, seq_lens, num_blocks, block_size, query_start_loc,
                              num_tokens, causal)
    if out is None:
        out = torch.empty_like(query)
    out = check_tensor("out", out, dtypes=(query.dtype,), shape=query.shape, device=device)
    lse = torch.full((num_tokens, q_heads), float("-inf"), dtype=torch.float32, device=device) \
        if return_lse else None
    if num_tokens == 0 or num_seqs == 0:
        return (out, lse) if lse is not None else out

    group = q_heads // kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    on_gpu = device.type == "cuda"
    tile_n = tile_n or (32 if on_gpu else 16)
    check(tile_n >= 16 and tile_n & (tile_n - 1) == 0, "tile_n must be a power of two >= 16")
    if block_q is None:
        block_q = max(1, 16 // group)
    block_m = max(16, triton.next_power_of_2(block_q * group))  # tl.dot needs M >= 16
    block_d = max(16, triton.next_power_of_2(head_dim))
    dot_prec = "ieee" if query.dtype == torch.float32 else "tf32"
    if partition_size > 0:
        if max_seq_len is None:
            max_seq_len = int(seq_lens.max())
        partition_size = triton.cdiv(partition_size, tile_n) * tile_n
        num_parts = triton.cdiv(max(max_seq_len, 1), partition_size)
    else:
        num_parts = 1
        partition_size = 2 ** 31 - 1 - tile_n  # one partition covering any sequence
    grid = (num_tokens // block_q + num_seqs, kv_heads, num_parts)
    ks = k_scale if k_scale is not None else seq_lens  # an unused pointer when not fp8
    vs = v_scale if v_scale is not None else seq_lens
    al = alibi_slopes if alibi_slopes is not None else seq_lens
    consts = dict(
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_Q=block_q, BLOCK_D=block_d,
        TILE_N=tile_n, USE_WINDOW=bool(sliding_window), USE_SOFTCAP=bool(softcap),
        USE_ALIBI=alibi_slopes is not None, FP8=fp8, DOT_PREC=dot_prec, CAUSAL=causal,
        num_warps=num_warps, num_stages=num_stages,
    )
    args = (
        query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, al, ks, vs,
    )
    scalars = (
        float(scale), float(softcap or 1.0), int(sliding_window or 0),
        *query.stride(), *key_cache.stride(), *value_cache.stride(),
        *block_tables.stride(), seq_lens.stride(0), query_start_loc.stride(0),
        alibi_slopes.stride(0) if alibi_slopes is not None else 0,
        scale_stride(k_scale) if k_scale is not None else 0,
        scale_stride(v_scale) if v_scale is not None else 0,
    )
    if num_parts == 1:
        lse_arg = lse if lse is not None else out
        _paged_attention_kernel[grid](
            *args, out, lse_arg, *scalars,
            out.stride(0), out.stride(1), 0, out.stride(2),
            lse_arg.stride(0) if lse is not None else 0,
            lse_arg.stride(1) if lse is not None else 0, 0,
            num_seqs, group, head_dim, partition_size,
            STORE_LSE=lse is not None, **consts,
        )
        return (out, lse) if lse is not None else out
    # Split-KV: every partition writes fp32 partial outputs and its LSE; a row a partition
    # does not reach (before a window, after its causal end) is written as lse = -inf, 0.
    part_out = torch.empty((num_tokens, q_heads, num_parts, head_dim), dtype=torch.float32,
                           device=device)
    part_lse = torch.empty((num_tokens, q_heads, num_parts), dtype=torch.float32,
                           device=device)
    _paged_attention_kernel[grid](
        *args, part_out, part_lse, *scalars, *part_out.stride(), *part_lse.stride(),
        num_seqs, group, head_dim, partition_size,
        STORE_LSE=True, **consts,
    )
    _merge(part_out, part_lse, out, lse, LOG2E)
    return (out, lse) if lse is not None else out


__all__ = ["paged_attention", "reference_paged_attention"]
