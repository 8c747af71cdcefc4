"""plugins/job_submit.lua's own functions under Debian's lua5.1, with a stub ``slurm`` table
(tests/lua/hook_driver.lua): no root, no slurmctld.  Every batch of cases is one lua5.1
process.  The hook's prices are compared with tests/data/hook_prices.yaml and with their
Python mirror (slurmgov/slurm/gpu_request.py) on generated requests."""

from __future__ import annotations

import dataclasses
import random
import re
import string

import pytest
from hook_cases import (
    SEP,
    context_fields,
    cpu_price_line,
    expected_cpu_result,
    expected_result,
    line,
    load_cases,
    lua_cpu_result,
    lua_price_result,
    price_line,
    py_cpu_price,
    py_cpu_result,
    py_price_result,
    run_lua,
    subset,
    view_line,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmgov.slurm import snapshot as snapshot_mod
from slurmgov.slurm.gpu_request import (
    INFINITE,
    INFINITE16,
    NO_VAL,
    NO_VAL16,
    UNLIMITED,
    HookPartition,
    HookView,
    PriceParams,
    _Refused,
    hook_array_count,
    hook_gpu_entries,
    hook_price,
    hook_time_limit_min,
    view_from_job_desc,
)

CASES = load_cases()
PROPERTY_CASES = 10_000  # generated job_desc/partitions/snapshot combinations, priced in ONE lua5.1 run


# --------------------------------------------------------------------------- the table
def test_table_prices_in_lua_and_python(lua51):
    rows = run_lua(lua51, [price_line(c.id, c.raw_job_desc, c.params, c.partitions) for c in CASES])
    for case, row in zip(CASES, rows):
        assert row[0] == case.id
        want = expected_result(case)
        lua = lua_price_result(row[1:])
        py = py_price_result(hook_price(view_from_job_desc(case.raw_job_desc), case.params, case.partitions))
        assert subset(lua, want) == want, (case.id, lua)
        assert py == lua, case.id


def test_table_cpu_prices_in_lua_and_python(lua51):
    cases = [c for c in CASES if c.expect_cpu is not None]
    assert len(cases) >= 15
    rows = run_lua(lua51, [cpu_price_line(c.id, c.raw_job_desc, c.params, c.partitions) for c in cases])
    for case, row in zip(cases, rows):
        want = expected_cpu_result(case)
        assert want is not None
        lua = lua_cpu_result(row[1:])
        py = py_cpu_result(py_cpu_price(view_from_job_desc(case.raw_job_desc), case.params, case.partitions))
        assert subset(lua, want) == want, (case.id, lua)
        assert py == lua, case.id


def test_table_views_agree(lua51):
    """desc_view in Lua and view_from_job_desc in Python see the same job."""
    lines = [line([("id", c.id), ("cmd", "desc_view"), *[(f"d.{k}", v) for k, v in c.raw_job_desc.items()]])
             for c in CASES]
    for case, row in zip(CASES, run_lua(lua51, lines)):
        assert row[1] == "ok"
        lua = dict(f.split("=", 1) for f in row[2:])
        view = view_from_job_desc(case.raw_job_desc)
        assert lua == {k: (v if isinstance(v, str) else f"{v:d}") for k, v in vars(view).items() if v is not None}, \
            case.id


# --------------------------------------------------------------- generated requests (property)
TYPES = ["h100", "a100", "l4", "H100", "x.y-z_1"]
COUNTS = ["0", "1", "2", "3", "4", "8", "16", "1k", "2K", "1m", "1g", "3G", "1000000", "007"]
NUMS32 = [None, None, None, NO_VAL, INFINITE, NO_VAL16, INFINITE16, 0, 1, 1, 2, 3, 4, 8, 100, 5000]
NUMS16 = [None, None, None, NO_VAL16, INFINITE16, 0, 1, 2, 3, 4, 16]
TIMES = [None, None, NO_VAL, INFINITE, 0, 1, 5, 30, 59, 60, 61, 1440, 65534, 65535, 100000]
PART_NAMES = ["gpu", "nolimit", "a", "b", "excl"]
PART_TIMES = [None, None, NO_VAL, INFINITE, NO_VAL16, INFINITE16, 0, 1, 30, 90, 240, 1440, 10080]
ARRAYS = [None, None, None, None, None, "", "0-9", "1,3,5", "0-15:4%2", "0-99%10", "7", "0-3,2-5", "1,,2",
          "4999999-5000000", "0-1000:7", "10-20:3%1", "3-3:9", "00-0009", "0-9,5-19:2%4"]
BAD_ARRAYS = ["5-2", "0-9:0", "x", "%3", "0-9%", "0-9%x", "0-5000000", ","]
PARTITIONS = [None, None, "", "gpu", "nolimit", "gpu,nolimit", "nolimit,gpu", "a,b", "a,b,excl", ",gpu", "gpu,,x",
              "missing", "excl"]


def _tres(rng: random.Random) -> str | None:
    if rng.random() < 0.55:
        return None
    items = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        t, n = rng.choice(TYPES), rng.choice(COUNTS)
        if rng.random() < 0.03:  # one the hook cannot read: the request is refused
            bad = rng.choice("xyz")
            items.append(rng.choice([f"gres:gpu:{t}:{n}x", f"gres:gpu:{n}:{t}", f"gres:gpu:{t}:{bad}"]))
            continue
        items.append(rng.choice([
            f"gres:gpu:{n}", f"gres:gpu:{t}:{n}", f"gres:gpu:{t}", "gres:gpu", f"gres/gpu:{t}:{n}",
            f"gres/gpu={n}", f"gres/gpu:{t}={n}",  # Slurm 24.11+'s tres_per_task
            f"gres:mps:{n}", f"gpu:{n}", f"gres:gpu:{t}:{n}:x", f"gres:gpu::{n}", f"gres:GPU:{n}", "",
        ]))
    return ",".join(items)


def _job_desc(rng: random.Random) -> dict:
    d = {f: _tres(rng) for f in ("tres_per_node", "tres_per_job", "tres_per_task", "tres_per_socket")}
    for f in ("min_nodes", "max_nodes", "num_tasks"):
        d[f] = rng.choice(NUMS32)
    for f in ("ntasks_per_node", "sockets_per_node"):
        d[f] = rng.choice(NUMS16)
    d["shared"] = rng.choice([None, None, NO_VAL16, 0, 0, 1, 2, 3])
    d["time_limit"] = rng.choice(TIMES)
    d["partition"] = rng.choice(PARTITIONS)
    d["array_inx"] = rng.choice(BAD_ARRAYS if rng.random() < 0.04 else ARRAYS)
    d["cpus_per_task"] = rng.choice(NUMS16)
    d["pn_min_cpus"] = rng.choice(NUMS16)
    d["min_cpus"] = rng.choice(NUMS32)
    d["cpus_per_tres"] = rng.choice([None, None, None, "gres:gpu:8", "gres/gpu:2", "gres:gpu:4,gres:gpu:16",
                                     "gres:gpu:x", "", "gres:mps:3"])
    return d


def _partitions(rng: random.Random) -> list[HookPartition]:
    names = rng.sample(PART_NAMES, rng.randint(0, len(PART_NAMES)))
    n_default = rng.choice([0, 1, 1, 1, 2])
    return [HookPartition(n, default_time=rng.choice(PART_TIMES), max_time=rng.choice(PART_TIMES),
                          default=i < n_default, max_share=rng.choice([1, 1, 1, 4, 0]))
            for i, n in enumerate(names)]


def _params(rng: random.Random) -> PriceParams:
    weights = {t: rng.choice([0.0, 0.5, 1.0, 2.0, 3.7, 1e-3, 1e6]) for t in rng.sample(TYPES, rng.randint(0, 3))}
    # Distinct GPU counts per partition: the hook breaks a tie between two partitions' whole-node
    # GPUs by pairs() order (see test_exclusive_tie_between_partitions_prices_the_dearest).
    counts = rng.sample([1, 2, 4, 8, 16], 5)
    pg = {n: (counts[i], rng.choice([None, "h100", "a100"])) for i, n in enumerate(PART_NAMES) if rng.random() < 0.3}
    cpu_counts = rng.sample([1, 2, 4, 16, 64, 128], 5)
    pc = {n: (cpu_counts[i], rng.choice([0.0, 0.25, 1.0, 2.0, 1e6])) for i, n in enumerate(PART_NAMES)
          if rng.random() < 0.4}
    return PriceParams(weights=weights, default_weight=rng.choice([0.0, 0.5, 1.0, 2.5]),
                       partition_cpus=pc, default_cpu_weight=rng.choice([0.0, 0.5, 1.0, 3.0]),
                       max_cpus_per_node=rng.choice([None, 0, 8, 96]),
                       default_time_min=rng.choice([1, 30, 45, 60, 600]),
                       max_gpus_per_node=rng.choice([None, 0, 1, 4, 8]), sockets_per_node=rng.choice([1, 1, 2, 4]),
                       partition_gpus=pg)


def _request(rng: random.Random) -> dict | HookView:
    """A job_desc as Slurm hands it (priced through desc_view), or, one time in ten, a view as
    job_modify prices it (rec_view: array tasks already counted)."""
    d = _job_desc(rng)
    if rng.random() < 0.9:
        return d
    return dataclasses.replace(view_from_job_desc(d), tasks_in_array=rng.choice([None, 0, 1, 3, 1000]))


def generated_cases(n: int, seed: int) -> list[tuple[dict | HookView, list[HookPartition], PriceParams]]:
    rng = random.Random(seed)
    return [(_request(rng), _partitions(rng), _params(rng)) for _ in range(n)]


def _as_view(req: dict | HookView) -> HookView:
    return req if isinstance(req, HookView) else view_from_job_desc(req)


def disagreements(lua: str, cases) -> list[tuple]:
    lines = [(view_line if isinstance(req, HookView) else price_line)(str(i), req, params, parts)
             for i, (req, parts, params) in enumerate(cases)]
    bad = []
    for (req, parts, params), row in zip(cases, run_lua(lua, lines)):
        got = lua_price_result(row[1:])
        want = py_price_result(hook_price(_as_view(req), params, parts))
        if got != want:
            bad.append((req, parts, params, got, want))
    return bad


def cpu_disagreements(lua: str, cases) -> list[tuple]:
    lines = [cpu_price_line(str(i), req, params, parts) for i, (req, parts, params) in enumerate(cases)]
    bad = []
    for (req, parts, params), row in zip(cases, run_lua(lua, lines)):
        got = lua_cpu_result(row[1:])
        want = py_cpu_result(py_cpu_price(_as_view(req), params, parts))
        if got != want:
            bad.append((req, parts, params, got, want))
    return bad


def test_lua_and_python_agree_on_cpu_prices_of_10000_generated_requests(lua51):
    cases = generated_cases(PROPERTY_CASES, seed=20261201)
    kinds = [py_cpu_result(py_cpu_price(_as_view(req), params, parts)) for req, parts, params in cases]
    # every outcome is reached: priced (whole nodes, several CPUs, pinned or not) and each refusal
    assert {k.get("reason") for k in kinds if k["status"] == "no"} == {"bad_request", "bad_time"}
    assert sum(k["status"] == "ok" and k["cpus"] > 1 for k in kinds) > PROPERTY_CASES // 4
    assert any(k.get("pin_time") for k in kinds) and any(k.get("pin_nodes") for k in kinds)
    bad = cpu_disagreements(lua51, cases)
    assert not bad, f"{len(bad)} of {PROPERTY_CASES} disagree; first: {bad[0]}"


def test_lua_and_python_agree_on_10000_generated_requests(lua51):
    cases = generated_cases(PROPERTY_CASES, seed=20240522)
    kinds = [py_price_result(hook_price(_as_view(req), params, parts)) for req, parts, params in cases]
    # The generator reaches every outcome: free, priced (pinned or not), and each refusal.
    assert sum(k["status"] == "ok" and k["any_gpu"] for k in kinds) > PROPERTY_CASES // 4
    assert sum(k["status"] == "ok" and not k["any_gpu"] for k in kinds) > 100
    assert {k.get("reason") for k in kinds if k["status"] == "no"} == {"bad_request", "bad_time"}
    assert any(k.get("pin_time") for k in kinds) and any(k.get("pin_nodes") for k in kinds)
    bad = disagreements(lua51, cases)
    assert not bad, f"{len(bad)} of {PROPERTY_CASES} disagree; first: {bad[0]}"


_small_desc = st.fixed_dictionaries({
    "tres_per_node": st.one_of(st.none(),
                               st.sampled_from(["gres:gpu:1", "gres:gpu:h100:2", "gres:gpu", "gres:gpu:x:y"])),
    "tres_per_job": st.one_of(st.none(), st.sampled_from(["gres:gpu:3", "gres:gpu:a100:1k", "gres:gpu:h100"])),
    "tres_per_task": st.one_of(st.none(), st.sampled_from(["gres:gpu:1", "gres:gpu:l4:2"])),
    "tres_per_socket": st.one_of(st.none(), st.sampled_from(["gres:gpu:1", "gres:gpu:h100:2"])),
    "min_nodes": st.sampled_from(NUMS32), "max_nodes": st.sampled_from(NUMS32), "num_tasks": st.sampled_from(NUMS32),
    "ntasks_per_node": st.sampled_from(NUMS16), "sockets_per_node": st.sampled_from(NUMS16),
    "shared": st.sampled_from([None, 0, 1, 2, NO_VAL16]), "time_limit": st.sampled_from(TIMES),
    "partition": st.sampled_from(PARTITIONS), "array_inx": st.sampled_from(ARRAYS[:12] + BAD_ARRAYS[:4]),
    "cpus_per_task": st.sampled_from(NUMS16), "pn_min_cpus": st.sampled_from(NUMS16),
    "min_cpus": st.sampled_from(NUMS32), "cpus_per_tres": st.sampled_from([None, "gres:gpu:8", "gres/gpu:2,gres:gpu:3"]),
})


@settings(max_examples=40, deadline=None)
@given(st.lists(_small_desc, min_size=1, max_size=25), st.integers(0, 2**32))
def test_lua_and_python_agree_hypothesis(lua51, descs, seed):
    """Hypothesis explores (and shrinks) job_desc combinations; each example is one lua5.1 run."""
    rng = random.Random(seed)
    cases = [(d, _partitions(rng), _params(rng)) for d in descs]
    assert disagreements(lua51, cases) == []
    assert cpu_disagreements(lua51, cases) == []


# --------------------------------------------------------------------------- unit tests
def _run(lua, *cases: list[tuple[str, object]]) -> list[list[str]]:
    rows = run_lua(lua, [line([("id", str(i)), *c]) for i, c in enumerate(cases)])
    return [r[1:] for r in rows]


ARRAY_SPECS = [
    (None, 1), ("", 1), ("0-9", 10), ("1,3,5", 3), ("0-15:4", 4), ("0-99%10", 100), ("0-15:4%2", 4), ("7", 1),
    ("0-3,2-5", 6), ("5-5", 1), ("1,,2", 2), ("00-09", 10), ("0-999999", 1_000_000), ("0-9:3,1-9:3", 7),
    ("5-2", "bad array range 5-2"), ("0-9:0", "bad array range 0-9:0"), ("x", "cannot parse array spec x"),
    ("0-9%", "cannot parse array spec 0-9%"), ("%3", "empty array spec"), (",", "empty array spec"),
    ("0-5000000", "array spec too large 0-5000000"), ("1-2\x01", "cannot parse array spec 1-2?"),
]


def test_array_count(lua51):
    rows = _run(lua51, *[[("cmd", "array_count"), ("spec", s)] for s, _ in ARRAY_SPECS])
    for (spec, want), row in zip(ARRAY_SPECS, rows):
        if isinstance(want, int):
            assert row == ["ok", str(want)], spec
            assert hook_array_count(spec) == want
        else:
            assert row == ["no", want], spec
            with pytest.raises(_Refused, match="^" + re.escape(want) + "$"):
                hook_array_count(spec)


def test_array_count_huge_task_id_terminates(lua51):
    rows = _run(lua51, [("cmd", "array_count"), ("spec", "9007199254740993"), ("budget", "20000000")],
                [("cmd", "array_count"), ("spec", "100000000000000000000"), ("budget", "20000000")])
    assert rows[0][0] == "no" or rows[0] == ["ok", "1"]
    assert rows[1][0] == "no" or rows[1] == ["ok", "1"]


GPU_ENTRIES = [
    (None, []), ("", []), ("gres:gpu", [("-", 1)]), ("gres:gpu:2", [("-", 2)]), ("gres:gpu:h100", [("h100", 1)]),
    ("gres:gpu:h100:2", [("h100", 2)]), ("gres/gpu:a100:3", [("a100", 3)]), ("gres:gpu:1k", [("-", 1024)]),
    ("gres:gpu:h100:2K", [("h100", 2048)]), ("gres:gpu:1m", [("-", 1048576)]), ("gres:gpu:1G", [("-", 1073741824)]),
    ("gres:gpu:h100:2,gres:mps:100,gres:gpu:1", [("h100", 2), ("-", 1)]), ("gpu:2", []), ("gres:GPU:2", []),
    ("gres:gpu::2", [("-", 2)]), ("gres:gpu:h100:2:extra", [("h100", 2)]), (",,gres:gpu:1,", [("-", 1)]),
    ("gres:gpu:h100:x", "cannot parse GPU request gres:gpu:h100:x"),
    ("gres:gpu:1:h100", "cannot parse GPU request gres:gpu:1:h100"),
    ("gres:gpu:h100:2t", "cannot parse GPU request gres:gpu:h100:2t"),
    # Slurm 24.11/26.05's tres_per_task (--gpus-per-task=1, --gpus-per-task=h100:1): count after "=".
    ("gres/gpu=1", [("-", 1)]), ("gres/gpu:h100=2", [("h100", 2)]), ("cpu=4,gres/gpu:h100=1", [("h100", 1)]),
    ("gres/gpu=2k", [("-", 2048)]), ("gres/mps=100,gres/gpu=1", [("-", 1)]),
    ("gres/gpu=x", "cannot parse GPU request gres/gpu=x"), ("gres/gpu=", "cannot parse GPU request gres/gpu="),
    ("gres/gpu:h100:1=2", "cannot parse GPU request gres/gpu:h100:1=2"),
]


def test_gpu_entries(lua51):
    rows = _run(lua51, *[[("cmd", "gpu_entries"), ("tres", t)] for t, _ in GPU_ENTRIES])
    for (tres, want), row in zip(GPU_ENTRIES, rows):
        if isinstance(want, list):
            assert row == ["ok", *[f"{t}:{n}" for t, n in want]], tres
            assert [(t or "-", c) for t, c in hook_gpu_entries(tres)] == [(t, float(n)) for t, n in want]
        else:
            assert row == ["no", want], tres
            with pytest.raises(_Refused, match="^" + re.escape(want) + "$"):
                hook_gpu_entries(tres)


def test_time_limit_min(lua51):
    parts = {"gpu": HookPartition("gpu", 30, 1440, True), "nolimit": HookPartition("nolimit"),
             "maxonly": HookPartition("maxonly", NO_VAL, 240), "zero": HookPartition("zero", 0, 0)}
    cases = [(None, ["gpu"], (30, False)), (None, ["nolimit"], (60, True)), (None, ["gpu", "nolimit"], (60, True)),
             (None, [], (60, True)), (None, ["maxonly"], (240, False)), (None, ["zero"], (60, True)),
             (UNLIMITED, ["gpu"], (1440, True)), (UNLIMITED, ["gpu", "nolimit"], (1440, True)),
             (UNLIMITED, ["nolimit"], None), (UNLIMITED, [], None), (UNLIMITED, ["maxonly", "gpu"], (1440, True)),
             (17, ["nolimit"], (17, False)), (5000, ["gpu"], (5000, False))]
    rows = _run(lua51, *[[("cmd", "time_limit_min"), ("tl", tl), ("default_time_min", 60),
                          *context_fields(PriceParams(), [parts[n] for n in names])] for tl, names, _ in cases])
    for (tl, names, want), row in zip(cases, rows):
        py = hook_time_limit_min(tl, [parts[n] for n in names], 60)
        if want is None:
            assert row[0] == "no" and py[0] is None and row[1] == py[2], (tl, names)
        else:
            assert row == ["ok", str(want[0]), "1" if want[1] else "0"], (tl, names)
            assert py[:2] == want


# ------------------------------------------------------------------- rec_view (job_modify)
def test_rec_view_with_and_without_stash(lua51):
    rec = [("r.tres_per_node", "gres:gpu:2"), ("r.min_nodes", 2), ("r.max_nodes", NO_VAL), ("r.min_cpus", 8),
           ("r.time_limit", 30), ("r.partition", "gpu"), ("r.array_task_cnt", 4)]
    rows = _run(
        lua51,
        [("cmd", "rec_view"), *rec],  # no stash: tasks bounded by the job's CPUs
        [("cmd", "rec_view"), *rec, ("ac", "slurmgov:hold=1-2-ab12 slurmgov:req=3,-,2,0 note")],
        [("cmd", "rec_view"), *rec, ("ac", "slurmgov:hold=1-2-ab12 slurmgov:req=-,-,-,-")],
        [("cmd", "rec_view"), *rec, ("ac", "no stash here")],  # parse_stash -> nil: as without
        [("cmd", "rec_view"), *rec, ("stash", "1"), ("s.num_tasks", 5), ("s.shared", 0)],
        [("cmd", "rec_view"), ("r.time_limit", INFINITE), ("r.array_task_cnt", 0), ("r.min_cpus", NO_VAL)],
        [("cmd", "rec_view"), ("r.time_limit", 0), ("r.min_nodes", 0)],
    )
    views = [dict(f.split("=", 1) for f in row[1:]) for row in rows]
    base = {"tres_per_node": "gres:gpu:2", "min_nodes": "2", "time_limit": "30", "partition": "gpu",
            "tasks_in_array": "4", "min_cpus": "8"}  # the job's CPUs bound its CPU price from below
    assert views[0] == {**base, "num_tasks": "8"}
    assert views[1] == {**base, "num_tasks": "3", "sockets_per_node": "2", "shared": "0"}
    assert views[2] == base
    assert views[3] == {**base, "num_tasks": "8"}
    assert views[4] == {**base, "num_tasks": "5", "shared": "0"}
    cpt = _run(lua51, [("cmd", "rec_view"), *rec, ("ac", "slurmgov:hold=1-2-ab12 slurmgov:req=3,-,2,0,4 note")])
    assert dict(f.split("=", 1) for f in cpt[0][1:]) == {**base, "num_tasks": "3", "sockets_per_node": "2",
                                                           "shared": "0", "cpus_per_task": "4"}  # the fifth: -c
    assert views[5] == {"time_limit": "unlimited", "tasks_in_array": "1"}
    assert views[6] == {"time_limit": "unlimited", "tasks_in_array": "1"}


# ------------------------------------------------------------- accounts: pack and look up
def _acct_case(accts: list[tuple[str, str]], lookups: list[str]) -> list[tuple[str, object]]:
    return [("cmd", "pack"), *[("acct", f"{n}{SEP}{v}") for n, v in accts], *[("lookup", n) for n in lookups]]


def _expect_lookups(accts, lookups) -> list[str]:
    d = dict(accts)
    return [repr(float(d[n])).removesuffix(".0") if n in d else "-" for n in lookups]


PREFIX_NAMES = ["a", "ab", "abc", "abd", "a-b", "a.b", "a_b", "b", "ba", "chem", "chem-ai", "chem-ai2", "chem.ai", "z"]


def test_pack_and_lookup_sorted_unsorted_prefixes(lua51):
    accts = [(n, str(i * 10 + 1)) for i, n in enumerate(PREFIX_NAMES)]
    sorted_accts = sorted(accts, key=lambda a: a[0].encode())
    shuffled = accts[:]
    random.Random(7).shuffle(shuffled)
    probes = PREFIX_NAMES + ["", "aa", "abcd", "c", "chem-a", "chem-ai ", "CHEM-AI", "zz", ".*", "%a", "a%-b"]
    rows = _run(lua51, _acct_case(sorted_accts, probes), _acct_case(list(reversed(sorted_accts)), probes),
                _acct_case(shuffled, probes), _acct_case([], ["a", ""]),
                _acct_case([("only", "-3.5e2")], ["only", "o"]))
    want = _expect_lookups(accts, probes)
    assert rows[0] == ["ok", *want]
    assert rows[1] == ["ok", *want]
    assert rows[2] == ["ok", *want]
    assert rows[3] == ["ok", "-", "-"]
    assert rows[4] == ["ok", "-350", "-"]


def test_pack_refuses_duplicates_anywhere(lua51):
    rows = _run(lua51, _acct_case([("a", "1"), ("a", "2")], []), _acct_case([("b", "1"), ("a", "1"), ("b", "2")], []),
                _acct_case([("x", "1"), ("ab", "1"), ("a", "1"), ("ab", "3")], []))
    assert rows == [["no", "duplicate", "a"], ["no", "duplicate", "b"], ["no", "duplicate", "ab"]]


def test_lookup_in_10000_accounts(lua51):
    rng = random.Random(11)
    names: set[str] = set()
    while len(names) < 10_000:
        base = "".join(rng.choice(string.ascii_lowercase + "-._0123456789") for _ in range(rng.randint(1, 12)))
        names.add(base)
        if rng.random() < 0.2:
            names.add(base + rng.choice(["-2", "x", "."]))  # a name and a longer one it prefixes
    accts = [(n, f"{rng.randint(-10**6, 10**9)}.{rng.randint(0, 999):03d}") for n in sorted(names)][:10_000]
    present = [n for n, _ in accts]
    absent = [n + "!" for n in present[:500]] + [n[:-1] for n in present[:500] if n[:-1] not in names]
    lookups = present + absent
    shuffled = accts[:]
    rng.shuffle(shuffled)
    rows = _run(lua51, _acct_case(accts, lookups), _acct_case(shuffled, lookups))
    want = [repr(float(v)) for _, v in accts] + ["-"] * (len(lookups) - len(present))
    for row in rows:
        assert row[0] == "ok"
        assert [("-" if x == "-" else repr(float(x))) for x in row[1:]] == want


# ------------------------------------------------------------------------ parse_snapshot
GOOD = ("slurmgov-snapshot\t1\nserial\t17\nwritten\t1700000000\nmax_age_s\t600\nfail_policy\topen\n"
        "default_time_min\t45\nmax_gpus_per_node\t8\nsockets_per_node\t2\ndefault_weight\t0.5\n"
        "weight\th100\t2\nweight\ta100\t1.5e0\npartition_gpus\tgpu\t4\th100\npartition_gpus\tcpu\t0\t-\n"
        "operator_uid\t1001\n# a comment\n\nfuture_key\twhatever\tfields\n"
        "account\tbio-ml\t600.000\naccount\tchem-ai\t12600\naccount\tphysics\t-5\nend\n")

SNAPSHOTS = [
    ("good", GOOD, None),
    ("crlf", GOOD.replace("\n", "\r\n"), None),
    ("accounts-unsorted", GOOD.replace("account\tbio-ml\t600.000\naccount\tchem-ai\t12600\n",
                                       "account\tchem-ai\t12600\naccount\tbio-ml\t600.000\n"), None),
    ("accounts-scattered", GOOD.replace("account\tbio-ml\t600.000\n", "").replace(
        "end\n", "").replace("weight\th100\t2\n", "account\tbio-ml\t600.000\nweight\th100\t2\n") + "end\n", None),
    ("blank-lines-after-end", GOOD + "\n\n", None),
    ("no-newline-at-end", GOOD.rstrip("\n"), None),
    ("missing-end", GOOD.replace("end\n", ""), "no end line (incomplete write?)"),
    ("line-after-end", GOOD + "account\tx\t1\n", "no end line (incomplete write?)"),
    ("empty", "", "no end line (incomplete write?)"),
    ("version-2", GOOD.replace("slurmgov-snapshot\t1", "slurmgov-snapshot\t2"), "not a version 1 slurmgov snapshot"),
    ("no-serial", GOOD.replace("serial\t17\n", ""), "missing serial, written or max_age_s"),
    ("bad-serial", GOOD.replace("serial\t17", "serial\t1x"), "bad line 2 (serial)"),
    ("bad-weight", GOOD.replace("weight\th100\t2", "weight\th100\tlots"), "bad line 10 (weight)"),
    ("negative-weight", GOOD.replace("weight\th100\t2", "weight\th100\t-1"), "bad line 10 (weight)"),
    ("hex-weight", GOOD.replace("weight\th100\t2", "weight\th100\t0x10"), "bad line 10 (weight)"),
    ("nan-default-weight", GOOD.replace("default_weight\t0.5", "default_weight\tnan"), "bad line 9 (default_weight)"),
    ("zero-default-time", GOOD.replace("default_time_min\t45", "default_time_min\t0"), "bad line 6 (default_time_min)"),
    ("bad-fail-policy", GOOD.replace("fail_policy\topen", "fail_policy\tajar"), "bad line 5 (fail_policy)"),
    ("extra-field", GOOD.replace("max_age_s\t600", "max_age_s\t600\t1"), "bad line 4 (max_age_s)"),
    ("bad-partition-gpus", GOOD.replace("partition_gpus\tgpu\t4\th100", "partition_gpus\tgpu\t4"),
     "bad line 12 (partition_gpus)"),
    ("bad-account-value", GOOD.replace("chem-ai\t12600", "chem-ai\tlots"), "bad line 19 (account)"),
    ("account-extra-field", GOOD.replace("chem-ai\t12600", "chem-ai\t12600\t1"), "bad line 19 (account)"),
    ("duplicate-account", GOOD.replace("account\tphysics\t-5", "account\tphysics\t-5\naccount\tbio-ml\t1"),
     "duplicate account bio-ml"),
    ("duplicate-adjacent", GOOD.replace("account\tphysics\t-5", "account\tphysics\t-5\naccount\tphysics\t1"),
     "duplicate account physics"),
]


def test_parse_snapshot_and_python_reader(lua51, tmp_path):
    lookups = ["bio-ml", "chem-ai", "physics", "chem", "x"]
    rows = _run(lua51, *[[("cmd", "parse_snapshot"), ("data", text), *[("lookup", n) for n in lookups]]
                         for _, text, _ in SNAPSHOTS])
    for (name, text, err), row in zip(SNAPSHOTS, rows):
        path = tmp_path / f"{name}.txt"
        path.write_text(text, newline="")
        if err is not None:
            assert row == ["no", err], name
            with pytest.raises(ValueError, match="^" + re.escape(f"{path}: {err}") + "$"):
                snapshot_mod.read_price_params(path)
            continue
        got = dict(f.split("=", 1) for f in row[1:])
        assert got == {"serial": "17", "default_time_min": "45", "default_weight": "0.5", "sockets_per_node": "2",
                       "max_gpus_per_node": "8", "fail_policy": "open", "weights": "a100:1.5,h100:2",
                       "partition_gpus": "cpu:0:-,gpu:4:h100",
                       "lookups": "600,12600,-5,-,-"}, name
        params = snapshot_mod.read_price_params(path)
        assert params == PriceParams(weights={"h100": 2.0, "a100": 1.5}, default_weight=0.5, default_time_min=45,
                                     max_gpus_per_node=8, sockets_per_node=2,
                                     partition_gpus={"gpu": (4, "h100"), "cpu": (0, None)}), name


def test_snapshot_defaults_and_sockets_clamp(lua51, tmp_path):
    text = "slurmgov-snapshot\t1\nserial\t1\nwritten\t1\nmax_age_s\t1\nsockets_per_node\t0\nend\n"
    [row] = _run(lua51, [("cmd", "parse_snapshot"), ("data", text)])
    got = dict(f.split("=", 1) for f in row[1:])
    assert (got["default_time_min"], got["default_weight"], got["sockets_per_node"], got["max_gpus_per_node"]) == \
        ("60", "1", "1", "-")
    path = tmp_path / "s.txt"
    path.write_text(text)
    assert snapshot_mod.read_price_params(path) == PriceParams()


# ------------------------------------------------------------------------ Lua bugs found by these tests (fixed)
def test_num_tasks_65534_is_a_count(lua51):
    d = {"tres_per_task": "gres:gpu:1", "num_tasks": 65534, "time_limit": 10}
    [row] = run_lua(lua51, [price_line("x", d, PriceParams(), [HookPartition("gpu", 30, 60, True)])])
    assert lua_price_result(row[1:])["gpus"] == 65534


def _tie_lines():
    params = PriceParams(weights={"h100": 2.0, "a100": 1.0}, partition_gpus={"p1": (4, "h100"), "p2": (4, "a100")})
    parts = [HookPartition("p1", 30, 60), HookPartition("p2", 30, 60)]
    return [price_line(str(i), {"shared": 0, "time_limit": 10, "partition": spec}, params, parts)
            for i, spec in enumerate(["p1,p2", "p2,p1"])]


def test_exclusive_tie_between_partitions_prices_the_dearest(lua51):
    rows = run_lua(lua51, _tie_lines())
    assert [lua_price_result(r[1:])["cost"] for r in rows] == [4 * 2.0 * 600] * 2


def test_repeated_gpu_entries_count_once(lua51):
    d = {"tres_per_node": "gres:gpu:1,gres:gpu:2", "time_limit": 10}
    [row] = run_lua(lua51, [price_line("x", d, PriceParams(), [HookPartition("gpu", 30, 60, True)])])
    assert lua_price_result(row[1:])["gpus"] == 2
