"""A paged KV-cache block manager: block tables, reference counts, prefix caching, copy-on-write.

Pure Python (no torch), so the governance side can size and account for KV memory without the
kernels extra. The manager only decides *which* physical block holds which tokens; it returns
block tables, slot numbers and ``(src, dst)`` copy pairs as plain lists, and the caller runs
the kernels (``triton_kernels.copy_blocks``, ``reshape_and_cache``) on them.

Model:

* A fixed pool of ``num_blocks`` blocks of ``block_size`` token slots. Every block is in
  exactly one state: *in use* (reference count > 0), *cached* (count 0, holds a full block
  whose content hash is registered, evictable) or *free* (count 0, nothing worth keeping).
* Each sequence has a block table (logical block i -> physical block). Token ``pos`` lives
  in slot ``table[pos // block_size] * block_size + pos % block_size``.
* Prefix caching: a full block's identity is ``block_hash(parent_hash, token_ids)``, so
  equal hashes mean equal whole prefixes. ``allocate`` reuses registered blocks for the
  longest cached prefix of full blocks (a hit on a cached block revives it).
* ``fork`` shares all of a parent's blocks with a child (counts + 1). Writing into a shared,
  partially filled last block copies it first (copy-on-write): the manager allocates a new
  block and returns the ``(src, dst)`` pair, which the caller must copy *before* writing the
  new tokens' K/V. Full blocks are never written again, so they are never copied.
* Cached blocks are evicted least recently released first when the free list is empty. A
  sequence's blocks are released tail first, so its deeper (less shareable) blocks go first.

Not thread-safe; one engine step drives it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field


class OutOfBlocks(Exception):
    """The pool has too few free or evictable blocks for the request; nothing was changed."""


def block_hash(parent_hash: str | None, token_ids: Sequence[int]) -> str:
    """Content hash of one full block: sha256 over the parent's hash and the block's tokens.

    Chaining the parent makes the hash identify the whole prefix up to this block, not just
    the block's own tokens.
    """
    h = hashlib.sha256()
    h.update((parent_hash or "root").encode())
    h.update(b"|")
    h.update(",".join(str(int(t)) for t in token_ids).encode())
    return h.hexdigest()


class BlockMeter:
    """Integrates blocks-in-use over time into block-seconds (piecewise constant).

    Call ``update(n)`` whenever the level changes (a ``BlockManager`` given this meter does
    it itself); ``block_seconds()`` is the integral up to now. ``clock`` is injectable so
    tests can drive time by hand.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, level: int = 0):
        self._clock = clock
        self._level = level
        self._since = clock()
        self._acc = 0.0
        self.peak = level

    @property
    def level(self) -> int:
        return self._level

    def update(self, blocks_in_use: int) -> None:
        now = self._clock()
        if now < self._since:
            raise ValueError("BlockMeter clock went backwards")
        self._acc += self._level * (now - self._since)
        self._since = now
        self._level = blocks_in_use
        self.peak = max(self.peak, blocks_in_use)

    def block_seconds(self) -> float:
        """Block-seconds accumulated so far, including the current level up to now."""
        return self._acc + self._level * max(0.0, self._clock() - self._since)

    def byte_seconds(self, bytes_per_block: int) -> float:
        return self.block_seconds() * bytes_per_block


@dataclass
class _Seq:
    table: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)  # hash of each full logical block


