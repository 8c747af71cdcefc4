"""The planner: a workflow DAG -> Slurm allocations, each with its options and worst-case price.

Pilot style: steps of the same shape whose worst-case windows touch share one allocation,
sized for their peak concurrency; an allocation ends where a gap begins (no GPU is held idle
while upstream work runs elsewhere) or where the partition's time limit would be crossed.
When the peak needs more nodes than the partition can give, steps queue inside the allocation:
its time grows by the wait, and so do its steps' worst-case ends and everything after them.
A request that can never be placed is refused here, with the reason, before anything queues.

Pure: no I/O. On Slurm 22.05 an NVLink domain is a node unless the site declares multi-node
domains; those are requested with a matching-OR constraint (``--constraint=[nvl1|nvl2]``),
which Slurm satisfies with nodes that all carry the same one of the features. A site whose
Slurm runs topology/block (23.11 on, ``nvlink_blocks``) has its domains as Slurm's blocks: the
allocation asks ``--segment=<its nodes>``, one segment, which Slurm keeps inside one block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from slurmgov.context.kv_size import GIB, KVNeed, need_fp8_if_needed
from slurmgov.errors import InfeasibleError, InputError
from slurmgov.intent.jobspec import Step, Workflow, topo_order
from slurmgov.policy.pricing import gpu_hours, split
from slurmgov.site.model import Site
from slurmgov.site.units import format_time

SWITCH_WAIT = "00:10:00"  # how long Slurm may hold a leaf-switch allocation for one leaf
MAX_PASSES = 8  # schedule/allocate rounds until the waits inside allocations settle (two, usually)
HOST = "host"  # steps with no GPUs run on the submitting host: no Slurm job, no GPU cost


@dataclass
class PlannedStep:
    id: str
    alloc: str
    gpus: int
    nodes: int
    gpus_per_node: int
    gpu_type: str | None
    cpus: int
    memory_mb: int
    time_s: int
    retries: int
    within: str
    after: tuple[str, ...]
    start_s: int  # worst-case schedule, seconds from the workflow's start
    end_s: int  # start + every attempt + the wait for room in its allocation
    share_h: float = 0.0  # this step's part of its allocation's worst case (the hold share)
    kv_bytes: int = 0
    weight_bytes: int = 0
    kv_dtype: str | None = None  # the KV cache's dtype as planned (None: no context)
    kv_fp8_saves_gpus: int = 0  # planned in fp8 because the model's dtype needs this many GPUs
    context_share: str | None = None
    queue_s: int = 0  # worst-case wait for room inside its allocation

    @property
    def worst_gpu_s(self) -> int:
        return self.gpus * self.time_s * (1 + self.retries)

    @property
    def run_s(self) -> int:
        """Every attempt, back to back: the step's worst case once it has room to run."""
        return self.time_s * (1 + self.retries)

    @property
    def busy_end_s(self) -> int:
        """The end of its worst case had it not waited: the window allocations are grouped by."""
        return self.start_s + self.run_s


@dataclass
class Allocation:
    id: str
    kind: str  # "gpu" (one Slurm job) or "host" (the submitting host)
    partition: str | None
    gpu_type: str | None
    nodes: int
    gpus_per_node: int
    cpus_per_node: int
    memory_mb: int
    time_s: int
    within: str
    weight: float
    start_s: int
    end_s: int
    steps: list[str] = field(default_factory=list)
    constraint: str | None = None
    segment: int | None = None  # topology/block: nodes Slurm keeps inside one block (--segment)
    cost_h: float = 0.0
    notes: list[str] = field(default_factory=list)
    queue_s: int = 0  # how long a step may wait for room (its peak needs more nodes than it gets)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def slurm_options(self, workflow: str, account: str) -> list[str]:
        if self.kind == HOST:
            return []
        opts = [
            f"--job-name=sg.{workflow}.{self.id}",
            f"--account={account}",
            f"--partition={self.partition}",
            f"--nodes={self.nodes}",
            "--ntasks-per-node=1",
            f"--gpus-per-node={self.gpu_type + ':' if self.gpu_type else ''}{self.gpus_per_node}",
            f"--cpus-per-task={self.cpus_per_node}",
            f"--time={format_time(self.time_s)}",
        ]
        if self.memory_mb:
            opts.append(f"--mem={self.memory_mb}M")
        if self.within == "leaf-switch" and self.nodes > 1:
            opts.append(f"--switches=1@{SWITCH_WAIT}")
        if self.constraint:
            opts.append(f"--constraint={self.constraint}")
        if self.segment:
            opts.append(f"--segment={self.segment}")
        # what the job asked of the topology, so placement reports can tell whether it got it
        opts.append(f"--comment=slurmgov:wf={workflow},alloc={self.id},within={self.within}")
        return opts


