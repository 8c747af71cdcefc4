"""Triton kernels for a paged KV cache, each with a plain PyTorch reference.

Layout: K and V caches ``[num_blocks, block_size, kv_heads, head_dim]`` (token-major),
int32 block tables ``[num_seqs, max_blocks]``, int32 ``seq_lens``, int64 slot mappings. Caches
may be fp8 (``torch.float8_e4m3fn``) with per-tensor or per-KV-head fp32 scales. Every entry
point checks its arguments and raises ``ValueError`` naming the one that is wrong; metadata
may be a non-contiguous view.

* ``reshape_and_cache``      write new tokens' K/V through a slot mapping
* ``paged_attention``        mixed prefill/decode batches: causal, GQA, split-KV, sliding
                             window, soft cap, ALiBi, fp8 cache, natural-log LSE out
* ``paged_decode_attention`` GQA decode attention, single pass or split-KV + LSE merge
* ``merge_attention_states`` cascade merge of two attentions by their LSEs (and
  ``merge_attention_partitions`` for any number)
* ``copy_blocks``            copy-on-write block copies, all layers in one launch
* ``gather_kv``              paged cache -> contiguous tensors (swap-out)

The ``reference_*`` functions need only torch. The kernels need triton; without a GPU set
``TRITON_INTERPRET=1`` *before* importing this package (``@triton.jit`` reads it when the
kernels are defined). ``HAVE_TRITON`` says whether the kernels could be imported.
"""

from .reference import (
    reference_copy_blocks,
    reference_dequantize_fp8,
    reference_gather_kv,
    reference_merge_attention_states,
    reference_paged_attention,
    reference_paged_decode,
    reference_quantize_fp8,
    reference_reshape_and_cache,
)

try:
    from .copy_blocks import copy_blocks
    from .gather_kv import gather_kv
    from .merge_attention import merge_attention_partitions, merge_attention_states
    from .paged_attention import paged_attention
    from .paged_decode import paged_decode_attention
    from .reshape_and_cache import reshape_and_cache

    HAVE_TRITON = True
except ImportError:  # triton not installed: only the references are available
    HAVE_TRITON = False

__all__ = [
    "HAVE_TRITON",
    "copy_blocks",
    "gather_kv",
    "merge_attention_partitions",
    "merge_attention_states",
    "paged_attention",
    "paged_decode_attention",
    "reshape_and_cache",
    "reference_copy_blocks",
    "reference_dequantize_fp8",
    "reference_gather_kv",
    "reference_merge_attention_states",
    "reference_paged_attention",
    "reference_paged_decode",
    "reference_quantize_fp8",
    "reference_reshape_and_cache",
]
