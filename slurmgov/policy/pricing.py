"""Prices in weighted GPU-hours: GPUs x time x the GPU type's weight."""

from __future__ import annotations


def gpu_hours(gpus: int, seconds: float, weight: float = 1.0) -> float:
    return gpus * seconds * weight / 3600.0


def split(total: float, weights: list[float]) -> list[float]:
    """Split ``total`` in proportion to ``weights``; the parts add up to ``total`` exactly."""
    if not weights:
        return []
    s = sum(weights)
    if s <= 0:
        parts = [total / len(weights)] * len(weights)
    else:
        parts = [total * w / s for w in weights]
    parts[-1] = total - sum(parts[:-1])
    return parts
