"""Tokens as a metered consequence: what a step reports it used, read from its output.

A step reports ``usage: {prompt_tokens: N, completion_tokens: M}`` in its output (a callable's
returned mapping, or a shell step's printed JSON). Tokens are metered, not priced: the charge is
GPU time either way, so a report that is missing or malformed records no tokens and changes no
amount. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

MAX_TOKENS = 2**63 - 1  # what the ledger's BIGINT columns hold (GPU-s per 1,000: ledger.store.per_1k_tokens)
FIELDS = ("prompt_tokens", "completion_tokens")


def reported(output: Any) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from a step's output; None for each one not reported
    as a whole number from 0 to MAX_TOKENS (a bool, a float, a string or a negative is not)."""
    usage = output.get("usage") if isinstance(output, dict) else None
    if not isinstance(usage, dict):
        return None, None
    got = []
    for name in FIELDS:
        v = usage.get(name)
        ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_TOKENS
        got.append(v if ok else None)
    return got[0], got[1]


def total(prompt: int | None, completion: int | None) -> int | None:
    return None if prompt is None and completion is None else (prompt or 0) + (completion or 0)

