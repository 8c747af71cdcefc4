"""Paged-KV Triton kernels against their PyTorch references (and dense attention).

Without a GPU the kernels run in Triton's interpreter, which must be switched on before the
kernels are decorated, so TRITON_INTERPRET is set here before triton_kernels is imported.
The interpreter gets bf16 arithmetic wrong, so CPU runs use fp32 and fp16 only.
"""

import math

import pytest
from helpers import import_kernels

torch, tk = import_kernels("kernel tests")


pytestmark = pytest.mark.kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# fp32: near-exact; fp16: 1e-3 (FlashInfer); bf16 (GPU only): 1.5e-2 / 1e-2 (vLLM).
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=1e-3, rtol=1e-3),
       torch.bfloat16: dict(atol=1.5e-2, rtol=1e-2)}
SENTINEL = -12345.0


def same(a, b) -> bool:
    """Exact equality, NaN equal to NaN (unused cache slots hold NaN)."""
    return torch.equal(torch.nan_to_num(a, nan=SENTINEL), torch.nan_to_num(b, nan=SENTINEL))


def make_paged(seq_lens, kv_heads, head_dim, block_size, dtype, seed=0, spare_blocks=3):
    """Random K/V per sequence, paged through a random permutation of physical blocks.

    Returns dense per-sequence K/V (for a paging-free check), the NaN-filled caches, the
    int32 block table (padding entries point at real blocks, so an unmasked read of them
    would hit NaN) and int32 seq_lens.
    """
    g = torch.Generator().manual_seed(seed)
    per_seq = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(per_seq) + spare_blocks
    perm = torch.randperm(num_blocks, generator=g)
    width = max(per_seq)
    table = torch.empty(len(seq_lens), width, dtype=torch.int32)
    kc = torch.full((num_blocks, block_size, kv_heads, head_dim), float("nan"), dtype=dtype)
    vc = kc.clone()
    dense, used = [], 0
    for i, n in enumerate(seq_lens):
        blocks = perm[used:used + per_seq[i]]
        used += per_seq[i]
        # Padding entries of the table name blocks of other sequences / spares (never read).
        table[i] = torch.cat([blocks, perm[-(width - per_seq[i]):] if width > per_seq[i]
                              else blocks[:0]]).to(torch.int32)
        k = torch.randn(n, kv_heads, head_dim, generator=g).to(dtype)
        v = torch.randn(n, kv_heads, head_dim, generator=g).to(dtype)
        pos = torch.arange(n)
        kc[blocks[pos // block_size], pos % block_size] = k
        vc[blocks[pos // block_size], pos % block_size] = v
        dense.append((k, v))
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    to = lambda t: t.to(DEVICE)  # noqa: E731
    return dense, to(kc), to(vc), to(table), to(sl)


def dense_attention(q, dense, group, scale):
    out = []
    for i, (k, v) in enumerate(dense):
        k = k.float().repeat_interleave(group, 1)
        v = v.float().repeat_interleave(group, 1)
        s = torch.einsum("hd,nhd->hn", q[i].float().cpu(), k) * scale
        out.append(torch.einsum("hn,nhd->hd", torch.softmax(s, -1), v))
    return torch.stack(out)


# seq_len 1, a partial last block, an exactly full last block, and several blocks.
SEQ_LENS = [1, 21, 32, 45]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("q_heads,kv_heads", [(4, 4), (8, 2), (5, 1)])
def test_paged_decode_matches_reference_and_dense(dtype, q_heads, kv_heads):
    head_dim, block_size = 16, 16
    dense, kc, vc, bt, sl = make_paged(SEQ_LENS, kv_heads, head_dim, block_size, dtype,
                                       seed=q_heads * 10 + kv_heads)
    q = torch.randn(len(SEQ_LENS), q_heads, head_dim,
                    generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    scale = head_dim ** -0.5
    ref = tk.reference_paged_decode(q, kc, vc, bt, sl)
    want = dense_attention(q, dense, q_heads // kv_heads, scale)
    torch.testing.assert_close(ref.float().cpu(), want, **TOL[dtype])

    out = tk.paged_decode_attention(q, kc, vc, bt, sl, partition_size=0)
    assert out.dtype == dtype and out.shape == q.shape
    assert not torch.isnan(out).any(), "NaN from an unused cache slot leaked into the output"
    torch.testing.assert_close(out.float().cpu(), want, **TOL[dtype])
    torch.testing.assert_close(out, ref, **TOL[dtype])

    # Split-KV: partitions of 16 tokens, so seq_len 1 has 2 empty partitions (lse = -inf).
    split = tk.paged_decode_attention(q, kc, vc, bt, sl, partition_size=16)
    assert not torch.isnan(split).any()
    torch.testing.assert_close(split, out, **TOL[dtype])
    torch.testing.assert_close(split.float().cpu(), want, **TOL[dtype])


@pytest.mark.parametrize("block_size,head_dim,tile_n", [(8, 24, 16), (32, 16, 16), (16, 32, 32)])
def test_paged_decode_block_size_independent_of_tile(block_size, head_dim, tile_n):
    # Tiles span several blocks (8 < 16), a block spans several tiles (32 > 16), a head_dim
    # that is not a power of two, and one tile of two blocks.
    q_heads, kv_heads = 8, 2
    seq_lens = [1, 7, 32, 40]
    dense, kc, vc, bt, sl = make_paged(seq_lens, kv_heads, head_dim, block_size, torch.float32,
                                       seed=block_size)
    q = torch.randn(len(seq_lens), q_heads, head_dim,
                    generator=torch.Generator().manual_seed(2)).to(DEVICE)
    want = dense_attention(q, dense, q_heads // kv_heads, head_dim ** -0.5)
    for part in (0, tile_n):
        out = tk.paged_decode_attention(q, kc, vc, bt, sl, partition_size=part, tile_n=tile_n)
        torch.testing.assert_close(out.float().cpu(), want, **TOL[torch.float32])


def test_paged_decode_custom_scale_and_max_seq_len():
    dense, kc, vc, bt, sl = make_paged([5, 17], 2, 16, 16, torch.float32, seed=3)
    q = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    want = dense_attention(q, dense, 2, 0.3)
    out = tk.paged_decode_attention(q, kc, vc, bt, sl, 0.3, max_seq_len=17, partition_size=0)
    torch.testing.assert_close(out.float().cpu(), want, **TOL[torch.float32])
    # The default scale differs, so the same call without it must not match.
    other = tk.paged_decode_attention(q, kc, vc, bt, sl, partition_size=0)
    assert not torch.allclose(other.float().cpu(), want, atol=1e-3)


def test_merge_attention_partitions_lse():
    g = torch.Generator().manual_seed(4)
    parts = torch.randn(2, 3, 4, 16, generator=g)
    lse = torch.randn(2, 3, 4, generator=g)
    lse[0, 0, 1:] = float("-inf")  # empty partitions carry no weight
    w = torch.softmax(lse * math.log(2), -1)  # lse is base 2
    want = (w[..., None] * parts).sum(2)
    got = tk.merge_attention_partitions(parts.to(DEVICE), lse.to(DEVICE), lse_base2=True)
    torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0, 0].cpu(), parts[0, 0, 0])
    # The default is natural-log LSE, as paged_attention returns it.
    got_e, lse_e = tk.merge_attention_partitions(parts.to(DEVICE), (lse * math.log(2)).to(DEVICE),
                                                 return_lse=True)
    torch.testing.assert_close(got_e.cpu(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse_e.cpu(), torch.logsumexp(lse * math.log(2), -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_reshape_and_cache_exact(dtype):
    g = torch.Generator().manual_seed(5)
    num_blocks, block_size, kv_heads, head_dim = 6, 16, 2, 16
    kc = torch.full((num_blocks, block_size, kv_heads, head_dim), float("nan"), dtype=dtype)
    vc = kc.clone()
    n = 20
    slots = torch.randperm(num_blocks * block_size, generator=g)[:n].to(torch.int64)
    slots[[3, 11]] = -1  # padding tokens
    # Non-contiguous K/V, as sliced from a fused QKV projection.
    qkv = torch.randn(n, 3 * kv_heads, head_dim, generator=g).to(dtype)
    key, value = qkv[:, kv_heads:2 * kv_heads], qkv[:, 2 * kv_heads:]
    kc, vc, key, value, slots = (t.to(DEVICE) for t in (kc, vc, key, value, slots))
    kr, vr = kc.clone(), vc.clone()
    tk.reshape_and_cache(key, value, kc, vc, slots)
    tk.reference_reshape_and_cache(key, value, kr, vr, slots)
    assert same(kc, kr) and same(vc, vr)
    written = ~torch.isnan(kc[..., 0, 0]).flatten()
    assert int(written.sum()) == n - 2, "padding tokens must not be written"
    keep = slots >= 0
    assert torch.equal(kc.view(-1, kv_heads, head_dim)[slots[keep]], key[keep])


def test_copy_blocks_all_layers_exact():
    g = torch.Generator().manual_seed(6)
    layers, num_blocks, shape = 3, 10, (4, 2, 16)
    kcs = [torch.randn(num_blocks, *shape, generator=g).to(DEVICE) for _ in range(layers)]
    vcs = [torch.randn(num_blocks, *shape, generator=g).to(DEVICE) for _ in range(layers)]
    kcs[1][7, 2] = float("nan")  # NaN content is copied like anything else
    mapping = torch.tensor([[7, 0], [3, 5], [7, 9]], dtype=torch.int64)
    before_k = [c.clone() for c in kcs]
    kr, vr = [c.clone() for c in kcs], [c.clone() for c in vcs]
    tk.copy_blocks(kcs, vcs, mapping.to(DEVICE))
    tk.reference_copy_blocks(kr, vr, mapping)
    for a, b in zip(kcs + vcs, kr + vr):
        assert same(a, b)
    for layer in range(layers):
        assert same(kcs[layer][0], before_k[layer][7]) and same(kcs[layer][9], before_k[layer][7])
        assert same(kcs[layer][1:5], before_k[layer][1:5])  # untouched blocks unchanged
    assert not same(kcs[0][0], before_k[0][0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gather_kv_exact(dtype):
    seq_lens = [1, 16, 21, 0, 32]
    dense, kc, vc, bt, sl = make_paged([max(n, 1) for n in seq_lens], 2, 16, 16, dtype, seed=7)
    sl = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    keys, values, cu = tk.gather_kv(kc, vc, bt, sl)
    rk, rv, rcu = tk.reference_gather_kv(kc, vc, bt, sl)
    assert torch.equal(cu, rcu) and cu.tolist() == [0, 1, 17, 38, 38, 70]
    assert torch.equal(keys, rk) and torch.equal(values, rv)
    assert not torch.isnan(keys).any()
    want_k = torch.cat([k[:n] for (k, _), n in zip(dense, seq_lens)])
    want_v = torch.cat([v[:n] for (_, v), n in zip(dense, seq_lens)])
    assert torch.equal(keys.cpu(), want_k) and torch.equal(values.cpu(), want_v)


def test_scatter_then_decode_then_gather_roundtrip():
    # The three kernels composed the way an engine uses them.
    block_size, kv_heads, head_dim, q_heads = 16, 2, 16, 4
    kc = torch.full((8, block_size, kv_heads, head_dim), float("nan"), device=DEVICE)
    vc = kc.clone()
    bt = torch.tensor([[5, 2], [7, 0]], dtype=torch.int32, device=DEVICE)
    lens = [19, 9]
    g = torch.Generator().manual_seed(8)
    ks = [torch.randn(n, kv_heads, head_dim, generator=g) for n in lens]
    vs = [torch.randn(n, kv_heads, head_dim, generator=g) for n in lens]
    slots = [int(bt[i, p // block_size]) * block_size + p % block_size
             for i, n in enumerate(lens) for p in range(n)]
    tk.reshape_and_cache(torch.cat(ks).to(DEVICE), torch.cat(vs).to(DEVICE), kc, vc,
                         torch.tensor(slots, dtype=torch.int64, device=DEVICE))
    sl = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    keys, values, _ = tk.gather_kv(kc, vc, bt, sl)
    assert torch.equal(keys.cpu(), torch.cat(ks)) and torch.equal(values.cpu(), torch.cat(vs))
    q = torch.randn(2, q_heads, head_dim, generator=g)
    out = tk.paged_decode_attention(q.to(DEVICE), kc, vc, bt, sl)
    want = dense_attention(q, list(zip(ks, vs)), q_heads // kv_heads, head_dim ** -0.5)
    torch.testing.assert_close(out.cpu(), want, **TOL[torch.float32])


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU: > 2**31 cache elements (int64 offsets)")
def test_paged_decode_large_block_index_gpu():
    # Blocks past element 2**31 of the cache: int32 offset arithmetic would wrap.
    block_size, kv_heads, head_dim = 16, 1, 128
    num_blocks = (2 ** 31) // (block_size * kv_heads * head_dim) + 64
    kc = torch.empty((num_blocks, block_size, kv_heads, head_dim), dtype=torch.float16,
                     device="cuda")
    vc = torch.empty_like(kc)
    bt = torch.tensor([[num_blocks - 1, num_blocks - 3]], dtype=torch.int32, device="cuda")
    k = torch.randn(20, kv_heads, head_dim, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    slots = torch.tensor([(num_blocks - 1) * block_size + p for p in range(16)]
                         + [(num_blocks - 3) * block_size + p for p in range(4)],
                         dtype=torch.int64, device="cuda")
    tk.reshape_and_cache(k, v, kc, vc, slots)
    sl = torch.tensor([20], dtype=torch.int32, device="cuda")
    q = torch.randn(1, 4, head_dim, device="cuda", dtype=torch.float16)
    out = tk.paged_decode_attention(q, kc, vc, bt, sl)
    want = dense_attention(q, [(k.cpu(), v.cpu())], 4, head_dim ** -0.5)
    torch.testing.assert_close(out.float().cpu(), want, **TOL[torch.float16])
