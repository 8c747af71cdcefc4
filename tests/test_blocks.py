"""KV block manager: sharing, copy-on-write, LRU eviction, exact accounting (pure Python)."""

import math
import random
import subprocess
import sys

import pytest

from slurmgov.context.blocks import BlockManager, BlockMeter, OutOfBlocks, block_hash

BS = 4  # block size in tokens: small, so a few tokens cover several blocks


def toks(n, start=0):
    return list(range(start, start + n))


def test_allocate_counts_and_slots():
    m = BlockManager(8, BS, bytes_per_block=100)
    assert m.allocate("a", toks(10)) == 0
    table = m.block_table("a")
    assert len(table) == 3 and len(set(table)) == 3
    assert m.slots("a", 0, 10) == [table[p // BS] * BS + p % BS for p in range(10)]
    assert m.slots("a", 8) == [table[2] * BS, table[2] * BS + 1]
    assert (m.num_in_use, m.num_cached, m.num_free) == (3, 0, 5)
    assert m.bytes_in_use == 300
    with pytest.raises(IndexError):
        m.slots("a", 0, 11)
    with pytest.raises(ValueError):
        m.allocate("a", toks(1))
    m.check()


def test_prefix_sharing_by_content_hash():
    m = BlockManager(16, BS, bytes_per_block=64)
    m.allocate("a", toks(10))  # 2 full blocks + 2 tokens
    hits = m.allocate("b", toks(8) + [99, 98, 97])  # same first 2 blocks
    assert hits == 8
    a, b = m.block_table("a"), m.block_table("b")
    assert a[:2] == b[:2] and a[2] != b[2]
    assert [m.ref_count(x) for x in a] == [2, 2, 1]
    assert m.num_in_use == 4 and m.blocks_without_sharing == 6 and m.blocks_saved == 2
    assert m.stats()["bytes_saved"] == 2 * 64
    assert m.prefix_hit_blocks == 2
    # Partial blocks are never shared by hash.
    assert m.allocate("c", toks(6)) == 4
    assert m.block_table("c")[1] not in a + b
    assert m.block_table("c")[0] == a[0]
    m.check()


def test_hash_chains_parent():
    # The same block of tokens after a different prefix is a different block.
    assert block_hash(None, [1, 2]) != block_hash(block_hash(None, [0, 0]), [1, 2])
    m = BlockManager(16, BS)
    m.allocate("a", [7, 7, 7, 7] + [1, 2, 3, 4])
    assert m.allocate("b", [8, 8, 8, 8] + [1, 2, 3, 4]) == 0
    assert set(m.block_table("a")).isdisjoint(m.block_table("b"))


def test_blocks_filled_by_append_are_shared_by_whole_prefix():
    m = BlockManager(16, BS)
    m.allocate("a", [1, 2, 3, 4])
    m.append("a", [9, 9, 9, 9, 5])
    assert m.allocate("b", [9, 9, 9, 9]) == 0  # same tokens, different prefix
    assert m.allocate("c", [1, 2, 3, 4, 9, 9, 9, 9, 7]) == 8
    assert m.block_table("c")[:2] == m.block_table("a")[:2]
    m.check()


def test_hit_requires_whole_prefix():
    # Build a cached child block whose parent block was evicted, then ask for that prefix:
    # nothing may hit (a hit on the child alone would put it at the wrong position).
    m = BlockManager(4, BS)
    m.allocate("x", [1, 2, 3, 4])  # P, registered
    m.allocate("y", [1, 2])
    m.append("y", [3, 4, 5, 6, 7, 8])  # y's copy of P is a private duplicate; C registered
    child = m.block_table("y")[1]
    m.free("x")
    m.free("y")
    assert m.cached_blocks_lru() == [m.cached_blocks_lru()[0], child]
    m.allocate("w", toks(12, 100))  # takes the spare and the duplicate, evicts P
    assert m.cached_blocks_lru() == [child]
    m.free("w")
    assert m.allocate("z", [1, 2, 3, 4, 5, 6, 7, 8]) == 0
    assert m.prefix_hit_blocks == 0
    m.check()


def test_prefix_caching_off():
    m = BlockManager(16, BS, enable_prefix_caching=False)
    m.allocate("a", toks(8))
    assert m.allocate("b", toks(8)) == 0
    m.free("a")
    assert m.num_cached == 0 and m.num_free == 14


def test_fork_shares_then_copy_on_write():
    m = BlockManager(16, BS)
    m.allocate("p", toks(6))  # last block holds 2 of 4 tokens
    m.fork("p", "c")
    assert m.block_table("p") == m.block_table("c")
    assert m.num_in_use == 2 and m.blocks_saved == 2
    shared_last = m.block_table("p")[1]
    copies = m.append("c", [50])
    assert len(copies) == 1 and copies[0][0] == shared_last
    new_last = copies[0][1]
    assert m.block_table("c") == [m.block_table("p")[0], new_last]
    assert m.ref_count(shared_last) == 1 and m.ref_count(new_last) == 1
    assert m.cow_copies == 1
    # The parent is now the only holder: it writes in place.
    assert m.append("p", [60]) == []
    assert m.block_table("p")[1] == shared_last
    assert m.token_ids("c") == toks(6) + [50] and m.token_ids("p") == toks(6) + [60]
    m.check()


def test_fork_at_block_boundary_needs_no_copy():
    m = BlockManager(16, BS)
    m.allocate("p", toks(8))
    m.fork("p", "c")
    assert m.append("c", [1, 2, 3, 4, 5]) == []
    assert m.block_table("c")[:2] == m.block_table("p")
    assert len(m.block_table("c")) == 4 and m.num_in_use == 4
    m.check()


def test_lru_eviction_order():
    m = BlockManager(4, BS)
    m.allocate("a", toks(8, 0))
    m.allocate("b", toks(8, 100))
    a, b = m.block_table("a"), m.block_table("b")
    m.free("a")
    m.free("b")
    # Released tail first, a before b: next to evict is a's tail, then a's head, ...
    assert m.cached_blocks_lru() == [a[1], a[0], b[1], b[0]]
    assert (m.num_in_use, m.num_cached, m.num_free) == (0, 4, 0)
    m.allocate("c", toks(3, 500))  # one new block: evicts a's tail
    assert m.block_table("c") == [a[1]] and m.evictions == 1
    # a's head is still cached: a prefix hit revives it; its second block is gone.
    assert m.allocate("a2", toks(8, 0)) == 4
    assert m.block_table("a2")[0] == a[0]
    assert m.block_table("a2")[1] == b[1]  # the next LRU victim
    assert m.cached_blocks_lru() == [b[0]]
    # b lost its tail, so only its head hits.
    m.free("c")
    assert m.allocate("b2", toks(8, 100)) == 4
    m.check()


def test_hit_moves_block_out_of_lru_and_release_refreshes_it():
    m = BlockManager(3, BS)
    m.allocate("a", toks(4, 0))
    m.allocate("b", toks(4, 10))
    a, b = m.block_table("a")[0], m.block_table("b")[0]
    m.free("a")
    m.free("b")
    assert m.cached_blocks_lru() == [a, b]
    m.allocate("a2", toks(4, 0))  # hit on a
    assert m.cached_blocks_lru() == [b] and m.ref_count(a) == 1
    m.free("a2")
    assert m.cached_blocks_lru() == [b, a]  # a is now the most recent


def test_out_of_blocks_changes_nothing():
    m = BlockManager(4, BS)
    m.allocate("a", toks(6))
    m.fork("a", "b")
    before = (m.stats(), m.block_table("a"), m.block_table("b"))
    with pytest.raises(OutOfBlocks):
        m.allocate("c", toks(9, 100))  # needs 3, 2 available
    with pytest.raises(OutOfBlocks):
        m.append("b", toks(7, 200))  # copy-on-write + 2 more blocks = 3 > 2
    assert (m.stats(), m.block_table("a"), m.block_table("b")) == before
    assert "c" not in m.sequences()
    assert m.append("b", toks(6, 200)) != []  # 1 copy + 1 block = 2: fits exactly
    assert m.num_available == 0
    m.check()


def test_double_free_raises_and_refcounts_never_negative():
    m = BlockManager(4, BS)
    m.allocate("a", toks(5))
    table = m.block_table("a")
    m.free("a")
    with pytest.raises(KeyError, match="already freed"):
        m.free("a")
    with pytest.raises(AssertionError, match="negative"):
        m._release(table[0])
    assert all(m.ref_count(b) == 0 for b in range(4))
    m.check()


def test_no_leak_after_freeing_everything():
    m = BlockManager(32, BS, bytes_per_block=10)
    m.allocate("root", toks(10))
    for i in range(5):
        m.fork("root", f"f{i}")
        m.append(f"f{i}", toks(i + 3, 1000 * i))
    m.allocate("x", toks(13))
    for s in m.sequences():
        m.free(s)
    assert m.sequences() == [] and m.num_in_use == 0 and m.bytes_in_use == 0
    assert m.num_cached + m.num_free == 32
    assert all(m.ref_count(b) == 0 for b in range(32))
    m.check()


def test_block_tables_padding():
    m = BlockManager(8, BS)
    m.allocate("a", toks(9))
    m.allocate("b", toks(2, 50))
    tables = m.block_tables(["a", "b"], pad=0)
    assert tables[0] == m.block_table("a") and tables[1] == m.block_table("b") + [0, 0]


def test_block_meter_integrates_with_fake_clock():
    now = [100.0]
    meter = BlockMeter(clock=lambda: now[0])
    m = BlockManager(16, BS, meter=meter)
    m.allocate("a", toks(8))  # 2 blocks from t=100
    now[0] = 103.0
    m.allocate("b", toks(4, 50))  # 3 blocks from t=103
    now[0] = 104.5
    m.free("a")  # a's 2 blocks become cached, not in use: 1 block from t=104.5
    now[0] = 110.0
    assert meter.block_seconds() == pytest.approx(2 * 3 + 3 * 1.5 + 1 * 5.5)
    assert meter.peak == 3 and meter.level == 1
    assert meter.byte_seconds(10) == pytest.approx(160.0)
    now[0] = 104.0  # before the last update
    with pytest.raises(ValueError):
        meter.update(0)


def _model_check(seed, num_blocks=24, steps=600):
    """Random operations against a simple model of what every sequence must read back.

    The model keeps each sequence's tokens and a fake "cache memory" (slot -> token) written
    exactly as an engine would: copy-on-write pairs first, then the new tokens at their
    slots; tokens served from the prefix cache are NOT written, so a wrong hit shows up.
    """
    rng = random.Random(seed)
    m = BlockManager(num_blocks, BS, bytes_per_block=7)
    memory: dict[int, int] = {}
    model: dict[str, list[int]] = {}
    # A few shared prompt stems make prefix hits and evictions frequent.
    stems = [[rng.randrange(50) for _ in range(rng.choice([4, 8, 10]))] for _ in range(4)]
    counter = 0
    ops = {"allocate": 0, "append": 0, "fork": 0, "free": 0, "oob": 0, "hits": 0, "cow": 0}

    def copy_block(src, dst):
        for o in range(BS):
            if src * BS + o in memory:
                memory[dst * BS + o] = memory[src * BS + o]
            else:
                memory.pop(dst * BS + o, None)

    for _ in range(steps):
        op = rng.choices(["allocate", "append", "fork", "free"], [3, 5, 2, 3])[0]
        in_use_before = m.num_in_use
        if op == "allocate" or not model:
            counter += 1
            sid = f"s{counter}"
            tokens = rng.choice(stems) + [rng.randrange(50) for _ in range(rng.randrange(0, 7))]
            try:
                hits = m.allocate(sid, tokens)
            except OutOfBlocks:
                # Only when even a cache hit on every block could not have avoided it... and
                # at least the non-hit blocks did not fit: never with room for all blocks.
                assert num_blocks - in_use_before < math.ceil(len(tokens) / BS)
                ops["oob"] += 1
                continue
            assert hits % BS == 0 and 0 <= hits <= len(tokens)
            ops["hits"] += hits // BS
            for p, slot in enumerate(m.slots(sid, hits), start=hits):
                memory[slot] = tokens[p]
            model[sid] = list(tokens)
            ops["allocate"] += 1
        elif op == "append":
            sid = rng.choice(sorted(model))
            new = [rng.randrange(50) for _ in range(rng.randrange(1, 7))]
            old = len(model[sid])
            last = m.block_table(sid)[-1] if m.block_table(sid) else None
            cow = old % BS != 0 and m.ref_count(last) > 1
            need = math.ceil((old + len(new)) / BS) - math.ceil(old / BS) + int(cow)
            try:
                copies = m.append(sid, new)
            except OutOfBlocks:
                assert need > num_blocks - in_use_before
                ops["oob"] += 1
                continue
            assert need <= num_blocks - in_use_before
            assert len(copies) == int(cow)
            ops["cow"] += len(copies)
            for src, dst in copies:
                copy_block(src, dst)
            for p, slot in enumerate(m.slots(sid, old), start=old):
                memory[slot] = new[p - old]
            model[sid] += new
            ops["append"] += 1
        elif op == "fork":
            parent = rng.choice(sorted(model))
            counter += 1
            m.fork(parent, f"s{counter}")
            model[f"s{counter}"] = list(model[parent])
            ops["fork"] += 1
        else:
            sid = rng.choice(sorted(model))
            m.free(sid)
            del model[sid]
            ops["free"] += 1

        m.check()
        assert sorted(m.sequences()) == sorted(model)
        held = set()
        for sid, tokens in model.items():
            assert m.seq_len(sid) == len(tokens) and m.token_ids(sid) == tokens
            assert [memory.get(s) for s in m.slots(sid, 0)] == tokens, f"{sid} reads wrong KV"
            held.update(m.block_table(sid))
        assert m.num_in_use == len(held)
        assert m.blocks_without_sharing == sum(math.ceil(len(t) / BS) for t in model.values())
        assert m.num_in_use + m.num_cached + m.num_free == num_blocks
        assert m.bytes_in_use == 7 * len(held)

    for sid in list(model):
        m.free(sid)
    m.check()
    assert m.num_in_use == 0 and m.num_cached + m.num_free == num_blocks
    return ops


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_randomized_against_model(seed):
    ops = _model_check(seed)
    # The run must actually exercise every path, or it proves little.
    assert all(ops[k] > 0 for k in ops), ops


def test_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['triton'] = None\n"
            "import slurmgov.context.blocks, slurmgov.context.shared_prefix_demo\n")
    subprocess.run([sys.executable, "-c", code], check=True)