@dataclass
class Plan:
    workflow: str
    account: str
    site: str
    steps: dict[str, PlannedStep]
    allocations: list[Allocation]
    notes: list[str]

    @property
    def cost_h(self) -> float:
        return sum(a.cost_h for a in self.allocations)

    @property
    def makespan_s(self) -> int:
        return max((s.end_s for s in self.steps.values()), default=0)

    def shares(self) -> dict[str, float]:
        return {s.id: s.share_h for s in self.steps.values()}

    def allocation(self, alloc_id: str) -> Allocation:
        return next(a for a in self.allocations if a.id == alloc_id)

    def to_dict(self) -> dict:
        return {
            "workflow": self.workflow,
            "account": self.account,
            "site": self.site,
            "worst_case_gpu_hours": round(self.cost_h, 6),
            "worst_case_makespan_s": self.makespan_s,
            "allocations": [
                {**_fields(a), "gpus": a.gpus, "slurm_options": a.slurm_options(self.workflow, self.account)}
                for a in self.allocations
            ],
            "steps": [_fields(s) for s in self.steps.values()],
            "notes": self.notes,
        }


class _Fitting:
    """The partition's nodes that can hold a per-node request (GPUs, CPUs, memory), worked out
    once per distinct request: 10,000 steps on 4,096 nodes ask only a handful."""

    def __init__(self, topo, partition: str):
        self.topo, self.partition = topo, partition
        self._memo: dict[tuple, tuple[str, ...]] = {}

    def __call__(self, gpu_type: str | None, gpus_per_node: int, cpus: int, memory_mb: int) -> tuple[str, ...]:
        key = (gpu_type, gpus_per_node, cpus, memory_mb)
        if key not in self._memo:
            nodes = self.topo.nodes
            self._memo[key] = tuple(
                n for n in self.topo.eligible(self.partition, gpu_type, gpus_per_node)
                # a node that declares no memory passes: Slurm will judge
                if nodes[n].cpus >= cpus and (not memory_mb or not nodes[n].memory_mb or nodes[n].memory_mb >= memory_mb)
            )
        return self._memo[key]


def _fields(obj) -> dict:
    """A flat dataclass as a dict, as ``asdict`` makes it but without its deep copies (a
    quarter of `plan --json`'s time for 10,000 steps): lists are copied, the rest is immutable."""
    return {f.name: (list(v) if isinstance(v := getattr(obj, f.name), list) else v) for f in fields(obj)}


def plan(wf: Workflow, site: Site) -> Plan:
    try:
        partition = site.partition(wf.partition)
    except InputError as exc:
        raise InputError(_located(wf.where("partition"), f"partition: {exc}")) from None
    fitting = _Fitting(site.topology, partition.name)
    order = topo_order(wf)
    steps: dict[str, PlannedStep] = {}
    for st in order:
        try:
            steps[st.id] = _resolve(st, site, partition, fitting)
        except InfeasibleError as exc:  # name the step's file and line, as jobspec errors do
            raise InfeasibleError(_located(wf.where_step(st.id), str(exc))) from None

    # Waits inside allocations delay what comes after, which can regroup later allocations:
    # schedule and allocate again until every step's wait is the one its allocation gives it.
    waits: dict[str, int] = {}
    for _ in range(MAX_PASSES):
        _schedule(order, steps, waits)
        allocations = _allocate(steps, site, partition, fitting)
        found = {sid: a.queue_s for a in allocations for sid in a.steps}
        if all(w == waits.get(sid, 0) for sid, w in found.items()):
            break
        waits = found
    else:  # still moving: keep the larger wait of the last two rounds, and stretch what it outgrows
        waits = {sid: max(w, waits.get(sid, 0)) for sid, w in found.items()}
        _schedule(order, steps, waits)
        _cover(allocations, steps, partition)

    # Allocations in the order they would start, numbered in that order.
    allocations.sort(key=lambda a: (a.start_s, a.kind == HOST, a.id))
    for i, a in enumerate(allocations, 1):
        new = f"a{i}"
        for sid in a.steps:
            steps[sid].alloc = new
        a.id = new
    notes = [f"{a.id}: {n}" for a in allocations for n in a.notes]
    for a in allocations:
        members = [steps[s] for s in a.steps]
        a.end_s = max(m.end_s for m in members)
        for ps, share in zip(members, split(a.cost_h, [m.worst_gpu_s for m in members])):
            ps.share_h = share
    notes.extend(_context_notes(steps, {a.id: a for a in allocations}))
    return Plan(wf.workflow, wf.account, site.site, steps, allocations, notes)


