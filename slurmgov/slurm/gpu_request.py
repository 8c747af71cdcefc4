"""What an sbatch command line asks for in GPUs, and what the submit hook charges for it.

``plugins/job_submit.lua`` prices a job from the fields Slurm hands it (its *view* of the
job's ``job_desc``: ``desc_view``), the partitions it may run in and the snapshot's pricing
parameters (``price``).  This module holds the two halves of the preview:

* ``sbatch_job_desc``: the ``job_desc`` fields sbatch 22.05 sends for ``sbatch`` arguments,
  ``#SBATCH`` lines and ``SBATCH_*`` variables (node and task counts as sbatch massages them);
* ``hook_price``: the exact mirror of the hook's ``price`` over the same view, partitions and
  parameters (``HookView``, ``HookPartition``, ``PriceParams``), number for number, refusal
  for refusal.  It is the one place in Python that knows what a GPU request costs; the rules
  are in plugins/SNAPSHOT_FORMAT.md ("Cost", "The hook pins what it priced").

tests/data/hook_prices.yaml holds request forms and their prices; both this module and the
Lua hook are tested against it, and a property test compares the two on generated views.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from slurmgov.errors import InputError
from slurmgov.site.units import slurm_seconds

# sbatch long options that take a value (``--opt val`` as well as ``--opt=val``).  Options
# with an optional value (``--exclusive[=user]``) only take one after ``=`` and are absent here.
# ``segment``: 23.11 on (topology/block), what the planner asks of a block site.
_LONG_WITH_VALUE = frozenset("""
account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment
constraint container core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline
delay-boot dependency distribution error exclude export export-file extra-node-info gid
gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags hint
input job-name kill-on-invalid-dep licenses mail-type mail-user mcs-label mem mem-bind
mem-per-cpu mem-per-gpu mincpus network nodefile nodelist nodes ntasks ntasks-per-core
ntasks-per-gpu ntasks-per-node ntasks-per-socket open-mode output partition power prefer
priority profile qos reservation segment signal sockets-per-node switches thread-spec
threads-per-core time time-min tmp uid wckey wrap
""".split())
_LONG_FLAGS = frozenset("""
contiguous exclusive get-user-env help hold ignore-pbs no-kill no-requeue nice oversubscribe
overcommit parsable propagate quiet reboot requeue spread-job test-only usage use-min-nodes
verbose version wait export-file
""".split()) - _LONG_WITH_VALUE
_SHORT_WITH_VALUE = {
    "A": "account", "a": "array", "B": "extra-node-info", "b": "begin", "C": "constraint",
    "c": "cpus-per-task", "D": "chdir", "d": "dependency", "e": "error", "F": "nodefile",
    "G": "gpus", "i": "input", "J": "job-name", "L": "licenses", "M": "clusters",
    "m": "distribution", "N": "nodes", "n": "ntasks", "o": "output", "p": "partition",
    "q": "qos", "S": "core-spec", "t": "time", "w": "nodelist", "x": "exclude",
}
_SHORT_FLAGS = set("hHkOQsuvVW")
_SHORT_FLAG_NAMES = {"s": "oversubscribe", "H": "hold"}
# The SBATCH_* variables sbatch 22.05 reads for options that change a job's price.  They
# override #SBATCH lines; the command line overrides them.
SBATCH_ENV = {
    "SBATCH_ACCOUNT": "account", "SBATCH_ARRAY_INX": "array", "SBATCH_EXCLUSIVE": "exclusive",
    "SBATCH_GPUS": "gpus", "SBATCH_GPUS_PER_NODE": "gpus-per-node", "SBATCH_GPUS_PER_SOCKET": "gpus-per-socket",
    "SBATCH_GPUS_PER_TASK": "gpus-per-task", "SBATCH_GRES": "gres", "SBATCH_JOB_NAME": "job-name",
    "SBATCH_PARTITION": "partition", "SBATCH_THREADS_PER_CORE": "threads-per-core", "SBATCH_TIMELIMIT": "time",
}

# fullmatch only: Python's $ also matches before a trailing newline ("h100\n" is no type)
_COUNT = re.compile(r"(\d+)([kKmMgG]?)", re.ASCII)  # (ASCII: sbatch reads no other digits)
_TYPE = re.compile(r"[A-Za-z0-9_.\-]+")
_SUFFIX = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_UNLIMITED = {"unlimited", "infinite", "-1"}
_ARRAY_ITEM = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?", re.ASCII)
_MAX_ARRAY_WORK = 5_000_000

# Slurm's "not set" and "unlimited" values, as the hook sees them in job_desc and part_list.
NO_VAL = 4294967294
INFINITE = 4294967295
NO_VAL16 = 65534
INFINITE16 = 65535
UNLIMITED = "unlimited"  # a view's time_limit for --time=UNLIMITED / 0

GpuForm = tuple[tuple[str | None, int], ...]  # ((type or None, GPUs per array task), ...)


# ------------------------------------------------------------------------------ the hook's inputs
@dataclass(frozen=True)
class HookView:
    """What prices a job: the hook's ``desc_view`` of a submission (or ``rec_view`` of a job).

    Unset fields are None; ``time_limit`` is minutes, ``UNLIMITED`` or None (not given).
    ``tasks_in_array`` replaces ``array_inx`` for a job that exists (its remaining tasks).
    """

    tres_per_node: str | None = None
    tres_per_job: str | None = None
    tres_per_task: str | None = None
    tres_per_socket: str | None = None
    min_nodes: int | None = None
    max_nodes: int | None = None
    num_tasks: int | None = None
    ntasks_per_node: int | None = None
    sockets_per_node: int | None = None
    shared: int | None = None  # 0: --exclusive (whole nodes)
    time_limit: int | str | None = None
    partition: str | None = None
    array_inx: str | None = None
    tasks_in_array: int | None = None
    # CPUs (priced only for an account with a CPU budget): -c, Slurm's min_cpus, --mincpus
    cpus_per_task: int | None = None
    min_cpus: int | None = None
    pn_min_cpus: int | None = None
    cpus_per_tres: str | None = None  # --cpus-per-gpu: "gres:gpu:8"


@dataclass(frozen=True)
class HookPartition:
    """One partition as the hook's ``part_list`` shows it (times in minutes; None, NO_VAL and
    INFINITE all mean "none"); ``max_share`` 0 is OverSubscribe=EXCLUSIVE."""

    name: str
    default_time: int | None = None
    max_time: int | None = None
    default: bool = False
    max_share: int = 1


@dataclass(frozen=True)
class PriceParams:
    """The snapshot's pricing parameters (plugins/SNAPSHOT_FORMAT.md), with the hook's defaults."""

    weights: Mapping[str, float] = field(default_factory=dict)
    default_weight: float = 1.0
    default_time_min: int = 60
    max_gpus_per_node: int | None = None
    total_gpus: int | None = None
    sockets_per_node: int = 1
    partition_gpus: Mapping[str, tuple[int, str | None]] = field(default_factory=dict)  # name -> (GPUs per node, type)
    # CPU pricing: name -> (CPUs per node, weight per CPU-hour); partitions without one: these
    partition_cpus: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    default_cpu_weight: float = 1.0
    max_cpus_per_node: int | None = None


@dataclass(frozen=True)
class HookPrice:
    """The hook's price of a view (``any_gpu`` False: a job that holds no GPUs costs nothing)."""

    any_gpu: bool
    gpus: float = 0  # per array task, unweighted (an int when whole; the hook's counts are Lua numbers)
    weighted: float = 0.0  # weighted GPUs per array task
    per_node: float = 0  # largest GPU count on one node (never-placeable check)
    nodes: int = 1
    max_nodes: int | None = None
    tasks: int = 1  # array tasks
    types: str = "-"
    tl: int = 0  # minutes priced
    pin_time: bool = False  # the hook sets the job's time limit to tl
    pin_nodes: bool = False  # the hook sets the job's maximum node count to nodes
    cost: float = 0.0  # weighted GPU-seconds, all array tasks


