"""Plain PyTorch references for the paged-KV kernels (no triton needed).

They define what each kernel must compute, back the tests, and are the fallback path when
triton is not installed. Layout everywhere: K and V caches ``[num_blocks, block_size,
kv_heads, head_dim]`` (token-major, "NHD"), int32 block tables ``[num_seqs, max_blocks]``,
int32 ``seq_lens``, int64 slot mappings (``slot = block * block_size + offset``; negative =
padding token, skipped).
"""

from __future__ import annotations

import torch


def reference_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping) -> None:
    """Write ``key``/``value`` ``[num_tokens, kv_heads, head_dim]`` into the caches in place."""
    block_size = key_cache.shape[1]
    slots = slot_mapping.to(torch.int64)
    keep = slots >= 0
    slots = slots[keep]
    blocks, offsets = slots // block_size, slots % block_size
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