def _schedule(order: list[Step], steps: dict[str, PlannedStep], waits: dict[str, int]) -> None:
    """Worst-case start and end of every step: after its last dependency's end, plus its wait."""
    for st in order:
        ps = steps[st.id]
        ps.queue_s = waits.get(st.id, 0)
        ps.start_s = max((steps[d].end_s for d in st.after), default=0)
        ps.end_s = ps.busy_end_s + ps.queue_s


def _allocate(steps: dict[str, PlannedStep], site: Site, partition, fitting: _Fitting) -> list[Allocation]:
    groups: dict[tuple, list[PlannedStep]] = {}
    for ps in steps.values():
        key: tuple
        if ps.gpus == 0:
            key = (HOST,)
        elif ps.nodes == 1:
            key = ("single", ps.gpu_type)
        else:
            key = ("multi", ps.gpu_type, ps.nodes, ps.gpus_per_node, ps.within)
        groups.setdefault(key, []).append(ps)
    allocations: list[Allocation] = []
    for key, members in groups.items():
        for window in _windows(members, None if key[0] == HOST else partition.max_time_s):
            allocations.append(_size(key, window, site, partition, fitting, f"a{len(allocations) + 1}"))
    return allocations


def _cover(allocations: list[Allocation], steps: dict[str, PlannedStep], partition) -> None:
    """Stretch an allocation whose steps' worst-case span outgrew its time (when the waits did
    not settle in MAX_PASSES rounds), up to the partition's limit."""
    for a in allocations:
        if a.kind == HOST:
            continue
        span = max(steps[s].end_s for s in a.steps) - min(steps[s].start_s for s in a.steps)
        if partition.max_time_s:
            span = min(span, partition.max_time_s)
        if span > a.time_s:
            a.time_s = math.ceil(span / 60) * 60
            a.cost_h = gpu_hours(a.gpus, a.time_s, a.weight)


def _located(where: str | None, msg: str) -> str:
    return f"{where}: {msg}" if where else msg


