"""Placement and fragmentation: pure reports, fed from the live cluster and kept over time.

``placement_report`` and ``fragmentation`` work on any jobs or busy-GPU counts. Their input
comes from the governor, which samples Slurm now and then (``sample``): which GPUs each node
has in use (``sinfo``'s GresUsed) and where each running job landed (``squeue --json``), with the
locality it asked for when slurmgov planned it (``within=`` in its comment). Samples are
appended to a JSON-lines log (``PlacementLog``); the reports read it back:

- placement: the share of jobs that got the locality they asked for (each job counted once);
- fragmentation: free N-GPU slots per leaf switch and NVLink domain, now and over the window.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import hostlist

from slurmgov.errors import InputError, SlurmgovError
from slurmgov.slurm import commands as slurm_cli

LOCALITY_ORDER = ("node", "nvlink-domain", "leaf-switch", "any")  # tightest first
SLOT_SIZES = (1, 2, 4, 8)
_WITHIN = re.compile(r"(?:^|[,\s])within=(node|nvlink-domain|leaf-switch|any)\b")
_GRES_USED = re.compile(r"gpu(?::[^:(,]+)?:(\d+)")


@dataclass
class Sample:
    t: float
    busy: dict[str, int]  # node -> GPUs in use
    jobs: list[tuple[str, str, list[str]]]  # running jobs: (job id, requested within, nodes)

    def to_json(self) -> str:
        busy = {n: g for n, g in self.busy.items() if g}  # absent means idle: keeps lines short
        return json.dumps({"t": self.t, "busy": busy, "jobs": self.jobs}, separators=(",", ":"))


def busy_gpus(sinfo_out: str, known: set[str]) -> dict[str, int]:
    """Node -> GPUs in use, from ``sinfo -N -h -O NodeList:64,GresUsed:256``."""
    busy: dict[str, int] = {}
    for line in sinfo_out.splitlines():
        parts = line.split(None, 1)
        if len(parts) != 2 or parts[0] not in known:
            continue
        busy[parts[0]] = sum(int(n) for n in _GRES_USED.findall(parts[1]))
    return busy


def running_jobs(squeue_doc: dict, known: set[str]) -> list[tuple[str, str, list[str]]]:
    """Running GPU jobs on the site's nodes: (id, what locality they asked for, nodes)."""
    out = []
    for j in squeue_doc.get("jobs", []):
        if j.get("job_state") != "RUNNING" or "gres/gpu" not in (j.get("tres_alloc_str") or ""):
            continue
        try:
            nodes = hostlist.expand_hostlist(j.get("nodes") or "")
        except hostlist.BadHostlist:
            continue
        if not nodes or any(n not in known for n in nodes):
            continue
        m = _WITHIN.search(j.get("comment") or "")
        # Unplanned jobs asked for nothing tighter than a node if they fit one, else anything.
        within = m.group(1) if m else ("node" if len(nodes) == 1 else "any")
        out.append((str(j["job_id"]), within, nodes))
    return out


def sample(site, env=None) -> Sample:
    """One look at the live cluster (two Slurm commands)."""
    known = set(site.topology.nodes)
    sinfo = slurm_cli.node_gres_used(env=env)
    squeue = slurm_cli.squeue_json(env=env)
    busy = busy_gpus(sinfo, known)
    for n, g in list(busy.items()):  # a node Slurm says is fuller than the site file knows
        busy[n] = min(g, site.topology.nodes[n].gpus)
    return Sample(time.time(), busy, running_jobs(squeue, known))


