"""Plain PyTorch references for the paged-KV kernels (no triton needed).

They define what each kernel must compute, back the tests, and are the fallback path when
triton is not installed. Layout everywhere: K and V caches ``[num_blocks, block_size,
kv_heads, head_dim]`` (token-major, "NHD"), int32 block tables ``[num_seqs, max_blocks]``,
int32 ``seq_lens``, int64 slot mappings (``slot = block * block_size + offset``; negative =
padding token, skipped).
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # largest finite torch.float8_e4m3fn


def _head_scale(scale, kv_heads):
    """An fp8 scale (per tensor or per KV head) as fp32 ``[kv_heads, 1]`` for broadcasting."""
    return scale.float().reshape(-1).expand(kv_heads).reshape(kv_heads, 1)


def reference_quantize_fp8(x, scale):
    """``x`` ``[..., kv_heads, head_dim]`` -> e4m3fn ``round(x / scale)``, saturated at 448."""
    q = x.float() / _head_scale(scale, x.shape[-2])
    return q.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def reference_dequantize_fp8(cache, scale):
    """An fp8 cache ``[..., kv_heads, head_dim]`` back to fp32 values."""
    return cache.float() * _head_scale(scale, cache.shape[-2])


def reference_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping,
                                k_scale=None, v_scale=None) -> None:
    """Write ``key``/``value`` ``[num_tokens, kv_heads, head_dim]`` into the caches in place.

    An fp8 cache stores ``x / scale`` (``k_scale``/``v_scale``: per tensor or per KV head).
    """
    block_size = key_cache.shape[1]
    slots = slot_mapping.to(torch.int64)
    keep = slots >= 0
    slots = slots[keep]
    blocks, offsets = slots // block_size, slots % block_size
    if key_cache.dtype == torch.float8_e4m3fn:
        key_cache[blocks, offsets] = reference_quantize_fp8(key[keep], k_scale)
        value_cache[blocks, offsets] = reference_quantize_fp8(value[keep], v_scale)
        return
    key_cache[blocks, offsets] = key[keep].to(key_cache.dtype)
    value_cache[blocks, offsets] = value[keep].to(value_cache.dtype)


def reference_gather_kv(key_cache, value_cache, block_tables, seq_lens):
    """Gather each sequence's first ``seq_lens[i]`` tokens into contiguous tensors.

    Returns ``(keys, values, cu_seq_lens)``: keys/values ``[sum(seq_lens), kv_heads,
    head_dim]`` in sequence order, and int64 ``cu_seq_lens`` ``[num_seqs + 1]``.
    """
    block_size = key_cache.shape[1]
    ks, vs = [], []
    for i, n in enumerate(seq_lens.tolist()):
        pos = torch.arange(n, device=key_cache.device)
        blocks = block_tables[i].to(torch.int64)[pos // block_size]
        ks.append(key_cache[blocks, pos % block_size])
        vs.append(value_cache[blocks, pos % block_size])
    cu = torch.zeros(len(ks) + 1, dtype=torch.int64, device=key_cache.device)
    cu[1:] = torch.cumsum(seq_lens.to(torch.int64), 0)
    h, d = key_cache.shape[2], key_cache.shape[3]
    empty = key_cache.new_empty((0, h, d))
    return (torch.cat(ks) if ks else empty), (torch.cat(vs) if vs else empty), cu


def reference_copy_blocks(key_caches, value_caches, block_mapping) -> None:
    """For every layer, copy block ``src`` to block ``dst`` for each row of ``block_mapping``."""
    pairs = block_mapping.to(torch.int64).tolist()
    for cache in list(key_caches) + list(value_caches):
        for src, dst in pairs:
            cache[dst].copy_(cache[src])


def reference_paged_decode(query, key_cache, value_cache, block_tables, seq_lens, scale=None):
    """Decode attention (one query token per sequence) over the paged cache, in fp32.

    ``query`` ``[num_seqs, q_heads, head_dim]``; query head ``h`` reads KV head
    ``h // (q_heads // kv_heads)``. Returns ``[num_seqs, q_heads, head_dim]`` in the query's
    dtype. Only the first ``seq_lens[i]`` cache positions are read, so NaN in unused slots
    does not leak.
    """
    num_seqs, q_heads, head_dim = query.shape
    kv_heads = key_cache.shape[2]
    group = q_heads // kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    keys, values, cu = reference_gather_kv(key_cache, value_cache, block_tables, seq_lens)
    out = torch.zeros(num_seqs, q_heads, head_dim, dtype=torch.float32, device=query.device)
    for i in range(num_seqs):
        lo, hi = int(cu[i]), int(cu[i + 1])
        if hi == lo:
            continue
        k = keys[lo:hi].float().repeat_interleave(group, dim=1)  # [n, q_heads, d]
        v = values[lo:hi].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", query[i].float(), k) * scale
        out[i] = torch.einsum("hn,nhd->hd", torch.softmax(scores, dim=-1), v)
    return out.to(query.dtype)


def reference_paged_attention(query, key_cache, value_cache, block_tables, seq_lens,
                              query_start_loc, scale=None, *, sliding_window=None, softcap=None,
                              alibi_slopes=None, k_scale=None, v_scale=None, return_lse=False,
                              causal=True):
    """Attention for a mixed batch of prefill, chunked-prefill and decode sequences, in fp32.

    ``query`` ``[num_tokens, q_heads, head_dim]`` packs each sequence's new tokens:
    sequence ``i`` owns rows ``query_start_loc[i]:query_start_loc[i + 1]``. ``seq_lens[i]``
    counts all its tokens, the new ones included (they are already in the cache), so new
    token ``j`` of ``q_len`` sits at position ``seq_lens[i] - q_len + j`` and attends to the
    positions ``p <= `` its own (causal); with ``sliding_window`` ``w`` only to
    ``p > pos - w`` (the last ``w`` positions, itself included). ``softcap`` ``c`` maps a
    score ``s`` (already scaled) to ``c * tanh(s / c)``; ALiBi then adds
    ``slopes[h] * (p - pos)``. An fp8 cache is dequantized with ``k_scale``/``v_scale``.
    ``causal=False``: every new token sees all ``seq_lens[i]`` positions (no window, no ALiBi).

    Returns the output in the query's dtype and, with ``return_lse``, the natural-log
    log-sum-exp of the scores per (token, head), fp32 ``[num_tokens, q_heads]`` (``-inf``
    for a token that sees no position).
    """
    num_tokens, q_heads, head_dim = query.shape
    kv_heads = key_cache.shape[2]
    group = q_heads // kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    keys, values, cu = reference_gather_kv(key_cache, value_cache, block_tables, seq_lens)
    if key_cache.dtype == torch.float8_e4m3fn:
        keys, values = reference_dequantize_fp8(keys, k_scale), reference_dequantize_fp8(
            values, v_scale)
    out = torch.zeros(num_tokens, q_heads, head_dim, dtype=torch.float32, device=query.device)
    lse = torch.full((num_tokens, q_heads), float("-inf"), dtype=torch.float32,
                     device=query.device)
    qsl = query_start_loc.tolist()
    for i in range(len(qsl) - 1):
        q0, q1 = qsl[i], qsl[i + 1]
        lo, hi = int(cu[i]), int(cu[i + 1])
        if q1 == q0 or hi == lo:
            continue
        n = hi - lo
        k = keys[lo:hi].float().repeat_interleave(group, dim=1)  # [n, q_heads, d]
        v = values[lo:hi].float().repeat_interleave(group, dim=1)
        s = torch.einsum("thd,nhd->thn", query[q0:q1].float(), k) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        qpos = torch.arange(n - (q1 - q0), n, device=query.device)[:, None]  # [t, 1]
        kpos = torch.arange(n, device=query.device)[None, :]
        if alibi_slopes is not None:
            s = s + alibi_slopes.float()[None, :, None] * (kpos - qpos)[:, None, :]
        allowed = kpos <= qpos if causal else torch.ones_like(kpos <= qpos)
        if sliding_window:
            allowed &= kpos > qpos - sliding_window
        s = s.masked_fill(~allowed[:, None, :], float("-inf"))
        lse[q0:q1] = torch.logsumexp(s, dim=-1)
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row with no position: all -inf
        out[q0:q1] = torch.einsum("thn,nhd->thd", p, v)
    out = out.to(query.dtype)
    return (out, lse) if return_lse else out


def reference_merge_attention_states(outputs, lses):
    """Merge attention over disjoint key sets (split-KV, cascade / shared prefix).

    ``outputs`` ``[P, ..., head_dim]`` and their natural-log ``lses`` ``[P, ...]``: the
    result is what attention over the union of the key sets gives, with its LSE. An input
    with ``lse = -inf`` (no keys) gets no weight; if all are ``-inf`` the output is 0.
    """
    lse = torch.logsumexp(lses.float(), dim=0)
    w = torch.exp(lses.float() - lse.nan_to_num(neginf=0.0)).nan_to_num(0.0)
    return (w[..., None] * outputs.float()).sum(0), lse