def _resolve(st: Step, site: Site, partition, fitting: _Fitting) -> PlannedStep:
    """Defaults filled in, and every way the step could never be placed refused."""
    topo = site.topology
    r = st.resources
    pname = partition.name
    time_s = r.time_s or partition.default_time_s
    if partition.max_time_s and time_s > partition.max_time_s:
        raise InfeasibleError(
            f"step {st.id!r}: time limit {format_time(time_s)} exceeds partition {pname}'s maximum {format_time(partition.max_time_s)}"
        )
    gpu_type = r.gpu_type
    within = st.placement
    kv = None
    kv_dtype, fp8_saves = (st.context.shape.dtype if st.context else None), 0
    if r.gpus:
        types = topo.gpu_types(pname)
        if gpu_type is None and len(types) == 1:
            gpu_type = types[0]
        if gpu_type is not None and gpu_type not in types:
            raise InfeasibleError(
                f"step {st.id!r}: no {gpu_type} GPUs in partition {pname} (it has: {', '.join(types) or 'no GPUs'})"
            )
        gpn = r.gpus_per_node
        tname = gpu_type or "GPU"
        if within == "nvlink-domain":
            largest = topo.domain_gpus(pname, gpu_type)
            if r.gpus > largest:
                raise InfeasibleError(
                    f"step {st.id!r}: needs {r.gpus} GPUs in one NVLink domain; the largest NVLink domain "
                    f"in partition {pname} has {largest} {tname}"
                )
        biggest = topo.node_gpus(pname, gpu_type)
        if gpn > biggest:
            hint = f"; spread it with nodes: {math.ceil(r.gpus / biggest)}" if biggest and st.within != "node" else ""
            raise InfeasibleError(
                f"step {st.id!r}: needs {gpn} GPUs on one node; the largest {tname} node in partition {pname} has {biggest}{hint}"
            )
        eligible = topo.eligible(pname, gpu_type, gpn)
        # CPUs and memory are per node, like GPUs: asking more than a node has is refused, never cut
        if not fitting(gpu_type, gpn, r.cpus, 0):
            most = max(topo.nodes[n].cpus for n in eligible)
            raise InfeasibleError(
                f"step {st.id!r}: needs {r.cpus} CPUs per node; the largest {tname} node in partition {pname} has {most}"
            )
        if not fitting(gpu_type, gpn, 1, r.memory_mb):
            most = max(topo.nodes[n].memory_mb for n in eligible)
            raise InfeasibleError(
                f"step {st.id!r}: needs {r.memory_mb} MB of memory per node; the largest {tname} node in "
                f"partition {pname} has {most} MB"
            )
        eligible = fitting(gpu_type, gpn, r.cpus, r.memory_mb)
        if not eligible:
            raise InfeasibleError(
                f"step {st.id!r}: needs {r.cpus} CPUs and {r.memory_mb} MB of memory on one {tname} node; "
                f"no node in partition {pname} has both"
            )
        if r.nodes > len(eligible):
            raise InfeasibleError(
                f"step {st.id!r}: needs {r.nodes} nodes with {gpn} {tname} each; partition {pname} has {len(eligible)}"
            )
        if within == "leaf-switch" and r.nodes > 1:
            most, _ = topo.max_per_group(pname, gpu_type, gpn, "leaf-switch")
            if r.nodes > most:
                raise InfeasibleError(
                    f"step {st.id!r}: needs {r.nodes} nodes under one leaf switch; "
                    f"at most {most} eligible nodes share a leaf in partition {pname}"
                )
        if within == "nvlink-domain" and r.nodes > 1 and not topo.domains_with(pname, gpu_type, r.nodes, gpn):
            raise InfeasibleError(f"step {st.id!r}: no NVLink domain in partition {pname} has {r.nodes} nodes with {gpn} {tname} each")
        if st.context is not None:
            mem = site.gpu_types[gpu_type].memory_gb if gpu_type else min(t.memory_gb for t in site.gpu_types.values())
            ctx = st.context
            kv, kv8 = need_fp8_if_needed(ctx.shape, ctx.tokens, ctx.sequences, r.gpus, mem)
            if kv8 is not None and ctx.kv_fp8 == "if-needed":
                if not kv8.fits:
                    raise InfeasibleError(_kv_refusal(st.id, kv8, tname, mem, " with an fp8 KV cache"))
                kv, kv_dtype, fp8_saves = kv8, "fp8", kv.gpus_needed
            elif not kv.fits:
                hint = "" if kv8 is None or not kv8.fits else "; an fp8 KV cache would fit (context: {kv_fp8: if-needed})"
                raise InfeasibleError(_kv_refusal(st.id, kv, tname, mem) + hint)
    elif r.nodes > 1:
        raise InfeasibleError(f"step {st.id!r}: a step without GPUs runs on the submitting host; it cannot span {r.nodes} nodes")
    elif st.context is not None:
        s = st.context.shape
        kv = KVNeed(s.bytes_per_token * st.context.tokens * st.context.sequences, s.weight_bytes, 0, 0, 0)
    return PlannedStep(
        id=st.id, alloc="", gpus=r.gpus, nodes=r.nodes, gpus_per_node=r.gpus_per_node, gpu_type=gpu_type,
        cpus=r.cpus, memory_mb=r.memory_mb, time_s=time_s, retries=st.retries, within=within,
        after=st.after, start_s=0, end_s=0,
        kv_bytes=kv.kv_bytes if kv else 0, weight_bytes=kv.weight_bytes if kv else 0,
        kv_dtype=kv_dtype, kv_fp8_saves_gpus=fp8_saves,
        context_share=st.context.share if st.context else None,
    )


