"""Demo agent step: several branches share one system-prompt prefix in a paged KV cache.

A tiny random-weight, single-layer decoder (seeded, no positional encoding) prefills the
shared prefix once; the branches fork from it and decode a few tokens each through the paged
kernels (copy-on-write copies the shared partial last block when a branch first writes to
it). A late joiner then allocates the same prefix and gets its full blocks from the prefix
cache, computing only the tail; its result is checked against the original prefill. The
block manager's accounting says how many blocks (and bytes) sharing saved, and a
``BlockMeter`` integrates blocks in use into KV block-seconds.

``kv_cache='fp8'`` stores K and V in an fp8 (e4m3) cache with per-head scales set from the
prefix: blocks are metered at their real size (bytes per block from the cache tensor itself,
a quarter of fp32's), and the results then differ from the fp32 prefill by fp8's rounding.

Kernel path: Triton on a GPU; Triton's interpreter on CPU (``TRITON_INTERPRET=1`` is set
before the kernels are imported); the PyTorch references when triton is missing. The result
says which ran. torch is imported inside ``run`` so importing this module needs no torch.
"""

from __future__ import annotations

import os
import sys
import time

from slurmgov.context.blocks import BlockManager, BlockMeter
from slurmgov.context.kernels import import_kernels


def _pick_kernels(path: str):
    """Return (path name, namespace of kernel functions, device, reason)."""
    import torch

    if path not in ("auto", "torch-reference"):
        raise ValueError(f"path must be 'auto' or 'torch-reference', not {path!r}")
    cuda = torch.cuda.is_available()
    if path == "auto":
        if not cuda:
            # Must precede the first import of the kernels: @triton.jit reads it then.
            os.environ.setdefault("TRITON_INTERPRET", "1")
        try:
            tk = import_kernels()
        except ImportError as e:  # pragma: no cover - package not importable
            tk, reason = None, f"slurmgov_kernels not importable: {e}"
        else:
            reason = "" if tk.HAVE_TRITON else "triton is not installed"
        if tk is not None and tk.HAVE_TRITON:
            kernel = tk.paged_decode._paged_decode_kernel
            interpreted = type(kernel).__name__ == "InterpretedFunction"
            if cuda and not interpreted:
                return "triton-gpu", _Kernels(tk, reference=False), torch.device("cuda"), ""
            if interpreted:
                return "triton-interpreter", _Kernels(tk, reference=False), torch.device("cpu"), ""
            reason = ("slurmgov_kernels was imported before TRITON_INTERPRET=1 was set and "
                      "there is no GPU")
    else:
        reason = "asked for the torch reference"
    ref = import_kernels().reference

    dev = torch.device("cuda" if cuda else "cpu")
    return "torch-reference", _Kernels(ref, reference=True), dev, reason


class _Kernels:
    """The four operations, from the Triton kernels or from their references."""

    def __init__(self, mod, reference: bool):
        if reference:
            self.reshape_and_cache = mod.reference_reshape_and_cache
            self.copy_blocks = mod.reference_copy_blocks
            self.decode = _reference_decode(mod)
        else:
            self.reshape_and_cache = mod.reshape_and_cache
            self.copy_blocks = mod.copy_blocks
            self.decode = mod.paged_decode_attention


def _reference_decode(ref):
    """The reference with paged_decode_attention's signature (fp8 scales included)."""

    def decode(q, kc, vc, bt, sl, scale, k_scale=None, v_scale=None):
        import torch

        if k_scale is None:
            return ref.reference_paged_decode(q, kc, vc, bt, sl, scale)
        qsl = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
        return ref.reference_paged_attention(q, kc, vc, bt, sl, qsl, scale, k_scale=k_scale,
                                             v_scale=v_scale)

    return decode


