"""The site's shape: nodes, NVLink domains and the switch tree, with the capacity questions
the planner asks ("how many 4-GPU nodes sit under one leaf switch?").

Pure data; built once per site and cached, so planning 10,000 steps asks cheap questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache


class TopologyError(ValueError):
    """A contradiction in the site's shape. ``kind``, ``name`` and ``field`` name the entry that
    holds it (e.g. "switches", "spine1", "switches"), so a site file can point at its line."""

    def __init__(self, kind: str, name: str, field: str, msg: str):
        super().__init__(msg)
        self.kind, self.name, self.field, self.msg = kind, name, field, msg


@dataclass(frozen=True)
class Node:
    name: str
    gpus: int
    gpu_type: str | None
    cpus: int
    memory_mb: int
    features: tuple[str, ...]


class Topology:
    def __init__(self, nodes, domains, leaves, uppers, partitions, domain_cap: int | None = None):
        self.nodes: dict[str, Node] = {n: Node(n, *v) for n, v in nodes.items()}
        # the most nodes one job keeps inside one domain (Slurm's base block size on a
        # topology/block site, where a block may have more nodes than that); None: all of them
        self.domain_cap = domain_cap
        self.partitions: dict[str, list[str]] = partitions
        self.leaves: dict[str, list[str]] = leaves
        self.uppers: dict[str, list[str]] = uppers
        self._leaf_of: dict[str, str] = {}
        for name, members in leaves.items():
            for n in members:
                self._require_node(n, "switches", name)
                if n in self._leaf_of:
                    raise TopologyError("switches", name, "nodes",
                                        f"node {n} is already under leaf switch {self._leaf_of[n]}; a node has one leaf switch")
                self._leaf_of[n] = name
        _check_tree(leaves, uppers)
        # NVLink domains: declared multi-node ones; every other GPU node is its own domain (HGX).
        self._domain_of: dict[str, str] = {}
        self.domains: dict[str, list[str]] = {}
        for name, members in domains.items():
            if name in self.nodes and list(members) != [name]:  # a node outside any domain is a domain by its name
                raise TopologyError("nvlink_domains", name, "name", f"{name!r} is also a node's name")
            for n in members:
                self._require_node(n, "nvlink_domains", name)
                if n in self._domain_of:
                    raise TopologyError("nvlink_domains", name, "nodes",
                                        f"node {n} is already in NVLink domain {self._domain_of[n]}")
                self._domain_of[n] = name
            self.domains[name] = list(members)
        for n, node in self.nodes.items():
            if n not in self._domain_of and node.gpus:
                self._domain_of[n] = n
                self.domains[n] = [n]
        for p, members in partitions.items():
            for n in members:
                self._require_node(n, "partitions", p)

    def _require_node(self, n: str, kind: str, name: str) -> None:
        if n not in self.nodes:
            raise TopologyError(kind, name, "nodes", f"unknown node {n}")

    def leaf_of(self, node: str) -> str | None:
        return self._leaf_of.get(node)

    def domain_of(self, node: str) -> str | None:
        return self._domain_of.get(node)

    def multi_node_domains(self) -> bool:
        return any(len(m) > 1 for m in self.domains.values())

    @cache
    def eligible(self, partition: str, gpu_type: str | None, gpus_per_node: int) -> tuple[str, ...]:
        """Nodes of the partition that can hold ``gpus_per_node`` GPUs of the type (None: any type)."""
        out = []
        for n in self.partitions.get(partition, ()):
            node = self.nodes[n]
            if node.gpus >= gpus_per_node and (gpu_type is None or node.gpu_type == gpu_type or gpus_per_node == 0):
                out.append(n)
        return tuple(out)

    @cache
    def max_per_group(self, partition: str, gpu_type: str | None, gpus_per_node: int, group: str) -> tuple[int, str | None]:
        """Most eligible nodes inside one group ('leaf-switch' or 'nvlink-domain'), and that group."""
        counts: dict[str, int] = {}
        of = self._leaf_of if group == "leaf-switch" else self._domain_of
        for n in self.eligible(partition, gpu_type, gpus_per_node):
            g = of.get(n)
            if g is not None:
                counts[g] = counts.get(g, 0) + 1
        if not counts:
            return 0, None
        best = max(counts, key=counts.__getitem__)
        return counts[best], best

    @cache
    def domain_gpus(self, partition: str, gpu_type: str | None) -> int:
        """GPUs in the largest NVLink domain (of the type) within the partition."""
        best = 0
        for _name, members in self.domains.items():
            gpus = sorted((
                self.nodes[n].gpus
                for n in members
                if n in self.partitions.get(partition, ()) and (gpu_type is None or self.nodes[n].gpu_type == gpu_type)
            ), reverse=True)
            best = max(best, sum(gpus[:self.domain_cap]))
        return best

    def domain_room(self, domain: str) -> int:
        """How many of the domain's nodes one job can have inside it."""
        members = len(self.domains[domain])
        return members if self.domain_cap is None else min(members, self.domain_cap)

    def domains_with(self, partition: str, gpu_type: str | None, nodes: int, gpus_per_node: int) -> list[str]:
        """Multi-node NVLink domains with at least ``nodes`` eligible nodes."""
        elig = set(self.eligible(partition, gpu_type, gpus_per_node))
        return sorted(d for d, m in self.domains.items()
                      if len(m) > 1 and sum(n in elig for n in m) >= nodes and self.domain_room(d) >= nodes)

    @cache
    def node_gpus(self, partition: str, gpu_type: str | None) -> int:
        """GPUs on the biggest eligible node of the type."""
        return max((self.nodes[n].gpus for n in self.eligible(partition, gpu_type, 1)), default=0)

    @cache
    def gpu_types(self, partition: str) -> tuple[str, ...]:
        # cached: the planner asks once per step, and a partition can have thousands of nodes
        return tuple(sorted({t for n in self.partitions.get(partition, ()) if (t := self.nodes[n].gpu_type)}))

    def locality(self, nodes: list[str]) -> str:
        """The tightest group that holds all of ``nodes``: node, nvlink-domain, leaf-switch or any."""
        if len(set(nodes)) <= 1:
            return "node"
        if len({self._domain_of.get(n) for n in nodes}) == 1 and self._domain_of.get(nodes[0]):
            return "nvlink-domain"
        if len({self._leaf_of.get(n) for n in nodes}) == 1 and self._leaf_of.get(nodes[0]):
            return "leaf-switch"
        return "any"

    def __hash__(self):
        return id(self)