@dataclass(frozen=True)
class HookCpuPrice:
    """The hook's CPU price of a view (cpu_price): what an account with a CPU budget pays."""

    cpus: float  # CPUs per array task, worst case, unweighted
    weighted: float  # weighted CPUs per array task
    nodes: int
    tasks: int  # array tasks
    tl: int  # minutes priced
    pin_time: bool
    pin_nodes: bool  # the hook sets the job's maximum node count to nodes
    cost: float  # weighted CPU-seconds, all array tasks


@dataclass(frozen=True)
class HookRefusal:
    """The hook refuses the request before any budget is looked at."""

    reason: str  # bad_request | bad_time
    message: str


class _Refused(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


# ------------------------------------------------------------------------ the hook, in Python
# Each function below mirrors the Lua function of the same name in plugins/job_submit.lua.
# Lua numbers are doubles: counts, weights and costs are floats here too, combined in the
# same order, so the two agree to the last bit (tests/test_hook_lua.py checks it).

_CNTRL = re.compile(r"[\x00-\x1f\x7f]")
_LUA_COUNT = re.compile(r"([0-9]+)([kKmMgG]?)")
_LUA_SUFFIX = {"": 1.0, "k": 1024.0, "m": 1048576.0, "g": 1073741824.0}
_LIMIT_SUFFIX = re.compile(r"([^%]*)%[0-9]+")
_ARR_STEP = re.compile(r"([0-9]+)-([0-9]+):([0-9]+)")
_ARR_RANGE = re.compile(r"([0-9]+)-([0-9]+)")
_ARR_ONE = re.compile(r"([0-9]+)")


def _printable(s) -> str:
    return _CNTRL.sub("?", str(s))


def _set_num(v):
    """A 32-bit job_desc/part_list number, or None when Slurm's "not set"/"infinite" (set_num)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v in (NO_VAL, INFINITE):
        return None
    return v


def _set_num16(v):
    """A 16-bit job_desc number (tasks per node, sockets per node, shared) (set_num16)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v in (NO_VAL, INFINITE, NO_VAL16, INFINITE16):
        return None
    return v


def _time_of(v):
    """job_desc time_limit -> None (not given), UNLIMITED, or minutes (time_of)."""
    if v is None or v == NO_VAL:
        return None
    if v == INFINITE or v == 0:
        return UNLIMITED
    return v


def view_from_job_desc(d: Mapping) -> HookView:
    """The hook's view of a submission's job_desc (desc_view); numbers as Slurm sends them."""
    return HookView(
        tres_per_node=d.get("tres_per_node"), tres_per_job=d.get("tres_per_job"),
        tres_per_task=d.get("tres_per_task"), tres_per_socket=d.get("tres_per_socket"),
        min_nodes=_set_num(d.get("min_nodes")), max_nodes=_set_num(d.get("max_nodes")),
        num_tasks=_set_num(d.get("num_tasks")), ntasks_per_node=_set_num16(d.get("ntasks_per_node")),
        sockets_per_node=_set_num16(d.get("sockets_per_node")), shared=_set_num16(d.get("shared")),
        time_limit=_time_of(d.get("time_limit")), partition=d.get("partition"), array_inx=d.get("array_inx"),
        cpus_per_task=_set_num16(d.get("cpus_per_task")), min_cpus=_set_num(d.get("min_cpus")),
        pn_min_cpus=_set_num16(d.get("pn_min_cpus")), cpus_per_tres=d.get("cpus_per_tres"),
    )


def hook_gpu_entries(tres) -> list[tuple[str | None, float]]:
    """GPU entries of one TRES string (gpu_entries); raises _Refused when one cannot be read."""
    out: list[tuple[str | None, float]] = []
    if not isinstance(tres, str) or tres == "":
        return out
    for item in tres.split(","):
        if not item or item[:5] not in ("gres:", "gres/"):
            continue
        # Slurm 23.11+ (24.11, 26.05) writes tres_per_task TRES-style: "gres/gpu=1", "gres/gpu:h100=1".
        head, eq, after = item[5:].partition("=")
        parts = [p for p in head.split(":") if p]
        if not parts or parts[0] != "gpu":
            continue
        gtype: str | None = None
        cnt: float | None
        if eq:
            gtype, cnt = (parts[1] if len(parts) > 1 else None), (_lua_count(after) if len(parts) <= 2 else None)
        elif len(parts) == 1:
            cnt = 1.0
        elif len(parts) == 2:
            cnt = _lua_count(parts[1])
            if cnt is None:
                gtype, cnt = parts[1], 1.0
        else:
            gtype, cnt = parts[1], _lua_count(parts[2])
        if cnt is None:
            raise _Refused("bad_request", "cannot parse GPU request " + _printable(item))
        out.append((gtype, cnt))
    return out


def _lua_count(s: str) -> float | None:
    m = _LUA_COUNT.fullmatch(s)
    if not m:
        return None
    return float(m[1]) * _LUA_SUFFIX[m[2].lower()]


def hook_array_count(spec) -> int:
    """Distinct task ids of an array_inx (array_count); raises _Refused when unreadable."""
    if spec is None or spec == "":
        return 1
    m = _LIMIT_SUFFIX.fullmatch(spec)
    body = m[1] if m else spec
    ranges: list[tuple[int, int, int]] = []
    work = 0.0
    for item in body.split(","):
        if not item:
            continue
        m = _ARR_STEP.fullmatch(item)
        if m:
            a, b, s = m[1], m[2], m[3]
        else:
            m = _ARR_RANGE.fullmatch(item) or _ARR_ONE.fullmatch(item)
            if not m:
                raise _Refused("bad_request", "cannot parse array spec " + _printable(spec))
            a, b, s = m[1], (m[2] if m.lastindex == 2 else m[1]), "1"
        if len(a) > 9 or len(b) > 9 or len(s) > 9:  # no valid task id has 10 digits
            raise _Refused("bad_request", "array index too large in " + _printable(spec))
        a, b, s = int(a), int(b), int(s)
        if s < 1 or b < a:
            raise _Refused("bad_request", "bad array range " + _printable(item))
        work = work + math.floor((float(b) - float(a)) / float(s)) + 1
        if work > _MAX_ARRAY_WORK:
            raise _Refused("bad_request", "array spec too large " + _printable(spec))
        ranges.append((a, b, s))
    if not ranges:
        raise _Refused("bad_request", "empty array spec")
    if all(s == 1 for _, _, s in ranges):  # intervals: merge them (no set of millions of ids)
        n, end = 0, -1
        for a, b, _ in sorted(ranges):
            if b > end:
                n += b - max(a, end + 1) + 1
                end = b
        return n
    return len({i for a, b, s in ranges for i in range(a, b + 1, s)})


def _job_partitions(wanted, partitions) -> list[HookPartition]:
    """The partitions the job may run in: the named ones, else the default one(s)."""
    if wanted:
        names = {n for n in wanted.split(",") if n}
        return [p for p in partitions if p.name in names]
    return [p for p in partitions if p.default]


def hook_time_limit_min(tl, parts, default_time_min: int) -> tuple[int | None, bool, str | None]:
    """(minutes priced, pin the job's time limit?, refusal message) (time_limit_min)."""
    eff = maxt = None
    unbounded = len(parts) == 0
    for p in parts:
        d, m = _set_num(p.default_time), _set_num(p.max_time)
        if d is not None and d <= 0:
            d = None
        if m is not None and m <= 0:
            m = None
        e = d if d is not None else m
        if e is not None:
            eff = max(eff if eff is not None else 0, e)
        else:
            unbounded = True
        if m is not None:
            maxt = max(maxt if maxt is not None else 0, m)
    if tl is None:
        if unbounded:
            return max(eff if eff is not None else 0, default_time_min), True, None
        return eff, False, None
    if tl == UNLIMITED:
        if maxt is None:
            return None, False, "job has no time limit and its partition has no MaxTime; give --time"
        return maxt, True, None  # pinned: an UNLIMITED job would otherwise run past its price
    return tl, False, None


def _whole_node_gpus(parts, params: PriceParams) -> tuple[float, str | None]:
    n, gtype = None, None

    def w(t):
        return params.weights[t] if t is not None and t in params.weights else params.default_weight

    for p in parts:
        g = params.partition_gpus.get(p.name)
        if g is not None and (n is None or g[0] > n or (g[0] == n and w(g[1]) > w(gtype))):
            n, gtype = g[0], g[1]
    if n is None:
        n = params.max_gpus_per_node or 0
    return n, gtype


def _forms(view: HookView, params: PriceParams):
    """The view's GPU forms: (entries, multiplier, per-node multiplier or None), in the hook's order."""
    min_nodes, max_nodes = view.min_nodes, view.max_nodes
    nodes = max(1 if min_nodes is None else min_nodes, 1 if max_nodes is None else max_nodes)
    tpn = view.ntasks_per_node
    tasks = view.num_tasks if view.num_tasks is not None else (tpn * nodes if tpn is not None else 1)
    spn = view.sockets_per_node if view.sockets_per_node is not None else params.sockets_per_node
    return nodes, [
        (view.tres_per_node, nodes, 1),
        (view.tres_per_job, 1, 1 if (nodes == 1 and max_nodes == 1) else None),
        (view.tres_per_task, tasks, tpn),
        (view.tres_per_socket, spn * nodes, spn),
    ]


def hook_price(view: HookView, params: PriceParams, partitions) -> HookPrice | HookRefusal:
    """The hook's worst-case price of a view (price in plugins/job_submit.lua)."""
    try:
        return _price(view, params, list(partitions))
    except _Refused as r:
        return HookRefusal(r.reason, r.message)


def _price(view: HookView, params: PriceParams, partitions: list[HookPartition]) -> HookPrice:
    weights, default_weight = params.weights, params.default_weight
    parts = _job_partitions(view.partition, partitions)
    nodes, forms = _forms(view, params)
    max_nodes = view.max_nodes

    def weight_of(t):
        if t is not None and t in weights:
            return weights[t]
        return default_weight

    best: tuple[float, float] | None = None  # (gpus, weighted)
    typeset: set[str] = set()
    per_node_max: float = 0
    for tres, mult, per_node_mult in forms:
        entries = hook_gpu_entries(tres)
        if not entries:
            continue
        per_type: dict[str | None, float] = {}  # one count per GPU type, the largest (insertion order kept)
        for t, c in entries:
            per_type[t] = max(per_type.get(t, 0.0), c)
        g, w = 0.0, 0.0
        for t, c in per_type.items():
            g = g + c
            if t is not None:
                typeset.add(t)
            w = w + c * weight_of(t)
        if per_node_mult is not None:
            per_node_max = max(per_node_max, g * per_node_mult)
        cand = (g * mult, w * mult)
        if best is None or cand[1] > best[1] or (cand[1] == best[1] and cand[0] > best[0]):
            best = cand

    # --exclusive (or an OverSubscribe=EXCLUSIVE partition): every GPU of every node.
    whole = view.shared == 0 or any(p.max_share == 0 for p in parts)
    if whole:
        gpn, ntype = _whole_node_gpus(parts, params)
        if gpn > 0:
            only = next(iter(typeset)) if len(typeset) == 1 else None
            wtype = ntype if ntype is not None else only
            if wtype is not None:
                typeset.add(wtype)
            cand = (gpn * nodes, gpn * nodes * weight_of(wtype))
            if best is None or cand[1] > best[1]:
                best = cand
            per_node_max = max(per_node_max, gpn)
    if best is None or best[0] <= 0:
        return HookPrice(any_gpu=False)

    arr = view.tasks_in_array if view.tasks_in_array is not None else hook_array_count(view.array_inx)
    tl, pin_time, err = hook_time_limit_min(view.time_limit, parts, params.default_time_min)
    if tl is None:
        raise _Refused("bad_time", err or "job has no time limit")
    pin_nodes = max_nodes is None and (view.tres_per_node is not None or view.tres_per_socket is not None or whole)
    gpus = best[0]
    return HookPrice(
        any_gpu=True, gpus=int(gpus) if math.isfinite(gpus) and gpus == int(gpus) else gpus, weighted=best[1],
        per_node=per_node_max,
        nodes=nodes, max_nodes=max_nodes, tasks=arr, types="+".join(sorted(typeset)) or "-",
        tl=tl, pin_time=pin_time, pin_nodes=pin_nodes, cost=best[1] * arr * tl * 60,
    )


def hook_cpu_price(view: HookView, params: PriceParams, partitions, gpus: float = 0) -> HookCpuPrice | HookRefusal:
    """The hook's worst-case CPU price of a view (cpu_price in plugins/job_submit.lua); ``gpus``:
    the GPUs per array task its GPU price counts (``hook_price``), which --cpus-per-gpu multiplies."""
    try:
        return _cpu_price(view, params, list(partitions), gpus)
    except _Refused as r:
        return HookRefusal(r.reason, r.message)


_CPUS_PER_GPU = re.compile(r"gres[:/]gpu:([0-9]+)")


def _cpus_per_gpu(tres) -> int | None:
    """CPUs per GPU of a cpus_per_tres string (cpus_per_gpu), or None."""
    if not isinstance(tres, str):
        return None
    found = [int(m[1]) for item in tres.split(",") if item and (m := _CPUS_PER_GPU.fullmatch(item))]
    return max(found) if found else None


def _cpu_price(view: HookView, params: PriceParams, partitions: list[HookPartition], gpus: float) -> HookCpuPrice:
    parts = _job_partitions(view.partition, partitions)
    max_nodes = view.max_nodes
    nodes = max(1 if view.min_nodes is None else view.min_nodes, 1 if max_nodes is None else max_nodes)
    tpn = view.ntasks_per_node
    if tpn is not None and tpn > 0 and view.num_tasks is not None:
        nodes = max(nodes, math.ceil(view.num_tasks / tpn))  # the nodes --ntasks-per-node spreads -n over
    cpt = view.cpus_per_task if view.cpus_per_task is not None and view.cpus_per_task > 0 else 1
    tasks = max(view.num_tasks or 0, tpn * nodes if tpn is not None else 0, 1)
    cpus = max(float(tasks) * cpt, view.min_cpus or 0, float(view.pn_min_cpus or 0) * nodes, nodes)
    cpg = _cpus_per_gpu(view.cpus_per_tres)
    if cpg is not None:
        cpus = max(cpus, cpg * gpus)  # --cpus-per-gpu x the GPUs priced
    whole = view.shared == 0 or any(p.max_share == 0 for p in parts)
    best: tuple[float, float] | None = None  # (weighted, cpus)

    def consider(cpn, w) -> None:
        nonlocal best
        c = max(cpus, float(cpn) * nodes) if whole else cpus
        cand = (c * w, c)
        if best is None or cand[0] > best[0] or (cand[0] == best[0] and cand[1] > best[1]):
            best = cand

    for p in parts:
        pc = params.partition_cpus.get(p.name)
        if pc is not None:
            consider(pc[0], pc[1])
        else:
            consider(params.max_cpus_per_node or 0, params.default_cpu_weight)
    if best is None:
        consider(params.max_cpus_per_node or 0, params.default_cpu_weight)
    assert best is not None
    arr = view.tasks_in_array if view.tasks_in_array is not None else hook_array_count(view.array_inx)
    tl, pin_time, err = hook_time_limit_min(view.time_limit, parts, params.default_time_min)
    if tl is None:
        raise _Refused("bad_time", err or "job has no time limit")
    pin_nodes = max_nodes is None and (whole or tpn is not None or view.pn_min_cpus is not None)
    return HookCpuPrice(cpus=best[1], weighted=best[0], nodes=nodes, tasks=arr, tl=tl, pin_time=pin_time,
                        pin_nodes=pin_nodes, cost=best[0] * arr * tl * 60)


def never_placeable(p: HookPrice, params: PriceParams) -> str | None:
    """The hook's refusal of a request that can never start (before any budget), or None."""
    if not p.any_gpu:
        return None
    cap = params.max_gpus_per_node
    if cap is not None:
        if p.per_node > cap:
            return (f"job asks for {int(p.per_node)} GPUs on one node but no node has more than {cap}; "
                    "it can never start")
        if p.max_nodes is not None and p.gpus > cap * p.max_nodes:
            return (f"job asks for {int(p.gpus)} GPUs on at most {p.max_nodes} node(s) of {cap} GPUs each; "
                    "it can never start")
    if params.total_gpus is not None and p.gpus > params.total_gpus:
        return f"job asks for {int(p.gpus)} GPUs but the cluster has {params.total_gpus}; it can never start"
    return None


# ------------------------------------------------------------------------ sbatch's arguments
@dataclass(frozen=True)
class GpuRequest:
    """A job's GPU request, worst case.  ``gpus_total`` counts one array task."""

    gpus_total: int
    gpus_per_node: int | None
    gpu_type: str | None
    nodes: int
    ntasks: int | None
    time_limit_min: int | None  # None: not given (the partition's DefaultTime applies)
    array_size: int
    account: str | None
    partition: str | None
    job_name: str | None
    time_unlimited: bool = False  # -t UNLIMITED / 0: the partition's MaxTime applies
    forms: tuple[GpuForm, ...] = field(default=(), repr=False)
    job_desc: Mapping = field(default_factory=dict, repr=False, hash=False)  # what sbatch sends (set fields)
    view: HookView = field(default_factory=HookView, repr=False)  # what the hook prices


def _count(text: str, opt: str) -> int:
    m = _COUNT.fullmatch(text)
    if not m:
        raise InputError(f"{opt}: {text!r} is not a GPU count")
    return int(m[1]) * _SUFFIX[m[2].lower()]


def _gpu_list(value: str, opt: str, *, gres: bool) -> list[tuple[str | None, int]]:
    """``gpu:h100:2,gpu:1`` (--gres) or ``h100:2,1`` (--gpus*) -> [(type, count)]; non-GPU gres skipped."""
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            raise InputError(f"{opt}: empty entry in {value!r}")
        parts = item.split(":")
        if gres:
            name = parts[0].removeprefix("gres/").removeprefix("gres:")
            if name == "none" and len(parts) == 1:
                continue
            if name != "gpu":
                continue
            parts = parts[1:]
        if len(parts) == 0:
            gtype, n = None, 1
        elif len(parts) == 1:
            if _COUNT.fullmatch(parts[0]):
                gtype, n = None, _count(parts[0], opt)
            elif gres:
                gtype, n = parts[0], 1
            else:
                raise InputError(f"{opt}: {item!r} is not [type:]count")
        elif len(parts) == 2:
            gtype, n = parts[0], _count(parts[1], opt)
        else:
            raise InputError(f"{opt}: {item!r} has too many ':' parts")
        if gtype is not None and not _TYPE.fullmatch(gtype):
            raise InputError(f"{opt}: bad GPU type {gtype!r}")
        out.append((gtype, n))
    return out


def parse_time_min(text: str, opt: str = "--time") -> int | None:
    """Slurm time limit -> minutes, rounded up like Slurm; None for UNLIMITED/0."""
    t = text.strip()
    if t.lower() in _UNLIMITED:
        return None
    secs = slurm_seconds(t)
    if secs is None:
        raise InputError(f"{opt}: {text!r} is not a Slurm time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)")
    if secs == 0:
        return None  # Slurm: a time limit of 0 means no limit
    return -(-secs // 60)


def parse_array_size(text: str, opt: str = "--array") -> int:
    """Distinct task ids in ``0-9``, ``1,3,5``, ``0-15:4``, ``0-99%10``."""
    body = text.strip()
    if "%" in body:
        body, _, limit = body.rpartition("%")
        if not _digits(limit):
            raise InputError(f"{opt}: bad task limit in {text!r}")
    ids: set[int] = set()
    work = 0
    for item in body.split(","):
        m = _ARRAY_ITEM.fullmatch(item.strip())
        if not m:
            raise InputError(f"{opt}: {item!r} is not N, N-M or N-M:S")
        a = int(m[1])
        b = int(m[2]) if m[2] is not None else a
        s = int(m[3]) if m[3] is not None else 1
        if s < 1 or b < a:
            raise InputError(f"{opt}: bad range {item!r}")
        work += (b - a) // s + 1
        if work > _MAX_ARRAY_WORK:
            raise InputError(f"{opt}: {text!r} is too large")
        ids.update(range(a, b + 1, s))
    return len(ids)


def _digits(text: str) -> bool:
    """ASCII digits only, as sbatch's strtol reads them: str.isdigit() also takes '²' (int()
    refuses it) and '١٢' (int() reads 12)."""
    return text.isascii() and text.isdigit()


def _positive_int(text: str, opt: str) -> int:
    if not _digits(text.strip()) or int(text) < 1:
        raise InputError(f"{opt}: {text!r} is not a positive integer")
    return int(text)


def _node_range(text: str) -> tuple[int, int]:
    """``-N min[-max]`` -> (min, max); max 0 is "no maximum" (``-N 2-0``), as sbatch reads it."""
    lo, sep, hi = text.strip().partition("-")
    n = _positive_int(lo, "--nodes")
    if not sep:
        return n, n
    if not _digits(hi.strip()):
        raise InputError(f"--nodes: {text!r} is not a node count (N or N-M)")
    m = int(hi)
    if m and m < n:
        raise InputError(f"--nodes: {text!r}: maximum below minimum")
    return n, m


def _long_name(raw: str) -> str:
    """Full option name; getopt_long accepts unambiguous prefixes."""
    known = _LONG_WITH_VALUE | _LONG_FLAGS
    if raw in known:
        return raw
    hits = sorted(k for k in known if k.startswith(raw))
    if len(hits) > 1:
        raise InputError(f"--{raw} is ambiguous ({', '.join('--' + h for h in hits)})")
    return hits[0] if hits else raw


def _put(opts: dict[str, str], name: str, value: str) -> None:
    """Set an option; the dict's order stays the order options were last given (last one wins)."""
    opts.pop(name, None)
    opts[name] = value


def _scan(args: list[str], where: str) -> tuple[dict[str, str], str | None]:
    """Options (canonical long name -> last value) and the first positional (script path)."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return opts, (args[i + 1] if i + 1 < len(args) else None)
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            name = _long_name(name)
            if not eq and name in _LONG_WITH_VALUE:
                if i + 1 >= len(args):
                    raise InputError(f"{where}: --{name} needs a value")
                val = args[i + 1]
                i += 1
            _put(opts, name, val if (eq or name in _LONG_WITH_VALUE) else "")
        elif a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                ch = a[j]
                if ch in _SHORT_WITH_VALUE:
                    val = a[j + 1:]
                    if not val:
                        if i + 1 >= len(args):
                            raise InputError(f"{where}: -{ch} needs a value")
                        val = args[i + 1]
                        i += 1
                    _put(opts, _SHORT_WITH_VALUE[ch], val)
                    break
                _put(opts, _SHORT_FLAG_NAMES.get(ch, "-" + ch), "")  # a flag (or one this parser does not know)
                j += 1
        else:
            return opts, a
        i += 1
    return opts, None


def _script_args(script_text: str) -> list[str]:
    """Arguments of the leading ``#SBATCH`` lines (sbatch stops at the first command)."""
    out: list[str] = []
    for n, line in enumerate(script_text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if not s.startswith("#"):
            break
        if s.startswith("#SBATCH"):
            rest = s[len("#SBATCH"):]
            if rest and not rest[0].isspace():
                continue  # e.g. "#SBATCHX": not a directive
            try:
                out += shlex.split(rest, comments=True)
            except ValueError as e:
                raise InputError(f"script line {n}: cannot parse #SBATCH line: {e}") from None
    return out


def _fmt_tres(dest: str | None, value: str | None) -> str | None:
    """sbatch's xfmt_tres(dest, "gres:gpu", value): ``h100:2,1`` -> ``gres:gpu:h100:2,gres:gpu:1``."""
    if not value:
        return dest
    items = [f"gres:gpu:{tok}" for tok in value.split(",") if tok]
    return ",".join(([dest] if dest else []) + items) or dest


def _gres_tres(value: str) -> str:
    """sbatch's gres_prepend_tres_type: ``gpu:2,mps:100`` -> ``gres:gpu:2,gres:mps:100``."""
    return ("gres:" + value).replace(",", ",gres:").replace("gres:gres:", "gres:")


def _shared(opts: Mapping[str, str]) -> int | None:
    """--exclusive[=user|mcs|oversubscribe] / --oversubscribe (-s): the last one given wins."""
    shared = None
    for name, value in opts.items():
        if name == "oversubscribe":
            shared = 1
        elif name == "exclusive":
            v = value.lower()
            if v in ("", "exclusive"):
                shared = 0
            elif v == "oversubscribe":
                shared = 1
            elif v == "user":
                shared = 2
            elif v == "mcs":
                shared = 3
            else:
                raise InputError(f"--exclusive: {value!r} is not user, mcs or oversubscribe")
    return shared


def _extra_node_info(text: str) -> list[int | None]:
    """``-B S[:C[:T]]`` -> [sockets, cores, threads] (``*`` or absent: not set)."""
    out: list[int | None] = []
    for part in (text.split(":") + ["*", "*"])[:3]:
        out.append(None if part in ("", "*") else _positive_int(part, "--extra-node-info"))
    return out


def _gpu_records(tres: str | None) -> list[tuple[str | None, int]]:
    """(type, count) of the GPU entries of a TRES string (sbatch has validated the counts)."""
    out: list[tuple[str | None, int]] = []
    for item in (tres or "").split(","):
        parts = [p for p in item.removeprefix("gres:").split(":") if p]
        if not parts or parts[0] != "gpu":
            continue
        if len(parts) == 1:
            out.append((None, 1))
        elif _COUNT.fullmatch(parts[-1]):
            out.append((parts[1] if len(parts) > 2 else None, _count(parts[-1], "--gres")))
        else:
            out.append((parts[1], 1))
    return out


def _gres_validate(d: dict, cpus_per_task_set: bool) -> None:
    """The task, node and socket counts gres_job_state_validate (Slurm 22.05, run by sbatch)
    derives from the GPU options, for GPUs: per GPU type, the per-job, per-node, per-socket
    and per-task counts fix each other."""
    if "tres_per_task" in d and "num_tasks" not in d and "min_nodes" in d and d["min_nodes"] == d.get("max_nodes"):
        if "ntasks_per_node" in d:
            d["num_tasks"] = d["min_nodes"] * d["ntasks_per_node"]
        elif not cpus_per_task_set:
            d["num_tasks"] = d["min_nodes"]
    records: dict[str | None, dict[str, int]] = {}
    for key, fld in (("job", "tres_per_job"), ("node", "tres_per_node"), ("socket", "tres_per_socket"),
                     ("task", "tres_per_task")):
        for gtype, n in _gpu_records(d.get(fld)):
            records.setdefault(gtype, {})[key] = n
    for r in records.values():
        job, node, socket, task = r.get("job"), r.get("node"), r.get("socket"), r.get("task")
        if job and node and job % node == 0:
            d["min_nodes"] = d["max_nodes"] = job // node
        if node and socket and node % socket == 0 and "sockets_per_node" not in d:
            d["sockets_per_node"] = node // socket
        if job and task and job % task == 0 and "num_tasks" not in d:
            d["num_tasks"] = job // task
        if node and task and node % task == 0 and not d.get("ntasks_per_node"):
            d["ntasks_per_node"] = node // task
        if job and "max_nodes" in d and job < d["max_nodes"]:
            d["max_nodes"] = job


def sbatch_job_desc(opts: Mapping[str, str]) -> dict:
    """The job_desc fields sbatch 22.05 sends to slurmctld (and so to the hook) for these
    options; only the fields it sets (unset numbers reach the hook as NO_VAL/NO_VAL16).
    ``time_limit`` is minutes, or INFINITE for UNLIMITED/0."""
    d: dict = {}
    nodes_set = "nodes" in opts
    min_nodes, max_nodes = _node_range(opts["nodes"]) if nodes_set else (1, 0)
    ntasks_set = "ntasks" in opts
    ntasks = _positive_int(opts["ntasks"], "--ntasks") if ntasks_set else 1
    tpn = _positive_int(opts["ntasks-per-node"], "--ntasks-per-node") if "ntasks-per-node" in opts else None
    extra_set = "extra-node-info" in opts
    sockets, cores, threads = _extra_node_info(opts["extra-node-info"]) if extra_set else [None, None, None]
    if "sockets-per-node" in opts:
        sockets = _positive_int(opts["sockets-per-node"], "--sockets-per-node")
    if "cores-per-socket" in opts:
        cores = _positive_int(opts["cores-per-socket"], "--cores-per-socket")
    if "threads-per-core" in opts:
        threads = _positive_int(opts["threads-per-core"], "--threads-per-core")

    # sbatch's _opt_verify: tasks from tasks per node, or one per node (x sockets x cores x
    # threads); a task count below the node counts lowers them.
    if tpn is not None and not ntasks_set and (max_nodes == 0 or min_nodes == max_nodes):
        ntasks, ntasks_set = min_nodes * tpn, True
    if (nodes_set or extra_set) and (min_nodes == max_nodes or max_nodes == 0) and not ntasks_set:
        ntasks = max(min_nodes, 1)
        for n in (sockets, cores, threads):
            if n is not None:
                ntasks, ntasks_set = ntasks * n, True
    elif nodes_set and ntasks_set:
        max_nodes = min(max_nodes, ntasks)
        if ntasks < min_nodes:
            min_nodes = max_nodes = ntasks

    tres_per_node = _fmt_tres(None, opts.get("gpus-per-node"))
    gres = opts.get("gres")
    if gres and gres.lower() != "none":
        tres_per_node = f"{tres_per_node},{_gres_tres(gres)}" if tres_per_node else _gres_tres(gres)
    for fld, value in (("tres_per_job", _fmt_tres(None, opts.get("gpus"))), ("tres_per_node", tres_per_node),
                       ("tres_per_socket", _fmt_tres(None, opts.get("gpus-per-socket"))),
                       ("tres_per_task", _fmt_tres(None, opts.get("gpus-per-task")))):
        if value:
            d[fld] = value
    if nodes_set:
        d["min_nodes"] = min_nodes
        if max_nodes:
            d["max_nodes"] = max_nodes
    if ntasks_set:
        d["num_tasks"] = ntasks
    if tpn is not None:
        d["ntasks_per_node"] = tpn
    if sockets is not None:
        d["sockets_per_node"] = sockets
    shared = _shared(opts)
    if shared is not None:
        d["shared"] = shared
    if "time" in opts:
        minutes = parse_time_min(opts["time"])
        d["time_limit"] = INFINITE if minutes is None else minutes
    if opts.get("partition"):
        d["partition"] = opts["partition"]
    if opts.get("array"):
        d["array_inx"] = opts["array"]
    _gres_validate(d, "cpus-per-task" in opts)
    return d


def _options(argv: list[str], script_text: str | None, env: Mapping[str, str] | None) -> dict[str, str]:
    """sbatch's options in its order of precedence: #SBATCH lines, then SBATCH_* variables,
    then the command line.  When ``script_text`` is None and ARGV names a script file, that
    file is read."""
    cli, script_path = _scan(list(argv), "command line")
    if script_text is None and script_path is not None and "wrap" not in cli:
        try:
            script_text = Path(script_path).read_text()
        except OSError as e:
            raise InputError(f"cannot read batch script {script_path}: {e.strerror}") from None
    opts: dict[str, str] = {}
    layers = []
    if script_text:
        layers.append(_scan(_script_args(script_text), "#SBATCH")[0])
    if env:
        layers.append({name: env[var] for var, name in SBATCH_ENV.items() if var in env})
    layers.append(cli)
    for layer in layers:
        for name, value in layer.items():
            _put(opts, name, value)
    return opts


def parse_sbatch_args(argv: list[str], script_text: str | None = None,
                      env: Mapping[str, str] | None = None) -> GpuRequest:
    """GPU request of ``sbatch ARGV`` with the batch script's ``#SBATCH`` lines and, when
    ``env`` is given, its ``SBATCH_*`` variables (the command line wins over both)."""
    opts = _options(argv, script_text, env)
    # Values sbatch itself would refuse are one InputError line, before anything is priced.
    for opt, gres in (("gres", True), ("gpus-per-node", False), ("gpus", False), ("gpus-per-task", False),
                      ("gpus-per-socket", False)):
        if opt in opts:
            _gpu_list(opts[opt], f"--{opt}", gres=gres)
    array_size = parse_array_size(opts["array"]) if "array" in opts else 1
    desc = sbatch_job_desc(opts)
    view = view_from_job_desc(desc)

    neutral = PriceParams()
    nodes, form_specs = _forms(view, neutral)
    forms: list[GpuForm] = []
    per_node: int | None = None
    for tres, mult, per_node_mult in form_specs:
        entries = [(t, int(c)) for t, c in hook_gpu_entries(tres)]
        if not entries:
            continue
        if per_node_mult is not None:
            per_node = max(per_node or 0, sum(c for _, c in entries) * per_node_mult)
        form = tuple((t, c * mult) for t, c in entries)
        if sum(c for _, c in form) > 0:
            forms.append(form)
    types = sorted({t for f in forms for t, _ in f if t is not None})
    tl = view.time_limit
    return GpuRequest(
        gpus_total=max((sum(c for _, c in f) for f in forms), default=0),
        gpus_per_node=per_node,
        gpu_type="+".join(types) if types else None,
        nodes=nodes,
        ntasks=view.num_tasks,
        time_limit_min=tl if isinstance(tl, int) else None,
        array_size=array_size,
        account=opts.get("account") or None,
        partition=opts.get("partition") or None,
        job_name=opts.get("job-name") or None,
        time_unlimited=tl == UNLIMITED,
        forms=tuple(forms),
        job_desc=desc,
        view=view,
    )


def worst_case_gpu_seconds(req: GpuRequest, weights: dict[str, float], default_weight: float = 1.0,
                           default_time_min: int = 60, max_time_min: int | None = None) -> float:
    """Weighted GPU-seconds the hook charges for ``req`` in one partition whose DefaultTime is
    ``default_time_min`` and MaxTime ``max_time_min`` (without which a job with
    ``--time=UNLIMITED`` cannot be priced), whatever partition the request names.  Untyped
    GPUs and types missing from ``weights`` cost ``default_weight``.  ``hook_price`` does the
    pricing; use it directly for real partitions and snapshot parameters."""
    part = HookPartition("default", default_time=default_time_min, max_time=max_time_min, default=True)
    params = PriceParams(weights=weights, default_weight=default_weight, default_time_min=default_time_min)
    p = hook_price(dataclasses.replace(req.view, partition=None), params, [part])
    if isinstance(p, HookRefusal):
        if p.reason == "bad_time":
            raise InputError("--time: a job without a time limit cannot be priced; give a finite --time")
        raise InputError(p.message)
    return float(p.cost) if p.any_gpu else 0.0
