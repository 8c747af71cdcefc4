"""paged_attention (mixed prefill/decode batches), fp8 caches, LSE merges and input checks,
against the PyTorch references in triton_kernels/reference.py.

As in test_kernels.py the kernels run in Triton's interpreter without a GPU (fp32 and fp16
only: its bf16 arithmetic is wrong). The grid follows vLLM's kernel tests (head sizes
40-256, block sizes 1-32, GQA/MQA pairs, query lengths 1 / 5 / 129 in one batch, windows,
soft caps, split-KV) as a list of cases covering each value rather than their product:
the interpreter runs programs one by one.
"""

import math
import os
import re

import pytest
from helpers import import_kernels

torch, tk = import_kernels("kernel tests")


pytestmark = pytest.mark.kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F32, F16 = torch.float32, torch.float16
TOL = {F32: dict(atol=2e-5, rtol=2e-5), F16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1.5e-2, rtol=1e-2)}
LSE_TOL = dict(atol=1e-4, rtol=1e-4)
FP8 = torch.float8_e4m3fn


def make_batch(q_lens, seq_lens, q_heads, kv_heads, head_dim, block_size, dtype, seed=0,
               cache_dtype=None, k_scale=None, v_scale=None):
    """A mixed batch: K/V of every cached token written through ``reshape_and_cache`` into a
    NaN-filled cache (fp8 when asked) along a random permutation of blocks; block-table
    padding names spare blocks, so an unmasked read past ``seq_len`` would hit NaN."""
    g = torch.Generator().manual_seed(seed)
    per_seq = [max(1, math.ceil(n / block_size)) for n in seq_lens]
    num_blocks = sum(per_seq) + 2
    perm = torch.randperm(num_blocks, generator=g)
    width = max(per_seq)
    table = torch.empty(len(seq_lens), width, dtype=torch.int32)
    cache_dtype = cache_dtype or dtype
    shape = (num_blocks, block_size, kv_heads, head_dim)
    if cache_dtype == FP8:  # fp8 e4m3fn has a NaN encoding (0x7f)
        kc = torch.full(shape, 0x7F, dtype=torch.uint8).view(FP8)
    else:
        kc = torch.full(shape, float("nan"), dtype=cache_dtype)
    vc = kc.clone()
    used, slots = 0, []
    for i, n in enumerate(seq_lens):
        blocks = perm[used:used + per_seq[i]]
        used += per_seq[i]
        pad = perm[-(width - per_seq[i]):] if width > per_seq[i] else blocks[:0]
        table[i] = torch.cat([blocks, pad]).to(torch.int32)
        pos = torch.arange(n)
        slots.append(blocks[pos // block_size] * block_size + pos % block_size)
    slots_t = torch.cat(slots).to(torch.int64)
    k = torch.randn(len(slots_t), kv_heads, head_dim, generator=g).to(dtype)
    v = torch.randn(len(slots_t), kv_heads, head_dim, generator=g).to(dtype)
    to = lambda t: t.to(DEVICE)  # noqa: E731
    kc, vc = to(kc), to(vc)
    tk.reshape_and_cache(to(k), to(v), kc, vc, to(slots_t), k_scale, v_scale)
    q = torch.randn(sum(q_lens), q_heads, head_dim, generator=g).to(dtype)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    return to(q), kc, vc, to(table), to(sl), to(qsl)


def dense_causal(q, kc, vc, table, sl, qsl, scale, window=None):
    """Attention straight from the definition (softmax over allowed keys), no paging code
    shared with the reference: a check on the reference itself."""
    bs, group = kc.shape[1], q.shape[1] // kc.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float32)
    for i in range(len(sl)):
        n, q0, q1 = int(sl[i]), int(qsl[i]), int(qsl[i + 1])
        for j, t in enumerate(range(q0, q1)):
            p = n - (q1 - q0) + j
            lo = 0 if not window else max(0, p - window + 1)
            keys = [(int(table[i, x // bs]), x % bs) for x in range(lo, p + 1)]
            k = torch.stack([kc[b, o] for b, o in keys]).float().cpu().repeat_interleave(group, 1)
            v = torch.stack([vc[b, o] for b, o in keys]).float().cpu().repeat_interleave(group, 1)
            s = torch.einsum("hd,nhd->hn", q[t].float().cpu(), k) * scale
            out[t] = torch.einsum("hn,nhd->hd", torch.softmax(s, -1), v)
    return out


# (q_heads, kv_heads, head_dim, block_size, dtype, window, softcap, alibi, partition_size):
# every head size / block size / GQA pair / feature appears at least once; fp32 and fp16.
CASES = [
    (4, 4, 64, 16, F32, None, None, False, 0),
    (8, 2, 40, 8, F16, None, None, False, 0),
    (5, 1, 80, 32, F32, 24, None, False, 0),
    (8, 1, 128, 16, F16, None, 30.0, False, 0),
    (6, 2, 96, 1, F32, None, None, True, 0),
    (4, 2, 112, 32, F32, 50, 5.0, False, 32),
    (16, 2, 256, 16, F16, 17, None, True, 0),
    (4, 1, 192, 8, F32, None, None, False, 48),
    (12, 4, 120, 16, F16, None, 2.0, False, 16),
]


if DEVICE == "cuda":  # bf16 only on a GPU: the interpreter's bf16 arithmetic is wrong
    BF16 = torch.bfloat16
    CASES += [(8, 2, 128, 16, BF16, None, None, False, 0), (32, 8, 128, 16, BF16, 64, 30.0, True, 32),
              (5, 1, 80, 32, BF16, None, None, False, 16)]
FP8_OK = DEVICE == "cpu" or torch.cuda.get_device_capability() >= (8, 9)


def _id(c):
    qh, kh, d, bs, dt, w, cap, al, ps = c
    return (f"{qh}x{kh}-d{d}-bs{bs}-{str(dt)[6:]}" + (f"-w{w}" if w else "")
            + (f"-cap{cap:g}" if cap else "") + ("-alibi" if al else "") + (f"-p{ps}" if ps else ""))


# Query lengths 1 (decode), 5 (a chunk), 129 (a prefill chunk after 20 cached tokens),
# 1 at seq_len 1, and a whole prefill; a seq_len that is a multiple of 16 and 32.
MIXED = ([1, 5, 129, 1, 13], [37, 64, 149, 1, 13])
SMALL = ([1, 5, 7, 1], [37, 64, 30, 1])  # the split-KV cases (one program per partition)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_paged_attention_mixed_batch(case):
    q_heads, kv_heads, head_dim, block_size, dtype, window, cap, alibi, part = case
    q_lens, seq_lens = SMALL if part else MIXED
    if head_dim >= 192 or block_size == 1:  # keep the interpreter's time in check
        q_lens, seq_lens = [1, 5, 9, 1], [37, 64, 40, 1]
    q, kc, vc, bt, sl, qsl = make_batch(q_lens, seq_lens, q_heads, kv_heads, head_dim,
                                        block_size, dtype, seed=head_dim)
    slopes = (torch.rand(q_heads, generator=torch.Generator().manual_seed(1)) * 0.5
              ).to(DEVICE) if alibi else None
    kw = dict(sliding_window=window, softcap=cap, alibi_slopes=slopes)
    out, lse = tk.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True, partition_size=part,
                                  **kw)
    ref, ref_lse = tk.reference_paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True, **kw)
    assert out.dtype == dtype and out.shape == q.shape and lse.shape == q.shape[:2]
    assert not torch.isnan(out).any(), "NaN from an unused cache slot leaked into the output"
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, **LSE_TOL)
    if not cap and not alibi:  # the reference against attention from its definition
        want = dense_causal(q, kc, vc, bt, sl, qsl, head_dim ** -0.5, window)
        torch.testing.assert_close(ref.float().cpu(), want, **TOL[dtype])


def test_split_kv_126_partitions_repeated_blocks_and_an_idle_sequence():
    # vLLM's widest split: 126 partitions of 16 tokens over a 2016-token decode, beside a
    # sequence with no new tokens this step (q_len 0: nothing to compute, nothing written) and
    # a chunk whose table names one physical block twice (a repeated block).
    q_lens, seq_lens = [1, 0, 5], [2016, 9, 40]
    q, kc, vc, bt, sl, qsl = make_batch(q_lens, seq_lens, 4, 1, 32, 16, F32, seed=11)
    bt[2, 1] = bt[2, 0]
    out, lse = tk.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True, partition_size=16,
                                  max_seq_len=2016)
    ref, ref_lse = tk.reference_paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True)
    torch.testing.assert_close(out, ref, **TOL[F32])
    torch.testing.assert_close(lse, ref_lse, **LSE_TOL)
    single = tk.paged_attention(q, kc, vc, bt, sl, qsl)
    torch.testing.assert_close(out, single, **TOL[F32])


def test_reference_lse_and_masks_from_first_principles():
    # One sequence, 3 new tokens at positions 3..5, window 2, cap 1, ALiBi 0.5.
    q, kc, vc, bt, sl, qsl = make_batch([3], [6], 1, 1, 4, 4, F32, seed=9)
    slopes = torch.tensor([0.5], device=DEVICE)
    ref, lse = tk.reference_paged_attention(q, kc, vc, bt, sl, qsl, 1.0, sliding_window=2,
                                            softcap=1.0, alibi_slopes=slopes, return_lse=True)
    keys = [kc[int(bt[0, p // 4]), p % 4, 0].float() for p in range(6)]
    vals = [vc[int(bt[0, p // 4]), p % 4, 0].float() for p in range(6)]
    for j, p in enumerate(range(3, 6)):
        s = torch.stack([torch.tanh(q[j, 0].float() @ keys[x]) + 0.5 * (x - p)
                         for x in (p - 1, p)])
        torch.testing.assert_close(lse[j, 0], torch.logsumexp(s, 0))
        w = torch.softmax(s, 0)
        torch.testing.assert_close(ref[j, 0], w[0] * vals[p - 1] + w[1] * vals[p])


@pytest.mark.parametrize("dtype", [F32, F16], ids=str)
def test_paged_decode_routes_features_and_lse(dtype):
    # The decode entry point: its fast path equals paged_attention with q_len 1, and with
    # return_lse / a window / a soft cap it is a call of paged_attention.
    seq_lens = [1, 21, 32, 45]
    q, kc, vc, bt, sl, qsl = make_batch([1] * 4, seq_lens, 8, 2, 64, 16, dtype, seed=3)
    fast = tk.paged_decode_attention(q, kc, vc, bt, sl, partition_size=0)
    ref, ref_lse = tk.reference_paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True)
    torch.testing.assert_close(fast, ref, **TOL[dtype])
    torch.testing.assert_close(fast, tk.reference_paged_decode(q, kc, vc, bt, sl), **TOL[dtype])
    out, lse = tk.paged_decode_attention(q, kc, vc, bt, sl, return_lse=True, partition_size=16)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, **LSE_TOL)
    out = tk.paged_decode_attention(q, kc, vc, bt, sl, sliding_window=8, softcap=10.0)
    want = tk.reference_paged_attention(q, kc, vc, bt, sl, qsl, sliding_window=8, softcap=10.0)
    torch.testing.assert_close(out, want, **TOL[dtype])


def test_cascade_shared_prefix_merge():
    # Three sequences share a 32-token prefix (2 blocks of 16) and have their own suffixes.
    # Attention over the prefix and over each suffix, merged by natural-log LSE, equals
    # attention over the whole sequence; a chained merge with an empty third part too.
    bs, kv_heads, q_heads, d = 16, 2, 8, 64
    suffix = [5, 16, 23]
    full_lens = [32 + n for n in suffix]
    q, kc, vc, bt, sl, qsl = make_batch([1, 1, 1], full_lens, q_heads, kv_heads, d, bs, F32,
                                        seed=5)
    # Give all three the first sequence's prefix blocks (prefix sharing).
    bt[1:, :2] = bt[0, :2]
    full = tk.reference_paged_attention(q, kc, vc, bt, sl, qsl)
    n = len(suffix)
    prefix_bt = bt[:, :2].contiguous()
    prefix_sl = torch.full((n,), 32, dtype=torch.int32, device=DEVICE)
    o_pre, lse_pre = tk.paged_attention(q, kc, vc, prefix_bt, prefix_sl, qsl, return_lse=True)
    suffix_bt = bt[:, 2:]  # a non-contiguous view: the kernels take its strides
    suffix_sl = torch.tensor(suffix, dtype=torch.int32, device=DEVICE)
    o_suf, lse_suf = tk.paged_attention(q, kc, vc, suffix_bt, suffix_sl, qsl, return_lse=True)
    merged, lse = tk.merge_attention_states(o_pre, lse_pre, o_suf, lse_suf, return_lse=True)
    torch.testing.assert_close(merged, full, **TOL[F32])
    _, full_lse = tk.reference_paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True)
    torch.testing.assert_close(lse, full_lse, **LSE_TOL)
    ref_m, ref_l = tk.reference_merge_attention_states(torch.stack([o_pre, o_suf]),
                                                       torch.stack([lse_pre, lse_suf]))
    torch.testing.assert_close(merged, ref_m, **TOL[F32])
    torch.testing.assert_close(lse, ref_l, **LSE_TOL)
    empty = torch.full_like(lse, float("-inf"))
    again = tk.merge_attention_states(merged, lse, torch.full_like(merged, float("nan")), empty)
    torch.testing.assert_close(again, merged)


def test_cascade_with_prefill_chunks_uses_a_non_causal_prefix_pass():
    # Two sequences share a 24-token prefix (3 blocks of 8) and bring chunks of 5 and 1 new
    # tokens after their own suffixes. Prefix pass: causal=False (all new tokens come after
    # the prefix); suffix pass: causal, the new tokens the last of the suffix. Merged by LSE,
    # that is attention over the whole sequence.
    bs, prefix = 8, 24
    q_lens, suffix = [5, 1], [13, 9]
    q, kc, vc, bt, sl, qsl = make_batch(q_lens, [prefix + n for n in suffix], 8, 2, 32, bs,
                                        F32, seed=13)
    bt[1, :3] = bt[0, :3]
    full, full_lse = tk.reference_paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True)
    pre_sl = torch.full((2,), prefix, dtype=torch.int32, device=DEVICE)
    o_pre, l_pre = tk.paged_attention(q, kc, vc, bt[:, :3], pre_sl, qsl, return_lse=True,
                                      causal=False, validate=True)
    ref_pre, ref_l_pre = tk.reference_paged_attention(q, kc, vc, bt[:, :3], pre_sl, qsl,
                                                      return_lse=True, causal=False)
    torch.testing.assert_close(o_pre, ref_pre, **TOL[F32])
    torch.testing.assert_close(l_pre, ref_l_pre, **LSE_TOL)
    suf_sl = torch.tensor(suffix, dtype=torch.int32, device=DEVICE)
    o_suf, l_suf = tk.paged_attention(q, kc, vc, bt[:, 3:], suf_sl, qsl, return_lse=True)
    merged, lse = tk.merge_attention_states(o_pre, l_pre, o_suf, l_suf, return_lse=True)
    torch.testing.assert_close(merged, full, **TOL[F32])
    torch.testing.assert_close(lse, full_lse, **LSE_TOL)
    with pytest.raises(ValueError, match="causal=False takes no sliding_window"):
        tk.paged_attention(q, kc, vc, bt, sl, qsl, causal=False, sliding_window=4)


def test_non_contiguous_metadata_gives_the_same_numbers():
    q_lens, seq_lens = [1, 5, 9], [37, 20, 9]
    q, kc, vc, bt, sl, qsl = make_batch(q_lens, seq_lens, 4, 2, 32, 8, F32, seed=6)
    want, want_lse = tk.paged_attention(q, kc, vc, bt, sl, qsl, return_lse=True)
    # Every metadata tensor as a strided view into a bigger buffer.
    bt_t = torch.zeros(bt.shape[1], 2 * bt.shape[0], dtype=torch.int32, device=DEVICE)
    bt_t[:, ::2] = bt.t()
    bt_view = bt_t.t()[::2]  # strides (2, 2 * num_seqs)
    sl_view = torch.stack([sl, sl * 0], 1)[:, 0]
    qsl_view = torch.stack([qsl, qsl * 0 - 1], 1)[:, 0]
    assert not bt_view.is_contiguous() and sl_view.stride(0) == 2 == qsl_view.stride(0)
    got, got_lse = tk.paged_attention(q, kc, vc, bt_view, sl_view, qsl_view, return_lse=True)
    assert torch.equal(got, want) and torch.equal(got_lse, want_lse)
    # 64 rows a program (block_q 32 with 2 query heads a KV head), as a prefill might use.
    wide = tk.paged_attention(q, kc, vc, bt_view, sl_view, qsl_view, block_q=32, tile_n=32)
    torch.testing.assert_close(wide, tk.reference_paged_attention(q, kc, vc, bt, sl, qsl))
    dec_q = q[qsl[1:] - 1]  # each sequence's last token, as a decode batch
    dec = tk.paged_decode_attention(dec_q, kc, vc, bt, sl, partition_size=0)
    assert torch.equal(tk.paged_decode_attention(dec_q, kc, vc, bt_view, sl_view,
                                                 partition_size=0), dec)
    keys, values, _ = tk.gather_kv(kc, vc, bt, sl)
    k2, v2, _ = tk.gather_kv(kc, vc, bt_view, sl_view)
    assert torch.equal(keys, k2) and torch.equal(values, v2)
    # A strided slot mapping writes the same slots.
    slots = torch.tensor([3, -1, 17, 40], dtype=torch.int64, device=DEVICE)
    slots_view = torch.stack([slots, slots * 0], 1)[:, 0]
    new = torch.randn(4, 2, 32, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    a, b = kc.clone(), vc.clone()
    tk.reshape_and_cache(new, new, a, b, slots)
    c, d = kc.clone(), vc.clone()
    tk.reshape_and_cache(new, new, c, d, slots_view)
    assert torch.equal(a.nan_to_num(7.0), c.nan_to_num(7.0))


@pytest.mark.skipif(not FP8_OK, reason="fp8 (e4m3) needs compute capability >= 8.9")
@pytest.mark.parametrize("dtype", [F32, F16], ids=str)
@pytest.mark.parametrize("per_head", [False, True], ids=["per-tensor", "per-head"])
def test_fp8_cache_write_bit_exact_and_attention(dtype, per_head):
    kv_heads, q_heads, d, bs = 2, 8, 64, 16
    g = torch.Generator().manual_seed(8)
    if per_head:
        k_scale = torch.tensor([0.02, 0.05]).to(DEVICE)
        v_scale = torch.tensor([0.03, 0.01]).to(DEVICE)
    else:
        k_scale = torch.tensor(0.02).to(DEVICE)
        v_scale = torch.tensor([0.03]).to(DEVICE)
    # The write: values spanning e4m3's subnormals, ties and saturation, bit for bit.
    n = 64
    key = (torch.randn(n, kv_heads, d, generator=g) * torch.logspace(-4, 1.5, n)[:, None, None])
    key[0, 0, :4] = torch.tensor([0.0, -0.0, 1e6, -1e6])
    value = torch.randn(n, kv_heads, d, generator=g)
    key, value = key.to(dtype).to(DEVICE), value.to(dtype).to(DEVICE)
    slots = torch.randperm(4 * bs, generator=g)[:n].to(torch.int64).to(DEVICE)
    slots[5] = -1
    kc = torch.zeros(4, bs, kv_heads, d, dtype=FP8, device=DEVICE)
    vc, kr, vr = kc.clone(), kc.clone(), kc.clone()
    tk.reshape_and_cache(key, value, kc, vc, slots, k_scale, v_scale)
    tk.reference_reshape_and_cache(key, value, kr, vr, slots, k_scale, v_scale)
    assert torch.equal(kc.view(torch.uint8), kr.view(torch.uint8))
    assert torch.equal(vc.view(torch.uint8), vr.view(torch.uint8))
    assert float(kc.float().abs().max()) == 448.0  # saturated, not NaN

    # The attention: dequantized in the kernel, against the reference on the same cache,
    # and (loosely: fp8 keeps 3 mantissa bits) against attention over the unquantized K/V.
    q_lens, seq_lens = [1, 5, 1], [37, 20, 1]
    q, kc, vc, bt, sl, qsl = make_batch(q_lens, seq_lens, q_heads, kv_heads, d, bs, dtype,
                                        seed=9, cache_dtype=FP8, k_scale=k_scale * 50,
                                        v_scale=v_scale * 50)
    kw = dict(k_scale=k_scale * 50, v_scale=v_scale * 50, return_lse=True)
    out, lse = tk.paged_attention(q, kc, vc, bt, sl, qsl, **kw)
    ref, ref_lse = tk.reference_paged_attention(q, kc, vc, bt, sl, qsl, **kw)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, **LSE_TOL)
    q2, kc2, vc2, *_ = make_batch(q_lens, seq_lens, q_heads, kv_heads, d, bs, F32, seed=9)
    exact = tk.reference_paged_attention(q2, kc2, vc2, bt, sl, qsl)
    assert (out.float() - exact).abs().max() < 0.15
    dec = tk.paged_decode_attention(q[qsl[1:] - 1], kc, vc, bt, sl, k_scale=kw["k_scale"],
                                    v_scale=kw["v_scale"])
    torch.testing.assert_close(dec, ref[qsl[1:] - 1], **TOL[dtype])


def _bad_args():
    q, kc, vc, bt, sl, qsl = make_batch([1, 2], [3, 4], 4, 2, 16, 4, F32, seed=10)
    ok = dict(query=q, key_cache=kc, value_cache=vc, block_tables=bt, seq_lens=sl,
              query_start_loc=qsl)
    meta = torch.device("meta")
    return ok, [
        (dict(query=q.half()), "query dtype"),
        (dict(query=q[:, :, :8]), "query must have shape"),
        (dict(query=q[:, :3]), "multiple of kv_heads"),
        (dict(value_cache=vc[:, :2]), "value_cache must have shape"),
        (dict(block_tables=bt.long()), "block_tables must have dtype torch.int32"),
        (dict(seq_lens=sl[:1]), "seq_lens must have shape [2]"),
        (dict(query_start_loc=qsl[:2]), "query_start_loc must have shape [3]"),
        (dict(seq_lens=sl.to(meta)), "seq_lens is on meta"),
        (dict(block_tables=bt[0]), "block_tables must have 2 dimensions"),
        (dict(k_scale=torch.tensor(1.0)), "fp8 cache only"),
        (dict(alibi_slopes=torch.ones(3)), "alibi_slopes must have shape [4]"),
    ]


def test_every_entry_point_refuses_bad_arguments_clearly():
    ok, bad = _bad_args()
    for change, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            tk.paged_attention(**{**ok, **change})
    q, kc, vc, bt, sl = (ok[k] for k in ("query", "key_cache", "value_cache", "block_tables",
                                         "seq_lens"))
    dq = q[:2]
    with pytest.raises(ValueError, match="seq_lens must have dtype torch.int32"):
        tk.paged_decode_attention(dq, kc, vc, bt, sl.long())
    with pytest.raises(ValueError, match="query must have shape"):
        tk.paged_decode_attention(dq[..., :8], kc, vc, bt, sl)
    with pytest.raises(ValueError, match="fp8 cache needs k_scale"):
        tk.paged_attention(q, kc.to(FP8), vc.to(FP8), bt, sl, ok["query_start_loc"])
    with pytest.raises(ValueError, match="k_scale must be a scalar"):
        tk.reshape_and_cache(q[:, :2], q[:, :2], kc.to(FP8), vc.to(FP8),
                             torch.zeros(3, dtype=torch.int64), torch.ones(3), torch.ones(1))
    with pytest.raises(ValueError, match="slot_mapping must have dtype torch.int64"):
        tk.reshape_and_cache(q[:, :2], q[:, :2], kc, vc, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="key must have shape"):
        tk.reshape_and_cache(q, q, kc, vc, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="block_tables must have dtype"):
        tk.gather_kv(kc, vc, bt.long(), sl)
    with pytest.raises(ValueError, match="block_mapping must have 2 dimensions"):
        tk.copy_blocks([kc], [vc], torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"caches\[1\] must have dtype"):
        tk.copy_blocks([kc], [vc.half()], torch.zeros(1, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="lse must have 3 dimensions"):
        tk.merge_attention_partitions(torch.zeros(2, 3, 4, 8), torch.zeros(2, 3))


def test_validate_checks_the_metadata_values():
    q, kc, vc, bt, sl, qsl = make_batch([1, 2], [3, 20], 4, 2, 16, 4, F32, seed=12)
    args = dict(query=q, key_cache=kc, value_cache=vc, block_tables=bt, seq_lens=sl,
                query_start_loc=qsl)
    good = tk.paged_attention(**args, validate=True)
    torch.testing.assert_close(good, tk.reference_paged_attention(q, kc, vc, bt, sl, qsl))
    bad_bt = bt.clone()
    bad_bt[1, 4] = kc.shape[0]  # the last block seq 1 uses (positions 16..19)
    cases = [
        (dict(block_tables=bad_bt), rf"block_tables\[1, 4\] = {kc.shape[0]} is not a block"),
        (dict(seq_lens=sl + 100), "needs more than the block table's"),
        (dict(seq_lens=torch.tensor([0, 20], dtype=torch.int32)), "sequence 0 has 1 new tokens"),
        (dict(query_start_loc=torch.tensor([0, 1, 2], dtype=torch.int32)), "ends at 2"),
        (dict(query_start_loc=torch.tensor([1, 1, 3], dtype=torch.int32)), "start at 0"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            tk.paged_attention(**{**args, **change}, validate=True)
    with pytest.raises(ValueError, match="is not a block"):
        tk.paged_decode_attention(q[:2], kc, vc, bad_bt, sl, validate=True)


def test_every_kernel_compiles_for_nvidia_gpus(tmp_path):
    # The interpreter runs code a GPU compile refuses; compile each kernel to a cubin for
    # sm_80 / sm_90 (no GPU needed) in a process without TRITON_INTERPRET. ~15 s.
    import subprocess
    import sys
    from pathlib import Path

    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        pytest.skip("triton has no NVIDIA backend here")
    script = Path(__file__).resolve().parent / "compile_kernels.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("ok ") == 13, p.stdout