def _kv_refusal(step_id: str, kv: KVNeed, tname: str, mem_gb: float, how: str = "") -> str:
    return (
        f"step {step_id!r}: context needs {kv.total_bytes / GIB:.1f} GiB{how} (KV {kv.kv_bytes / GIB:.1f} + weights "
        f"{kv.weight_bytes / GIB:.1f}); {kv.gpus_asked} x {tname} ({mem_gb:g} GiB) is too little; ask for at least {kv.gpus_needed} GPUs"
    )


def _windows(members: list[PlannedStep], max_time_s: int | None):
    """Split a group into runs of steps whose worst-case windows touch, each within the time limit."""
    members = sorted(members, key=lambda p: (p.start_s, p.id))
    cur: list[PlannedStep] = []
    start = end = 0
    for ps in members:
        too_long = max_time_s is not None and max(end, ps.busy_end_s) - start > max_time_s
        if cur and (ps.start_s > end or too_long):
            yield cur
            cur = []
        if not cur:
            start, end = ps.start_s, ps.busy_end_s
        cur.append(ps)
        end = max(end, ps.busy_end_s)
    if cur:
        yield cur


def _peak(members: list[PlannedStep]) -> list[PlannedStep]:
    """The largest set of steps whose worst-case windows overlap (a sweep over start/end events)."""
    events = []
    for i, ps in enumerate(members):
        events.append((ps.start_s, 1, i))
        events.append((ps.busy_end_s, 0, i))  # ends sort before starts at the same instant
    events.sort()
    active: set[int] = set()
    best: list[int] = []
    best_gpus = -1
    for k, (_, kind, i) in enumerate(events):
        if kind:
            active.add(i)
            nxt = events[k + 1] if k + 1 < len(events) else None
            # Measure only at a local maximum: after the last start before an end.
            if nxt is None or nxt[1] == 0 or nxt[0] != events[k][0]:
                g = sum(members[j].gpus for j in active)
                if g > best_gpus:
                    best_gpus, best = g, list(active)
        else:
            active.discard(i)
    return [members[j] for j in best]


def _pack(sizes: list[int], capacity: int) -> list[int]:
    """Best-fit decreasing bin packing of integer GPU counts; returns each bin's fill.

    Counts bins by free capacity, so 10,000 one-GPU steps pack in O(n x capacity)."""
    free = [0] * (capacity + 1)  # free[c]: bins with c GPUs free
    for s in sorted(sizes, reverse=True):
        c = next((c for c in range(s, capacity + 1) if free[c]), None)
        if c is None:
            free[capacity - s] += 1
        else:
            free[c] -= 1
            free[c - s] += 1
    fills = []
    for c, n in enumerate(free):
        fills.extend([capacity - c] * n)
    return fills