class BlockManager:
    """Allocates KV blocks to sequences; see the module docstring for the model.

    Args:
        num_blocks: size of the physical pool.
        block_size: token slots per block.
        bytes_per_block: bytes of one block across all layers, K and V (for accounting).
        enable_prefix_caching: register full blocks by content hash and reuse them.
        meter: a ``BlockMeter`` told the number of blocks in use after every change.
    """

    def __init__(self, num_blocks: int, block_size: int, bytes_per_block: int = 0,
                 enable_prefix_caching: bool = True, meter: BlockMeter | None = None):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.bytes_per_block = bytes_per_block
        self.enable_prefix_caching = enable_prefix_caching
        self.meter = meter
        self._ref = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._cached: OrderedDict[int, None] = OrderedDict()  # LRU first
        self._hash_to_block: dict[str, int] = {}
        self._block_to_hash: dict[int, str] = {}
        self._seqs: dict[Hashable, _Seq] = {}
        self._in_use = 0
        # Counters since construction.
        self.prefix_hit_blocks = 0
        self.cow_copies = 0
        self.evictions = 0

    # ---------------------------------------------------------------- sequences
    def allocate(self, seq_id: Hashable, token_ids: Sequence[int]) -> int:
        """Create sequence ``seq_id`` holding ``token_ids``; return how many leading tokens
        are already in the cache (prefix hits, a multiple of ``block_size``).

        The caller computes K/V only for ``token_ids[hits:]`` and writes them to
        ``slots(seq_id, hits, len(token_ids))``. Raises ``OutOfBlocks`` (changing nothing)
        when the pool cannot hold the sequence.
        """
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} already exists")
        tokens = [int(t) for t in token_ids]
        bs = self.block_size
        n_full = len(tokens) // bs
        n_blocks = -(-len(tokens) // bs)
        hashes: list[str] = []
        parent = None
        for i in range(n_full):
            parent = block_hash(parent, tokens[i * bs:(i + 1) * bs])
            hashes.append(parent)
        hits: list[int] = []
        if self.enable_prefix_caching:
            for h in hashes:
                b = self._hash_to_block.get(h)
                if b is None:
                    break
                hits.append(b)
        revived = sum(1 for b in hits if self._ref[b] == 0)
        need = n_blocks - len(hits)
        if need > len(self._free) + len(self._cached) - revived:
            raise OutOfBlocks(
                f"sequence {seq_id!r} needs {need} new blocks of {bs} tokens; "
                f"{len(self._free)} free and {len(self._cached) - revived} evictable")
        table = []
        for b in hits:
            self._acquire(b)
            table.append(b)
        self.prefix_hit_blocks += len(hits)
        for i in range(len(hits), n_blocks):
            b = self._new_block()
            table.append(b)
            if i < n_full:
                self._register(b, hashes[i])
        self._seqs[seq_id] = _Seq(table=table, tokens=tokens, hashes=hashes)
        self._tick()
        return len(hits) * bs

    def append(self, seq_id: Hashable, token_ids: Sequence[int]) -> list[tuple[int, int]]:
        """Append tokens to a sequence; return the copy-on-write pairs ``[(src, dst), ...]``.

        New slots are ``slots(seq_id, old_len, new_len)``. Any returned pair must be copied
        (all layers, K and V) before the new tokens' K/V are written. Raises ``OutOfBlocks``
        (changing nothing) when the pool cannot hold the new tokens.
        """
        seq = self._get(seq_id)
        new = [int(t) for t in token_ids]
        if not new:
            return []
        bs = self.block_size
        old_len = len(seq.tokens)
        need = -(-(old_len + len(new)) // bs) - len(seq.table)
        cow = old_len % bs != 0 and self._ref[seq.table[-1]] > 1
        need += int(cow)
        if need > len(self._free) + len(self._cached):
            raise OutOfBlocks(
                f"sequence {seq_id!r} needs {need} new blocks; "
                f"{len(self._free)} free and {len(self._cached)} evictable")
        copies: list[tuple[int, int]] = []
        if cow:
            src = seq.table[-1]
            dst = self._new_block()
            self._release(src)  # still held by the other sharers (count was > 1)
            seq.table[-1] = dst
            copies.append((src, dst))
            self.cow_copies += 1
        for t in new:
            if len(seq.tokens) % bs == 0:
                seq.table.append(self._new_block())
            seq.tokens.append(t)
            if len(seq.tokens) % bs == 0:  # the last block just became full: register it
                parent = seq.hashes[-1] if seq.hashes else None
                h = block_hash(parent, seq.tokens[-bs:])
                seq.hashes.append(h)
                self._register(seq.table[-1], h)
        self._tick()
        return copies

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """Make ``child_id`` share every block of ``parent_id`` (no memory is used)."""
        parent = self._get(parent_id)
        if child_id in self._seqs:
            raise ValueError(f"sequence {child_id!r} already exists")
        for b in parent.table:
            self._acquire(b)
        self._seqs[child_id] = _Seq(table=list(parent.table), tokens=list(parent.tokens),
                                    hashes=list(parent.hashes))
        self._tick()

    def free(self, seq_id: Hashable) -> None:
        """Drop a sequence. Blocks no one else holds become cached (if registered) or free."""
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            raise KeyError(f"unknown sequence {seq_id!r} (already freed?)")
        # Tail first: the LRU then evicts a sequence's deepest blocks before its prefix.
        for b in reversed(seq.table):
            self._release(b)
        self._tick()

    # ---------------------------------------------------------------- queries
    def block_table(self, seq_id: Hashable) -> list[int]:
        return list(self._get(seq_id).table)

    def block_tables(self, seq_ids: Iterable[Hashable], pad: int = 0) -> list[list[int]]:
        """Rectangular tables for a batch (padded with ``pad``; kernels never read padding
        because they stop at each sequence's length)."""
        tables = [self.block_table(s) for s in seq_ids]
        width = max((len(t) for t in tables), default=0)
        return [t + [pad] * (width - len(t)) for t in tables]

    def seq_len(self, seq_id: Hashable) -> int:
        return len(self._get(seq_id).tokens)

    def token_ids(self, seq_id: Hashable) -> list[int]:
        return list(self._get(seq_id).tokens)

    def slots(self, seq_id: Hashable, start: int, end: int | None = None) -> list[int]:
        """Cache slots of token positions ``start..end-1`` (the slot mapping for a write)."""
        seq = self._get(seq_id)
        end = len(seq.tokens) if end is None else end
        if not 0 <= start <= end <= len(seq.tokens):
            raise IndexError(f"positions {start}..{end} outside sequence of {len(seq.tokens)}")
        bs = self.block_size
        return [seq.table[p // bs] * bs + p % bs for p in range(start, end)]

    def sequences(self) -> list[Hashable]:
        return list(self._seqs)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def is_cached(self, block: int) -> bool:
        return block in self._cached

    def cached_blocks_lru(self) -> list[int]:
        """Evictable blocks, the next to be evicted first."""
        return list(self._cached)

    # ---------------------------------------------------------------- accounting
    @property
    def num_in_use(self) -> int:
        """Distinct blocks held by at least one sequence."""
        return self._in_use

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_available(self) -> int:
        """Blocks an allocation may take: free plus evictable cached blocks."""
        return len(self._free) + len(self._cached)

    @property
    def blocks_without_sharing(self) -> int:
        """Blocks the live sequences would hold if nothing were shared."""
        return sum(len(s.table) for s in self._seqs.values())

    @property
    def blocks_saved(self) -> int:
        return self.blocks_without_sharing - self._in_use

    @property
    def bytes_in_use(self) -> int:
        return self._in_use * self.bytes_per_block

    @property
    def bytes_cached(self) -> int:
        return len(self._cached) * self.bytes_per_block

    def stats(self) -> dict:
        return {
            "num_blocks": self.num_blocks,
            "block_size": self.block_size,
            "bytes_per_block": self.bytes_per_block,
            "in_use": self._in_use,
            "cached": len(self._cached),
            "free": len(self._free),
            "sequences": len(self._seqs),
            "blocks_without_sharing": self.blocks_without_sharing,
            "blocks_saved": self.blocks_saved,
            "bytes_in_use": self.bytes_in_use,
            "bytes_cached": self.bytes_cached,
            "bytes_saved": self.blocks_saved * self.bytes_per_block,
            "prefix_hit_blocks": self.prefix_hit_blocks,
            "cow_copies": self.cow_copies,
            "evictions": self.evictions,
        }

    def check(self) -> None:
        """Verify every invariant; raise AssertionError naming the first broken one."""
        counts = [0] * self.num_blocks
        for s in self._seqs.values():
            for b in s.table:
                counts[b] += 1
            if len(s.table) != -(-len(s.tokens) // self.block_size):
                raise AssertionError("block table length does not match sequence length")
        if counts != self._ref:
            raise AssertionError("reference counts differ from block-table occurrences")
        in_use = {b for b in range(self.num_blocks) if self._ref[b] > 0}
        cached, free = set(self._cached), set(self._free)
        if len(free) != len(self._free):
            raise AssertionError("a block is on the free list twice")
        if in_use & cached or in_use & free or cached & free:
            raise AssertionError("a block is in two states")
        if len(in_use) + len(cached) + len(free) != self.num_blocks or len(in_use) != self._in_use:
            raise AssertionError("in_use + cached + free != num_blocks")
        if not cached <= set(self._block_to_hash):
            raise AssertionError("a cached block has no registered hash")
        for h, b in self._hash_to_block.items():
            if self._block_to_hash.get(b) != h:
                raise AssertionError("hash maps disagree")
            if b in free:
                raise AssertionError("a free block still has a registered hash")

    # ---------------------------------------------------------------- internals
    def _get(self, seq_id: Hashable) -> _Seq:
        try:
            return self._seqs[seq_id]
        except KeyError:
            raise KeyError(f"unknown sequence {seq_id!r}") from None

    def _new_block(self) -> int:
        if self._free:
            b = self._free.popleft()
        elif self._cached:
            b, _ = self._cached.popitem(last=False)  # least recently released
            del self._hash_to_block[self._block_to_hash.pop(b)]
            self.evictions += 1
        else:  # callers check capacity first, so this means a bookkeeping bug
            raise OutOfBlocks("no free or evictable block")
        self._ref[b] = 1
        self._in_use += 1
        return b

    def _acquire(self, b: int) -> None:
        if self._ref[b] == 0:
            del self._cached[b]  # a prefix hit revives a cached block
            self._in_use += 1
        self._ref[b] += 1

    def _release(self, b: int) -> None:
        if self._ref[b] <= 0:
            raise AssertionError(f"reference count of block {b} would go negative "
                                 f"(released more often than acquired)")
        self._ref[b] -= 1
        if self._ref[b] == 0:
            self._in_use -= 1
            if b in self._block_to_hash:
                self._cached[b] = None  # most recently released: evicted last
            else:
                self._free.append(b)

    def _register(self, b: int, h: str) -> None:
        # Only the first block with a given content is registered; a later duplicate stays
        # private and goes back to the free list when released.
        if (self.enable_prefix_caching and h not in self._hash_to_block
                and b not in self._block_to_hash):
            self._hash_to_block[h] = b
            self._block_to_hash[b] = h

    def _tick(self) -> None:
        if self.meter is not None:
            self.meter.update(self._in_use)


__all__ = ["BlockManager", "BlockMeter", "OutOfBlocks", "block_hash"]
