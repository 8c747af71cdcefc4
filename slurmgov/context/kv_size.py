"""KV-cache sizing: from a model's shape and its context, the bytes a step must hold on GPUs.

Pure arithmetic (no torch), so the planner can size context before anything runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}

# Shapes of well-known open models (layers, kv heads, head dim, params in billions),
# so a jobspec may say `model: llama-3-8b` instead of spelling the shape out.
PRESETS: dict[str, dict[str, Any]] = {  # KVShape's keyword arguments
    "llama-3-8b": dict(layers=32, kv_heads=8, head_dim=128, params_b=8.0),
    "llama-3-70b": dict(layers=80, kv_heads=8, head_dim=128, params_b=70.6),
    "llama-3-405b": dict(layers=126, kv_heads=8, head_dim=128, params_b=405.0),
    "mistral-7b": dict(layers=32, kv_heads=8, head_dim=128, params_b=7.2),
    "qwen2-72b": dict(layers=80, kv_heads=8, head_dim=128, params_b=72.7),
    "tiny-test": dict(layers=1, kv_heads=2, head_dim=16, params_b=0.0),
}

# Share of a GPU's memory usable for weights + KV (the rest: activations, CUDA context).
USABLE_FRACTION = 0.9
GIB = 1024**3


@dataclass(frozen=True)
class KVShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "bf16"
    params_b: float = 0.0  # model weights, billions of parameters (0: not counted)
    weight_dtype: str = "bf16"

    @property
    def bytes_per_token(self) -> int:
        # K and V, every layer, every KV head.
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[self.dtype]

    @property
    def weight_bytes(self) -> int:
        return int(self.params_b * 1e9 * DTYPE_BYTES[self.weight_dtype])

    def block_bytes(self, block_size: int) -> int:
        return self.bytes_per_token * block_size

    @property
    def scale_bytes(self) -> int:
        """An fp8 cache's dequantization scales: fp32 K and V scales per KV head and layer,
        one set for the whole cache (triton_kernels' per-head ``k_scale``/``v_scale``)."""
        return 2 * self.layers * self.kv_heads * 4 if self.dtype == "fp8" else 0

    def with_dtype(self, dtype: str) -> KVShape:
        """The same model with its KV cache stored in ``dtype`` (weights unchanged)."""
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown KV dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})")
        return replace(self, dtype=dtype)


@dataclass(frozen=True)
class KVNeed:
    """What a step's context needs, and whether the GPUs it asked for hold it."""

    kv_bytes: int
    weight_bytes: int
    gpus_asked: int
    gpu_bytes: int  # memory of one GPU of the step's type
    gpus_needed: int

    @property
    def total_bytes(self) -> int:
        return self.kv_bytes + self.weight_bytes

    @property
    def fits(self) -> bool:
        return self.gpus_needed <= self.gpus_asked


def size_context(shape: KVShape, tokens: int, sequences: int, block_size: int = 16) -> int:
    """KV bytes for ``sequences`` sequences of ``tokens`` tokens, rounded up to whole blocks
    (at the cache dtype's real size: 1 byte an element for fp8, plus its scales)."""
    blocks_per_seq = math.ceil(tokens / block_size)
    return sequences * blocks_per_seq * shape.block_bytes(block_size) + shape.scale_bytes


def need_fp8_if_needed(shape: KVShape, tokens: int, sequences: int, gpus_asked: int,
                       gpu_memory_gb: float) -> tuple[KVNeed, KVNeed | None]:
    """``need`` for the model's KV dtype and, when that does not fit the GPUs asked and the
    dtype is wider than a byte, for an fp8 cache too: ``(need, fp8 need or None)``."""
    first = need(shape, tokens, sequences, gpus_asked, gpu_memory_gb)
    if first.fits or DTYPE_BYTES[shape.dtype] <= 1:
        return first, None
    return first, need(shape.with_dtype("fp8"), tokens, sequences, gpus_asked, gpu_memory_gb)


def need(shape: KVShape, tokens: int, sequences: int, gpus_asked: int, gpu_memory_gb: float) -> KVNeed:
    kv = size_context(shape, tokens, sequences)
    gpu_bytes = int(gpu_memory_gb * GIB)
    usable = gpu_bytes * USABLE_FRACTION
    needed = max(1, math.ceil((kv + shape.weight_bytes) / usable)) if usable > 0 else 10**9
    return KVNeed(kv, shape.weight_bytes, gpus_asked, gpu_bytes, needed)
