"""Cheaper versions of a workflow whose worst case does not fit: each priced by the planner
(the same price `slurmgov run` holds) and each saying what it gives up.

Four kinds of change, each tried from the least given up to the most, the first that fits kept:

- ``fewer-branches``: a fan-out (steps of one shape after the same steps) keeps fewer branches;
  a step left with only dropped steps before it is dropped too;
- ``gpu-type``: the GPU steps on a type the site weighs less (``gpu_types.<type>.weight``);
- ``shorter-time``: no retries, then every GPU step's time limit cut to 3/4, 1/2, 1/4;
- ``smaller-context``: a multi-GPU step with a context on fewer GPUs, with its context tokens cut
  or a smaller model preset where its KV cache and weights would no longer fit.

Pure: no I/O. A jobspec is handled as its data (what its YAML reads as); each candidate goes
back through the jobspec's own validation (``jobspec.loads`` of its JSON, which is YAML) and the
planner, so a candidate the planner refuses is never offered.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass

from slurmgov.context.kv_size import PRESETS
from slurmgov.errors import SlurmgovError
from slurmgov.intent import jobspec, planner
from slurmgov.intent.planner import Plan
from slurmgov.site.model import Site
from slurmgov.site.units import format_time

MAX_BRANCH_CUTS = 8  # at most this many "k of n branches" candidates per fan-out
TIME_FRACTIONS = (0.75, 0.5, 0.25)
MIN_TIME_S = 60
TOKEN_CUTS = (2, 4, 8)


@dataclass
class Alternative:
    kind: str
    gives_up: str
    data: dict  # the changed jobspec
    plan: Plan

    @property
    def cost_h(self) -> float:
        return self.plan.cost_h

    def jobspec_text(self) -> str:
        return json.dumps(self.data, indent=1, default=str)  # JSON is YAML: submit it as it is


def price(data: dict, site: Site, name: str = "<alternative>") -> Plan:
    """The plan of a jobspec given as data (InputError, InfeasibleError as the planner's)."""
    return planner.plan(jobspec.loads(json.dumps(data, default=str), name), site)


def cheaper(data: dict, site: Site, base: Plan, available_h: float, limit: int = 3) -> tuple[list[Alternative], float | None]:
    """Up to ``limit`` alternatives whose worst case fits ``available_h`` (at most one per kind,
    the one that gives up least), dearest first; and the cheapest worst case any candidate had
    (None: no candidate could be planned), for saying by how much nothing fits."""
    found: list[Alternative] = []
    cheapest: float | None = None
    for kind, candidates in _KINDS:
        for gives_up, changed in candidates(data, base, site):
            try:
                p = price(changed, site)
            except SlurmgovError:
                continue  # the planner refuses it (a type without room, a context that no longer fits)
            cheapest = p.cost_h if cheapest is None else min(cheapest, p.cost_h)
            if p.cost_h <= available_h + 1e-9 and p.cost_h < base.cost_h:
                found.append(Alternative(kind, gives_up, changed, p))
                break
    found.sort(key=lambda a: -a.cost_h)
    return found[:limit], cheapest


def _steps(data: dict) -> list[dict]:
    return [s for s in data.get("steps") or [] if isinstance(s, dict)]


def _resources(step: dict) -> dict:
    res = step.get("resources")
    if not isinstance(res, dict):
        res = step["resources"] = {}
    return res


def _after(step: dict) -> list[str]:
    a = step.get("after") or []
    return [a] if isinstance(a, str) else list(a)


def _shape(step: dict) -> str:
    """What makes two steps branches of one fan-out: everything but their id and params."""
    return json.dumps({k: v for k, v in step.items() if k not in ("id", "params")}, sort_keys=True, default=str)


def _fanouts(data: dict) -> list[list[str]]:
    groups: dict[tuple, list[str]] = {}
    for s in _steps(data):
        groups.setdefault((tuple(sorted(_after(s))), _shape(s)), []).append(str(s.get("id")))
    return sorted((g for g in groups.values() if len(g) > 1), key=len, reverse=True)


def _drop(data: dict, dropped: set[str]) -> tuple[dict, list[str]]:
    """``data`` without ``dropped``, nor any step all of whose dependencies are dropped."""
    gone = set(dropped)
    while True:
        more = {str(s.get("id")) for s in _steps(data)
                if str(s.get("id")) not in gone and _after(s) and all(a in gone for a in _after(s))}
        if not more:
            break
        gone |= more
    out = copy.deepcopy(data)
    out["steps"] = [s for s in _steps(out) if str(s.get("id")) not in gone]
    for s in out["steps"]:
        if "after" in s:
            s["after"] = [a for a in _after(s) if a not in gone]
    return out, sorted(gone, key=[str(s.get("id")) for s in _steps(data)].index)


def _fewer_branches(data: dict, base: Plan, site: Site) -> Iterator[tuple[str, dict]]:
    for group in _fanouts(data)[:1]:  # the widest fan-out
        n = len(group)
        for k in range(n - 1, max(0, n - 1 - MAX_BRANCH_CUTS), -1):
            changed, gone = _drop(data, set(group[k:]))
            yield f"{k} of {n} parallel branches: {', '.join(gone)} not run", changed


def _gpu_type(data: dict, base: Plan, site: Site) -> Iterator[tuple[str, dict]]:
    gpu_steps = [s for s in base.steps.values() if s.gpus]
    if not gpu_steps:
        return
    dearest = max(site.weight(s.gpu_type) for s in gpu_steps)
    for name, t in sorted(site.gpu_types.items(), key=lambda kv: -kv[1].weight):
        if t.weight >= dearest:
            continue
        changed = copy.deepcopy(data)
        moved = []
        part = _partition_with(site, name, data.get("partition"))
        if part is None:
            continue
        if part != site.partition(data.get("partition")).name:
            changed["partition"] = part
            moved.append(f"partition {part}")
        for s in _steps(changed):
            ps = base.steps.get(str(s.get("id")))
            if ps and ps.gpus and site.weight(ps.gpu_type) > t.weight:
                _resources(s)["gpu_type"] = name
                moved.append(f"{ps.id} ({ps.gpu_type or 'any'}, weight {site.weight(ps.gpu_type):g})")
        yield (f"GPU type {name} (weight {t.weight:g}, {t.memory_gb:g} GB) instead of: {', '.join(moved)}; "
               f"slower GPUs may need more time"), changed


def _partition_with(site: Site, gpu_type: str, current) -> str | None:
    """The workflow's partition if it has ``gpu_type``, else the first that has (the default first)."""
    names = [p.name for p in sorted(site.partitions, key=lambda p: not p.default)]
    if isinstance(current, str) and current in names:
        names.insert(0, current)
    return next((n for n in names if gpu_type in site.topology.gpu_types(n)), None)


def _shorter_time(data: dict, base: Plan, site: Site) -> Iterator[tuple[str, dict]]:
    retried = [s for s in _steps(data) if s.get("retries")]
    if retried:
        changed = copy.deepcopy(data)
        for s in _steps(changed):
            s.pop("retries", None)
        yield f"no retries: a failed attempt of {', '.join(str(s.get('id')) for s in retried)} is not run again", changed
    for f in TIME_FRACTIONS:
        changed = copy.deepcopy(data)
        cut = []
        for s in _steps(changed):
            ps = base.steps.get(str(s.get("id")))
            if ps and ps.gpus:
                new = max(MIN_TIME_S, int(ps.time_s * f))
                if new < ps.time_s:
                    _resources(s)["time"] = format_time(new)
                    cut.append(f"{ps.id} {format_time(ps.time_s)} -> {format_time(new)}")
        if cut:
            yield f"time limits cut to {f:.0%}: {'; '.join(cut)}; a step still running at its limit is killed", changed


def _smaller_context(data: dict, base: Plan, site: Site) -> Iterator[tuple[str, dict]]:
    for s in _steps(data):
        ps = base.steps.get(str(s.get("id")))
        ctx = s.get("context")
        if not ps or not isinstance(ctx, dict) or ps.gpus < 2 or ps.nodes != 1:
            continue
        tokens = ctx.get("tokens")
        model = ctx.get("model")
        smaller = sorted((n for n, p in PRESETS.items() if isinstance(model, str) and model in PRESETS
                          and 0 < p["params_b"] < PRESETS[model]["params_b"]),
                         key=lambda n: -PRESETS[n]["params_b"])
        gpus = ps.gpus // 2
        while gpus >= 1:
            options: list[tuple[str, dict]] = [("", {})]
            if isinstance(tokens, int):
                options += [(f", {tokens // c} context tokens instead of {tokens}", {"tokens": tokens // c})
                            for c in TOKEN_CUTS if tokens // c >= 1]
            options += [(f", model {n} instead of {model}", {"model": n}) for n in smaller]
            for what, change in options:
                changed = copy.deepcopy(data)
                st = next(x for x in _steps(changed) if str(x.get("id")) == ps.id)
                _resources(st)["gpus"] = gpus
                st["context"] = {**st["context"], **change}
                yield f"step {ps.id} on {gpus} GPUs instead of {ps.gpus}{what}", changed
            gpus //= 2


_KINDS = (("fewer-branches", _fewer_branches), ("gpu-type", _gpu_type), ("shorter-time", _shorter_time),
          ("smaller-context", _smaller_context))