def run(inputs: dict, branches: int = 4, prefix_tokens: int = 72, decode_tokens: int = 8,
        block_size: int = 16, kv_heads: int = 2, q_heads: int = 4, head_dim: int = 16,
        vocab: int = 97, num_blocks: int = 64, seed: int = 0, path: str = "auto",
        kv_cache: str = "same", **_ignored) -> dict:
    """Run the shared-prefix demo; return JSON-able accounting (see module docstring).

    ``prefix_tokens`` not a multiple of ``block_size`` exercises copy-on-write of the shared
    partial block; ``path='torch-reference'`` forces the PyTorch references; ``kv_cache``
    is ``'same'`` (the compute dtype, fp32) or ``'fp8'``.
    """
    import torch

    if kv_cache not in ("same", "fp8"):
        raise ValueError(f"kv_cache must be 'same' or 'fp8', not {kv_cache!r}")

    t0 = time.perf_counter()
    path_name, k, device, reason = _pick_kernels(path)
    dtype = torch.float32  # exact enough to check the kernels against the references
    cache_dtype = torch.float8_e4m3fn if kv_cache == "fp8" else dtype
    layers = 1
    # NaN in every unused slot: a kernel that reads past a sequence's length shows up as NaN.
    kc = torch.full((num_blocks, block_size, kv_heads, head_dim), float("nan"),
                    dtype=dtype, device=device).to(cache_dtype)
    vc = kc.clone()
    # Metered at the cache's real size: one block of K and V, every layer, as stored.
    bytes_per_block = 2 * layers * kc[0].numel() * kc.element_size()
    meter = BlockMeter()
    mgr = BlockManager(num_blocks, block_size, bytes_per_block=bytes_per_block, meter=meter)

    g = torch.Generator().manual_seed(seed)
    d_model = q_heads * head_dim

    def w(*shape):
        return (torch.randn(*shape, generator=g) / shape[0] ** 0.5).to(device, dtype)

    emb, wq, wk, wv, wo, lm = (w(vocab, d_model), w(d_model, q_heads * head_dim),
                               w(d_model, kv_heads * head_dim), w(d_model, kv_heads * head_dim),
                               w(q_heads * head_dim, d_model), w(d_model, vocab))
    scale = head_dim ** -0.5
    scales: dict = {}  # fp8: per-head k_scale/v_scale, set from the prefix below

    def project(tokens):
        x = emb[tokens]
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        n = x.shape[0]
        return (x, (x @ wq).view(n, q_heads, head_dim), (x @ wk).view(n, kv_heads, head_dim),
                (x @ wv).view(n, kv_heads, head_dim))

    def logits_of(x, attn):
        h = x + attn.reshape(attn.shape[0], -1) @ wo
        return h @ lm

    def write(seq_ids, positions, kk, vv):
        slots = [mgr.slots(s, p, p + 1)[0] for s, p in zip(seq_ids, positions)]
        k.reshape_and_cache(kk, vv, kc, vc, torch.tensor(slots, dtype=torch.int64, device=device),
                            *scales.values())

    max_ref_err = 0.0

    def attend(seq_ids, q):
        nonlocal max_ref_err
        bt = torch.tensor(mgr.block_tables(seq_ids), dtype=torch.int32, device=device)
        sl = torch.tensor([mgr.seq_len(s) for s in seq_ids], dtype=torch.int32, device=device)
        out = k.decode(q, kc, vc, bt, sl, scale, **scales)
        if path_name != "torch-reference":
            want = _reference_decode(import_kernels().reference)(q, kc, vc, bt, sl,
                                                                         scale, **scales)
            max_ref_err = max(max_ref_err, float((out - want).abs().max()))
        return out

    # 1. Prefill the shared prefix once (causal attention in torch; K/V into the paged cache).
    prefix = torch.randint(0, vocab, (prefix_tokens,), generator=g).tolist()
    hits = mgr.allocate("prefix", prefix)
    assert hits == 0
    x, q, kk, vv = project(torch.tensor(prefix, device=device))
    if kv_cache == "fp8":  # calibration: each head's largest |K|, |V| in the prefix, x2 headroom
        scales = {"k_scale": (kk.abs().amax(dim=(0, 2)) * 2 / 448).float().contiguous(),
                  "v_scale": (vv.abs().amax(dim=(0, 2)) * 2 / 448).float().contiguous()}
    k.reshape_and_cache(kk, vv, kc, vc,
                        torch.tensor(mgr.slots("prefix", 0), dtype=torch.int64, device=device),
                        *scales.values())
    group = q_heads // kv_heads
    attn = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), kk.repeat_interleave(group, 1).transpose(0, 1),
        vv.repeat_interleave(group, 1).transpose(0, 1), is_causal=True, scale=scale,
    ).transpose(0, 1)
    prefix_logits = logits_of(x[-1:], attn[-1:])[0]

    # 2. Fork the branches, drop the parent; each branch samples its own first token.
    names = [f"branch{i}" for i in range(branches)]
    for name in names:
        mgr.fork("prefix", name)
    mgr.free("prefix")
    gens = [torch.Generator().manual_seed(seed * 1000 + i + 1) for i in range(branches)]

    def sample(logits):
        probs = torch.softmax(logits.float().cpu(), -1)
        return [int(torch.multinomial(probs[i], 1, generator=gens[i])) for i in range(len(gens))]

    next_tokens = sample(prefix_logits.expand(branches, -1))
    copies_total = 0
    for _ in range(decode_tokens):
        copies = []
        for name, t in zip(names, next_tokens):
            copies += mgr.append(name, [t])
        if copies:  # copy-on-write: before the new K/V land in the copied blocks
            copies_total += len(copies)
            k.copy_blocks([kc], [vc], torch.tensor(copies, dtype=torch.int64, device=device))
        x, q, kk, vv = project(torch.tensor(next_tokens, device=device))
        write(names, [mgr.seq_len(n) - 1 for n in names], kk, vv)
        next_tokens = sample(logits_of(x, attend(names, q)))

    # 3. A late joiner with the same prefix: full blocks come from the prefix cache; only the
    #    tail is computed, token by token through the decode kernel.
    hit_tokens = mgr.allocate("late", prefix)
    late_logits = None
    for p in range(hit_tokens, prefix_tokens):
        x, q, kk, vv = project(torch.tensor([prefix[p]], device=device))
        write(["late"], [p], kk, vv)
        bt = torch.tensor(mgr.block_tables(["late"]), dtype=torch.int32, device=device)
        sl = torch.tensor([p + 1], dtype=torch.int32, device=device)
        late_logits = logits_of(x, k.decode(q, kc, vc, bt, sl, scale, **scales))[0]
    prefix_check = (float((late_logits - prefix_logits).abs().max())
                    if late_logits is not None else 0.0)

    stats = mgr.stats()
    mgr.check()
    for name in names + ["late"]:
        mgr.free(name)
    mgr.check()
    leaked = mgr.num_in_use
    return {
        "path": path_name,
        "reason": reason,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "kv_cache_dtype": str(cache_dtype).replace("torch.", ""),
        "branches": branches,
        "prefix_tokens": prefix_tokens,
        "block_size": block_size,
        "blocks_used": stats["in_use"],
        "blocks_without_sharing": stats["blocks_without_sharing"],
        "blocks_saved": stats["blocks_saved"],
        "bytes_per_block": bytes_per_block,
        "bytes_saved": stats["bytes_saved"],
        "prefix_hit_blocks": stats["prefix_hit_blocks"],
        "prefix_hit_tokens": hit_tokens,
        "cow_copies": copies_total,
        "kv_block_seconds": meter.block_seconds(),
        "peak_blocks": meter.peak,
        "tokens_decoded": branches * decode_tokens,
        "prefix_check_max_err": prefix_check,
        "kernel_vs_reference_max_err": max_ref_err,
        "leaked_blocks": leaked,
        "seconds": time.perf_counter() - t0,
    }


if __name__ == "__main__":  # python -m slurmgov.context.shared_prefix_demo
    import json

    json.dump(run({}), sys.stdout, indent=2)
    print()