class PlacementLog:
    """Samples as JSON lines, appended; a torn last line (a crash mid-write) is ignored."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, s: Sample) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(s.to_json() + "\n")

    def read(self, since: float | None = None, until: float | None = None) -> list[Sample]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break
                try:
                    d = json.loads(line)
                    s = Sample(float(d["t"]), {k: int(v) for k, v in d["busy"].items()},
                               [(str(a), str(b), list(c)) for a, b, c in d["jobs"]])
                except (ValueError, KeyError, TypeError):
                    continue  # one bad line never hides the others
                if (since is None or s.t >= since) and (until is None or s.t < until):
                    out.append(s)
        return out


def placement(site, samples: list[Sample]) -> dict:
    """``placement_report`` over every job seen in the samples, each counted once."""
    seen: dict[str, tuple[str, str, list[str]]] = {}
    for s in samples:
        for job in s.jobs:
            if job[2] and all(n in site.topology.nodes for n in job[2]):
                seen.setdefault(job[0], job)
    return placement_report(site, seen.values())


def fragmentation_over_time(site, samples: list[Sample], sizes=SLOT_SIZES) -> dict:
    """Free N-GPU slots per leaf switch: now (the last sample), and min / mean over the samples."""
    if not samples:
        return {"samples": 0, "now": fragmentation(site, {}, sizes), "leaf_switches": {}, "total": {}}
    frames = []
    for s in samples:
        try:
            frames.append(fragmentation(site, s.busy, sizes))
        except InputError:
            continue  # a sample from before the site file changed

    def series(get):
        out = {}
        for k in sizes:
            vals = [get(f)["slots"][k] for f in frames]
            out[k] = {"min": min(vals), "mean": sum(vals) / len(vals), "now": vals[-1]}
        return out

    return {
        "samples": len(frames), "from": samples[0].t, "to": samples[-1].t, "now": frames[-1],
        "leaf_switches": {leaf: series(lambda f, leaf=leaf: f["leaf_switches"][leaf]) for leaf in site.topology.leaves},
        "total": series(lambda f: f["total"]),
    }


def sample_into(site, log: PlacementLog, env=None) -> str | None:
    """Append one sample; return a problem line instead of raising (the governor goes on)."""
    try:
        log.append(sample(site, env))
    except (SlurmgovError, ValueError, OSError) as exc:
        return f"placement sample skipped: {exc}"
    return None


def _rank(within: str, job_id) -> int:
    try:
        return LOCALITY_ORDER.index(within)
    except ValueError:
        raise InputError(f"job {job_id}: requested_within {within!r} is not one of {', '.join(LOCALITY_ORDER)}") from None


def placement_report(site, jobs: Iterable[tuple]) -> dict:
    """How many jobs got the locality they asked for.

    ``jobs``: (job_id, requested_within, nodes) with requested_within one of node,
    nvlink-domain, leaf-switch, any and nodes the job's node names.  A job is satisfied when
    ``site.topology.locality(nodes)`` is at least as tight as asked (node < nvlink-domain <
    leaf-switch < any).  Returns ``{"jobs", "satisfied", "share", "by_request": {within:
    {"jobs", "satisfied", "share"}}, "got": {locality: jobs}, "misses": [{"job_id",
    "requested", "got", "nodes"}]}``; ``share`` is None when there are no jobs.  Unknown
    nodes or an empty node list raise ``InputError``.
    """
    topo = site.topology
    by_request: dict[str, dict] = {w: {"jobs": 0, "satisfied": 0, "share": None} for w in LOCALITY_ORDER}
    got_counts = {w: 0 for w in LOCALITY_ORDER}
    misses = []
    total = ok = 0
    for job in jobs:
        try:
            job_id, within, nodes = job
        except (TypeError, ValueError):
            raise InputError(f"placement_report: expected (job_id, requested_within, nodes), got {job!r}") from None
        want = _rank(within, job_id)
        if isinstance(nodes, str):
            nodes = hostlist.expand_hostlist(nodes)
        nodes = list(nodes)
        if not nodes:
            raise InputError(f"job {job_id}: no nodes")
        unknown = [n for n in nodes if n not in topo.nodes]
        if unknown:
            raise InputError(f"job {job_id}: node {unknown[0]} is not in site {site.site}")
        got = topo.locality(nodes)
        total += 1
        got_counts[got] += 1
        by_request[within]["jobs"] += 1
        if LOCALITY_ORDER.index(got) <= want:
            ok += 1
            by_request[within]["satisfied"] += 1
        else:
            misses.append({"job_id": job_id, "requested": within, "got": got, "nodes": hostlist.collect_hostlist(list(nodes))})
    for r in by_request.values():
        r["share"] = r["satisfied"] / r["jobs"] if r["jobs"] else None
    return {
        "jobs": total,
        "satisfied": ok,
        "share": ok / total if total else None,
        "by_request": by_request,
        "got": got_counts,
        "misses": misses,
    }


def fragmentation(site, busy_gpus: dict[str, int], sizes: Sequence[int] = SLOT_SIZES) -> dict:
    """Free N-GPU slots per leaf switch and per NVLink domain.

    A slot is room for an N-GPU job on one node: a node with F free GPUs gives floor(F/N).
    ``busy_gpus`` maps node name -> GPUs in use (absent: 0).  Returns ``{"sizes",
    "leaf_switches": {leaf: {"free_gpus", "slots": {N: count}}}, "nvlink_domains": {...},
    "total": {"free_gpus", "slots"}}``.  Every GPU node not declared in a multi-node domain is
    its own domain.  Unknown nodes or busy counts outside 0..gpus raise ``InputError``.
    """
    topo = site.topology
    free: dict[str, int] = {}
    for n, busy in busy_gpus.items():
        if n not in topo.nodes:
            raise InputError(f"fragmentation: node {n} is not in site {site.site}")
        if not isinstance(busy, int) or isinstance(busy, bool) or not 0 <= busy <= topo.nodes[n].gpus:
            raise InputError(f"fragmentation: node {n}: busy GPUs {busy!r} outside 0..{topo.nodes[n].gpus}")
    for n, node in topo.nodes.items():
        free[n] = node.gpus - busy_gpus.get(n, 0)

    def summary(members: Iterable[str]) -> dict:
        members = list(members)
        return {
            "free_gpus": sum(free[m] for m in members),
            "slots": {k: sum(math.floor(free[m] / k) for m in members) for k in sizes},
        }

    return {
        "sizes": list(sizes),
        "leaf_switches": {leaf: summary(m) for leaf, m in topo.leaves.items()},
        "nvlink_domains": {d: summary(m) for d, m in topo.domains.items()},
        "total": summary(topo.nodes),
    }