def _check_tree(leaves: dict[str, list[str]], uppers: dict[str, list[str]]) -> None:
    """Every child switch exists, and no switch is above itself (directly or round a cycle)."""
    known = set(leaves) | set(uppers)
    for name, children in uppers.items():
        for c in children:
            if c == name:
                raise TopologyError("switches", name, "switches", f"switch {name} lists itself as a child")
            if c not in known:
                raise TopologyError("switches", name, "switches", f"unknown child switch {c}")
    cycle = _find_cycle(uppers)
    if cycle:
        order = {name: i for i, name in enumerate(uppers)}
        first = min(range(len(cycle)), key=lambda i: order[cycle[i]])  # report it where the file first says it
        rotated = cycle[first:] + cycle[:first]
        raise TopologyError("switches", rotated[0], "switches", "cycle: " + " -> ".join(rotated + [rotated[0]]))


def _find_cycle(uppers: dict[str, list[str]]) -> list[str] | None:
    """One cycle of switches, each the parent of the next, or None. Iterative depth-first search."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    for root, children in uppers.items():
        if root in state:
            continue
        path, stack = [root], [iter(children)]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif nxt not in uppers or state.get(nxt) == 2:
                continue
            elif state.get(nxt) == 1:
                return path[path.index(nxt):]
            else:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(uppers[nxt]))
    return None