def _size(key: tuple, window: list[PlannedStep], site: Site, partition, fitting: _Fitting, alloc_id: str) -> Allocation:
    start = min(p.start_s for p in window)
    end = max(p.busy_end_s for p in window)
    for ps in window:
        ps.alloc = alloc_id
    ids = [p.id for p in window]
    if key[0] == HOST:
        return Allocation(alloc_id, HOST, None, None, 0, 0, max(p.cpus for p in window), 0, end - start, "any", 0.0, start, end, ids)
    topo = site.topology
    pname = partition.name
    gpu_type = key[1]
    weight = site.weight(gpu_type)
    peak = _peak(window)
    longest = max(p.run_s for p in window)
    notes = []
    constraint = None
    need_cpus = max(p.cpus for p in window)
    need_mem = max(p.memory_mb for p in window)
    if key[0] == "single":
        capacity = topo.node_gpus(pname, gpu_type)
        fills = _pack([p.gpus for p in peak], capacity)
        # Every node of a pilot is alike, and any of its steps must fit one of them.
        gpn = max(max(fills), max(p.gpus for p in window))
        fit = fitting(gpu_type, gpn, need_cpus, need_mem)
        if not fit:  # the nodes with that many GPUs lack the CPUs or memory: pack onto the step-sized ones
            gpn = max(p.gpus for p in window)
            fills = _pack([p.gpus for p in peak], gpn)
            fit = fitting(gpu_type, gpn, need_cpus, need_mem)
        if not fit:
            notes.append(f"no {gpu_type or 'GPU'} node in partition {pname} has {gpn} GPUs, {need_cpus} CPUs and "
                         f"{need_mem} MB at once, as its steps together ask; Slurm may never start it")
        available = len(fit) or len(topo.eligible(pname, gpu_type, gpn))
        nodes = min(len(fills), available)
        rounds = math.ceil(len(fills) / nodes)
        within = "node"
    else:
        _, _, step_nodes, gpn, within = key
        concurrent = len(peak)
        if within == "leaf-switch":
            room, _ = topo.max_per_group(pname, gpu_type, gpn, "leaf-switch")
        elif within == "nvlink-domain":
            doms = topo.domains_with(pname, gpu_type, step_nodes, gpn)
            room = max(topo.domain_room(d) for d in doms)
            if not site.nvlink_blocks:
                constraint = "[" + "|".join(doms) + "]"
        else:
            room = len(topo.eligible(pname, gpu_type, gpn))
        at_once = max(1, room // step_nodes)  # steps the partition can place side by side
        nodes = min(concurrent, at_once) * step_nodes
        rounds = math.ceil(concurrent / min(concurrent, at_once))
    queue_s = (rounds - 1) * longest  # the last round may start only when the ones before it end
    time_s = end - start + queue_s
    if rounds > 1:
        notes.append(f"peak needs {rounds}x the nodes the partition can give at once; steps queue inside the allocation")
    if partition.max_time_s and time_s > partition.max_time_s:
        notes.append(f"queued steps stretch the allocation past {format_time(partition.max_time_s)}; it is capped there")
        time_s = partition.max_time_s
    time_s = math.ceil(time_s / 60) * 60  # Slurm counts minutes
    # Ask for what the smallest node that fits every step has; never less than one step asked for.
    fit = fitting(gpu_type, gpn, need_cpus, need_mem) or topo.eligible(pname, gpu_type, gpn)
    node_cpus = max(need_cpus, min((topo.nodes[n].cpus for n in fit), default=1))
    per_node = max(1, math.ceil(len(peak) / max(1, nodes)))
    together = sum(p.cpus for p in peak) // max(1, nodes)
    cpus = min(node_cpus, max(need_cpus, together))
    if together > cpus:
        notes.append(f"steps sharing a node ask for {together} CPUs together; its nodes have {cpus}, which they share")
    mem = need_mem * (per_node if key[0] == "single" else 1)
    node_mem = max(need_mem, min((topo.nodes[n].memory_mb for n in fit), default=0))
    if node_mem and mem > node_mem:  # steps sharing a node share its memory; ask for no more than it has
        mem = node_mem
    segment = nodes if within == "nvlink-domain" and site.nvlink_blocks and key[0] != "single" else None
    a = Allocation(
        alloc_id, "gpu", pname, gpu_type, nodes, gpn, cpus, mem, time_s, within, weight, start, end, ids,
        constraint=constraint, segment=segment, notes=notes, queue_s=queue_s,
    )
    a.cost_h = gpu_hours(a.gpus, time_s, weight)
    return a


def _context_notes(steps: dict[str, PlannedStep], allocs_by_id: dict[str, Allocation]) -> list[str]:
    shared: dict[str, list[PlannedStep]] = {}
    for ps in steps.values():
        if ps.context_share:
            shared.setdefault(ps.context_share, []).append(ps)
    notes = [
        f"step {ps.id!r}: KV cache planned in fp8 (e4m3); at the model's dtype it needs {ps.kv_fp8_saves_gpus} GPUs, "
        f"it asked for {ps.gpus}"
        for ps in steps.values() if ps.kv_fp8_saves_gpus
    ]
    for key, members in shared.items():
        if len(members) < 2:
            continue
        allocs = sorted({m.alloc for m in members})
        names = ", ".join(m.id for m in members)
        if len(allocs) == 1:
            a = allocs_by_id[allocs[0]]
            where = "one node" if a.nodes == 1 else f"{a.nodes} nodes; each step prefers the node that already holds it"
            notes.append(f"context {key!r}: steps {names} share allocation {allocs[0]} ({where}) and can reuse one KV prefix")
        else:
            notes.append(f"context {key!r}: steps {names} land in allocations {', '.join(allocs)}; the KV prefix is rebuilt in each")
    return notes
