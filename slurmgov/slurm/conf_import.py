"""Import a site description from a Slurm configuration directory.

``import_site(conf_dir)`` reads ``slurm.conf`` (nodes, partitions, ``Include`` files),
``topology.conf`` (the switch tree and, where slurm.conf says ``TopologyPlugin=topology/block``,
the blocks; optional), ``topology.yaml`` (25.05 on: read instead of topology.conf, as Slurm
does) and ``gres.conf`` (optional; only to cross-check GPU types and counts) and returns ``(doc, warnings)``: ``doc`` is a plain dict that
``Site.model_validate`` accepts (no accounts, executor slurm), ``warnings`` a list of
one-line strings about what was guessed or left out.  ``to_yaml(doc, warnings)`` writes it
as a site file with a header saying where it came from.

What Slurm cannot say is left to the site file: accounts and budgets, price weights
(every GPU type gets 1.0), multi-node NVLink domains where the site does not run topology/block
(every GPU node is its own domain; Slurm's blocks become ``nvlink_domains``), and
GPU memory (a small table of known types; others get ``gpu_memory_gb`` or 80 GB, with a
warning).  Nodes with the same GPUs, CPUs, memory and features become one ``nodes`` entry
with a collapsed hostlist.

Parsing follows Slurm's own rules where they matter here: ``#`` starts a comment (``\\#`` is a
literal ``#``), a trailing backslash continues a line, keys are case-insensitive, a line
may hold several ``key=value`` pairs (values may be double-quoted), ``NodeName=DEFAULT`` /
``PartitionName=DEFAULT`` set defaults for the lines after them, and ``Include FILE``
(relative to the conf dir; globs allowed) is read in place.  A line that cannot be read
raises ``InputError`` naming ``file:line``.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import hostlist

from slurmgov.errors import InputError
from slurmgov.site.names import PATTERN, is_name
from slurmgov.site.units import format_time, slurm_seconds

__all__ = ["GPU_MEMORY_GB", "import_site", "to_yaml"]

# Memory per GPU (GB) of common types, looked up case-insensitively by the gres type name.
GPU_MEMORY_GB = {"h100": 80, "h200": 141, "a100": 80, "l40s": 48, "gb200": 186, "mi300x": 192}
FALLBACK_GPU_MEMORY_GB = 80
UNTYPED_GPU = "gpu"  # gpu_type given to GPUs that neither slurm.conf nor gres.conf type
MAX_INCLUDE_DEPTH = 16
NO_PARTITION = "all"  # the partition written when slurm.conf has none (a site file needs one)


# --------------------------------------------------------------------------- reading files
@dataclass
class Line:
    """One logical line: its ``key=value`` pairs (keys lower-cased, in order) and where it began."""

    path: Path
    lineno: int
    pairs: list[tuple[str, str]]
    raw_keys: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"

    def first(self) -> tuple[str, str]:
        return self.pairs[0]

    def get(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.pairs:
            if k == key:
                return v
        return default

    def fail(self, msg: str) -> InputError:
        return InputError(f"{self.where}: {msg}")


_PAIR = re.compile(r'\s*([A-Za-z][A-Za-z0-9_]*)(\s*=\s*("(?:[^"\\]|\\.)*"|[^\s"]*))?')


def _strip_comment(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] == "#":
            out.append("#")
            i += 2
            continue
        if c == "#":
            break
        out.append(c)
        i += 1
    return "".join(out)


def _logical_lines(path: Path) -> Iterable[tuple[int, str]]:
    """(first line number, text) of each non-empty logical line: comments cut, continuations joined."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not buf:
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1])
            continue
        buf.append(line)
        joined = " ".join(s.strip() for s in buf).strip()
        buf = []
        if joined:
            yield start, joined
    if buf:
        joined = " ".join(s.strip() for s in buf).strip()
        if joined:
            yield start, joined


def _read_conf(path: Path, conf_dir: Path, depth: int = 0, required: bool = True) -> list[Line]:
    """Every logical line of ``path`` with ``Include`` files read in place."""
    if not path.exists():
        if required:
            raise InputError(f"{path}: no such file")
        return []
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a Slurm config file")
    out: list[Line] = []
    for lineno, text in _logical_lines(path):
        head = text.split(None, 1)
        if head[0].lower() == "include":
            if len(head) < 2:
                raise InputError(f"{path}:{lineno}: Include without a file name")
            if depth >= MAX_INCLUDE_DEPTH:
                raise InputError(f"{path}:{lineno}: Include nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)")
            target = head[1].strip().strip('"')
            full = Path(target) if Path(target).is_absolute() else conf_dir / target
            matches = sorted(glob.glob(str(full))) if glob.has_magic(str(full)) else [str(full)]
            if not matches or not Path(matches[0]).exists():
                raise InputError(f"{path}:{lineno}: Include {target}: no such file ({full})")
            for found in matches:
                out.extend(_read_conf(Path(found), conf_dir, depth + 1))
            continue
        pairs, raw_keys = [], []
        pos = 0
        while pos < len(text):
            m = _PAIR.match(text, pos)
            if not m or m.end() == pos:
                bad = text[pos:].split()[0] if text[pos:].split() else text[pos:]
                raise InputError(f"{path}:{lineno}: cannot read {bad!r} (expected key=value)")
            if m.group(2) is None:
                raise InputError(f"{path}:{lineno}: {m.group(1)!r} has no value (expected {m.group(1)}=...)")
            value = m.group(3)
            if value.startswith('"'):
                value = value[1:-1].replace('\\"', '"')
            pairs.append((m.group(1).lower(), value))
            raw_keys.append(m.group(1))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        out.append(Line(path, lineno, pairs, raw_keys))
    return out


# ---------------------------------------------------------------------------- value parsing
def _expand(value: str, line: Line, what: str) -> list[str]:
    try:
        names = hostlist.expand_hostlist(value)
    except hostlist.BadHostlist as exc:
        raise line.fail(f"{what}: bad hostlist {value!r}: {exc}") from None
    if not names:
        raise line.fail(f"{what}: empty hostlist")
    return names


def _collect(names: Iterable[str]) -> str:
    return hostlist.collect_hostlist(list(names))


def _int(value: str, line: Line, key: str, what: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)", value.strip(), re.IGNORECASE)
    if not m:
        raise line.fail(f"{what}: {key}={value} is not a whole number")
    return int(m[1]) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[m[2].upper()]


def _time(value: str | None, line: Line, key: str, what: str) -> int | None:
    """Seconds of a Slurm time limit; None for UNLIMITED/INFINITE or absent."""
    if value is None or value.strip().upper() in ("UNLIMITED", "INFINITE", ""):
        return None
    secs = slurm_seconds(value)
    if secs is None or secs <= 0:
        raise line.fail(f"{what}: {key}={value} is not a Slurm time limit (MM, HH:MM:SS, D-HH:MM:SS or UNLIMITED)")
    return secs


def _split_top(value: str) -> list[str]:
    """Split on commas outside brackets: ``gpu[01,03],cpu01`` -> ``['gpu[01,03]', 'cpu01']``."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for c in value:
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _parse_gres(value: str, line: Line, what: str) -> list[tuple[str | None, int]]:
    """``gpu:h100:4,gpu:2(S:0),nvme:1`` -> [('h100', 4), (None, 2)]: GPU entries only."""
    out: list[tuple[str | None, int]] = []
    for item in _split_top(value):
        item = re.sub(r"\(.*?\)", "", item).strip()  # socket/core affinity
        parts = [p for p in item.split(":") if p.lower() != "no_consume"]
        if not parts or parts[0].lower() != "gpu":
            continue
        if len(parts) == 1:
            out.append((None, 1))
        elif len(parts) == 2:
            if re.fullmatch(r"\d+[KMGT]?", parts[1], re.IGNORECASE):
                out.append((None, _int(parts[1], line, "Gres", what)))
            else:
                out.append((parts[1], 1))
        elif len(parts) == 3:
            out.append((parts[1], _int(parts[2], line, "Gres", what)))
        else:
            raise line.fail(f"{what}: cannot read Gres entry {item!r} (expected gpu:TYPE:COUNT or gpu:COUNT)")
    return out


def _memory_text(mb: int) -> str:
    return f"{mb // 1024}G" if mb and mb % 1024 == 0 else f"{mb}M"


def gpu_memory(gpu_type: str, fallback: float | None) -> tuple[float, str | None]:
    """(memory_gb, warning or None) for a gres type name."""
    key = gpu_type.lower()
    if key in GPU_MEMORY_GB:
        return GPU_MEMORY_GB[key], None
    m = re.fullmatch(r"([a-z0-9]+?)[-_]?(\d+)gb?", key)  # a100_40gb, h100-94g
    if m and m[1] in GPU_MEMORY_GB:
        return float(m[2]), None
    if fallback is not None:
        return fallback, f"gpu type {gpu_type!r}: memory unknown; using {fallback:g} GB (the gpu_memory_gb argument)"
    return FALLBACK_GPU_MEMORY_GB, (
        f"gpu type {gpu_type!r}: memory unknown; assuming {FALLBACK_GPU_MEMORY_GB} GB (pass gpu_memory_gb or edit gpu_types)"
    )


# -------------------------------------------------------------------------------- slurm.conf
@dataclass
class _Node:
    name: str
    gpus: int
    gpu_type: str | None
    cpus: int
    memory_mb: int
    features: tuple[str, ...]
    line: Line


_NODE_KEYS = ("gres", "cpus", "boards", "sockets", "socketsperboard", "corespersocket",
              "threadspercore", "realmemory", "features")
_NODE_ALIASES = {"procs": "cpus", "feature": "features"}  # Slurm's synonyms


def _node_cpus(attrs: dict[str, str], line: Line, what: str, warnings: list[str]) -> int:
    """CPUs= (own or DEFAULT), else Sockets x CoresPerSocket x ThreadsPerCore, as slurmctld does.

    Like slurmctld, a CPUs= that is none of sockets, cores or threads in total is replaced by
    the thread count."""

    def num(k, default=1):
        return _int(attrs[k], line, k, what) if k in attrs else default

    sockets = num("sockets", 0) or num("boards") * num("socketsperboard")
    cores, threads = sockets * num("corespersocket"), sockets * num("corespersocket") * num("threadspercore")
    if "cpus" not in attrs:
        return max(1, threads)
    cpus = _int(attrs["cpus"], line, "CPUs", what)
    shaped = any(k in attrs for k in ("sockets", "socketsperboard", "corespersocket", "threadspercore"))
    if shaped and cpus not in (sockets, cores, threads):
        warnings.append(f"{line.where}: {what}: CPUs={cpus} matches no socket/core/thread count; using {threads} as slurmctld does")
        return max(1, threads)
    return cpus


def _parse_nodes(lines: list[Line], warnings: list[str]) -> dict[str, _Node]:
    nodes: dict[str, _Node] = {}
    defaults: dict[str, str] = {}
    for line in lines:
        key, value = line.first()
        if key != "nodename":
            continue
        attrs = {_NODE_ALIASES.get(k, k): v for k, v in line.pairs[1:]}
        if value.upper() == "DEFAULT":
            defaults.update({k: v for k, v in attrs.items() if k in _NODE_KEYS})
            continue
        merged = {**defaults, **attrs}
        what = f"NodeName={value}"
        names = _expand(value, line, what)
        gres = _parse_gres(merged.get("gres", ""), line, what)
        gpus = sum(n for _, n in gres)
        types = []
        for t, _n in gres:
            if t not in types:
                types.append(t)
        gpu_type = None
        if gpus:
            typed = [t for t in types if t]
            if len(typed) > 1:
                by_count = {t: sum(n for tt, n in gres if tt == t) for t in typed}
                gpu_type = max(typed, key=lambda t: by_count[t])
                warnings.append(
                    f"{line.where}: nodes {value} mix GPU types {', '.join(typed)}; a site node has one type, "
                    f"so all {gpus} count as {gpu_type}"
                )
            elif typed:
                gpu_type = typed[0]
        cpus = _node_cpus(merged, line, what, warnings)
        mem = _int(merged["realmemory"], line, "RealMemory", what) if "realmemory" in merged else 1
        feat_text = merged.get("features", "")
        features = tuple(f for f in (s.strip() for s in feat_text.split(",")) if f)
        for n in names:
            if n in nodes:
                raise line.fail(f"node {n} is already defined at {nodes[n].line.where}")
            nodes[n] = _Node(n, gpus, gpu_type, cpus, mem, features, line)
    return nodes


def _resolve_nodes(value: str, line: Line, what: str, known: dict[str, _Node], nodesets: dict[str, list[str]]) -> list[str]:
    if value.strip().upper() == "ALL":
        return list(known)
    out: list[str] = []
    for part in _split_top(value):
        out.extend(nodesets[part] if part in nodesets else _expand(part, line, what))
    for n in out:
        if n not in known:
            raise line.fail(f"{what}: node {n} is not defined by any NodeName line")
    return list(dict.fromkeys(out))


def _parse_nodesets(lines: list[Line], nodes: dict[str, _Node]) -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {}
    for line in lines:
        key, value = line.first()
        if key != "nodeset":
            continue
        members: list[str] = []
        nodes_value = line.get("nodes")
        if nodes_value:
            members += _resolve_nodes(nodes_value, line, f"NodeSet={value}", nodes, sets)
        if line.get("feature"):
            want = line.get("feature")
            members += [n for n, nd in nodes.items() if want in nd.features]
        sets[value] = list(dict.fromkeys(members))
    return sets


_PART_KEYS = ("nodes", "default", "defaulttime", "maxtime", "state")


def _parse_partitions(lines: list[Line], nodes: dict[str, _Node], warnings: list[str]) -> list[dict]:
    nodesets = _parse_nodesets(lines, nodes)
    parts: list[dict] = []
    seen: dict[str, Line] = {}
    defaults: dict[str, str] = {}
    for line in lines:
        key, value = line.first()
        if key != "partitionname":
            continue
        attrs = {k: v for k, v in line.pairs[1:]}
        if value.upper() == "DEFAULT":
            defaults.update({k: v for k, v in attrs.items() if k in _PART_KEYS})
            continue
        merged = {**defaults, **attrs}
        what = f"PartitionName={value}"
        if not is_name(value):
            raise line.fail(f"{what}: slurmgov partition names match {PATTERN}")
        if value in seen:
            raise line.fail(f"{what}: partition already defined at {seen[value].where}")
        seen[value] = line
        if not merged.get("nodes"):
            warnings.append(f"{line.where}: partition {value} has no nodes; left out")
            continue
        members = _resolve_nodes(merged["nodes"], line, what, nodes, nodesets)
        part: dict = {"name": value, "nodes": _collect(members)}
        default = merged.get("default", "NO").upper()
        if default not in ("YES", "NO"):
            raise line.fail(f"{what}: Default={merged['default']} (expected YES or NO)")
        if default == "YES":
            part["default"] = True
        max_s = _time(merged.get("maxtime"), line, "MaxTime", what)
        def_s = _time(merged.get("defaulttime"), line, "DefaultTime", what)
        if def_s is not None and max_s is not None and def_s > max_s:
            raise line.fail(f"{what}: DefaultTime {format_time(def_s)} is longer than MaxTime {format_time(max_s)}")
        if def_s is None and max_s is not None:
            def_s = max_s  # Slurm: without DefaultTime a job gets MaxTime
        if def_s is not None:
            part["default_time"] = format_time(def_s)
        else:
            warnings.append(f"{line.where}: partition {value} has no DefaultTime or MaxTime; slurmgov assumes 1 h for steps without a time")
        if max_s is not None:
            part["max_time"] = format_time(max_s)
        state = merged.get("state", "UP").upper()
        if state not in ("UP",):
            warnings.append(f"{line.where}: partition {value} is State={state}; imported anyway")
        parts.append(part)
    if sum(p.get("default", False) for p in parts) > 1:
        names = [p["name"] for p in parts if p.get("default")]
        raise InputError(f"{seen[names[1]].where}: more than one partition has Default=YES ({', '.join(names)})")
    return parts


# ---------------------------------------------------------------------------- gres.conf
def _check_gres(lines: list[Line], nodes: dict[str, _Node], warnings: list[str]) -> None:
    """Cross-check gres.conf against slurm.conf; give untyped GPUs gres.conf's type."""
    found: dict[str, list[tuple[str | None, int, Line]]] = {}
    for line in lines:
        attrs = {k: v for k, v in line.pairs}
        if (attrs.get("name") or "").lower() != "gpu":
            continue
        what = "gres.conf gpu entry"
        if "count" in attrs:
            count = _int(attrs["count"], line, "Count", what)
        elif "file" in attrs:
            count = len(_expand(attrs["file"], line, "File"))
        else:
            count = 1
        targets = _expand(attrs["nodename"], line, "NodeName") if "nodename" in attrs else list(nodes)
        for n in targets:
            if n not in nodes:
                warnings.append(f"{line.where}: node {n} is not in slurm.conf; ignored")
                continue
            found.setdefault(n, []).append((attrs.get("type"), count, line))
    for n, entries in found.items():
        node = nodes[n]
        total = sum(c for _, c, _ in entries)
        types = sorted({t for t, _, _ in entries if t})
        where = entries[0][2].where
        if total != node.gpus:
            warnings.append(f"{where}: node {n}: gres.conf has {total} GPUs, slurm.conf {node.gpus}; using slurm.conf")
        if node.gpus and node.gpu_type is None and len(types) == 1:
            node.gpu_type = types[0]
        elif node.gpu_type and types and node.gpu_type not in types:
            warnings.append(f"{where}: node {n}: gres.conf types {', '.join(types)}, slurm.conf {node.gpu_type}; using slurm.conf")


# ------------------------------------------------------------------------- topology.conf
@dataclass
class _Blocks:
    """topology/block's blocks (23.11 on): each block's known nodes, and BlockSizes."""

    blocks: dict[str, list[str]] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)


def _parse_block(line: Line, key: str, value: str, nodes: dict[str, _Node], out: _Blocks,
                 warnings: list[str]) -> None:
    if key == "blocksizes":
        sizes = [_int(v.strip(), line, "BlockSizes", "BlockSizes") for v in value.split(",")]
        if not sizes or any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
            raise line.fail(f"BlockSizes={value}: sizes in nodes, each larger than the one before")
        out.sizes = sizes
        return
    what = f"BlockName={value}"
    if not is_name(value):
        raise line.fail(f"{what}: slurmgov block names match {PATTERN}")
    if value in out.blocks:
        raise line.fail(f"{what}: block already defined")
    members = []
    for n in _expand(line.get("nodes") or "", line, what) if line.get("nodes") else []:
        if n in nodes:
            members.append(n)
        else:
            warnings.append(f"{line.where}: block {value}: node {n} is not in slurm.conf; left out")
    out.blocks[value] = members


def _parse_topology(lines: list[Line], nodes: dict[str, _Node], warnings: list[str],
                    blocks: _Blocks | None = None) -> list[dict]:
    """The switches of topology.conf; with ``blocks`` (slurm.conf says topology/block), its
    BlockName and BlockSizes lines go there, else they are left out with a warning."""
    leaves: dict[str, list[str]] = {}
    uppers: dict[str, list[str]] = {}
    where: dict[str, Line] = {}
    leaf_of: dict[str, str] = {}
    for line in lines:
        key, value = line.first()
        if key != "switchname":
            if key in ("blockname", "blocksizes"):
                if blocks is None:
                    warnings.append(f"{line.where}: topology/block lines are not imported: slurm.conf "
                                    f"does not say TopologyPlugin=topology/block")
                else:
                    _parse_block(line, key, value, nodes, blocks, warnings)
                continue
            raise line.fail(f"expected SwitchName=... (got {line.raw_keys[0]}=)")
        what = f"SwitchName={value}"
        if not is_name(value):
            raise line.fail(f"{what}: slurmgov switch names match {PATTERN}")
        if value in where:
            raise line.fail(f"{what}: switch already defined at {where[value].where}")
        where[value] = line
        has_nodes, has_sw = line.get("nodes"), line.get("switches")
        if has_nodes and has_sw:
            raise line.fail(f"{what}: a switch lists nodes or child switches, not both")
        if has_nodes:
            members = []
            for n in _expand(has_nodes, line, what):
                if n in leaf_of:
                    raise line.fail(f"{what}: node {n} is already under switch {leaf_of[n]}")
                leaf_of[n] = value
                if n in nodes:
                    members.append(n)
                else:
                    warnings.append(f"{line.where}: switch {value}: node {n} is not in slurm.conf; left out")
            leaves[value] = members
        elif has_sw:
            uppers[value] = _expand(has_sw, line, what)
        else:
            warnings.append(f"{line.where}: switch {value} has no nodes or switches; left out")
    # Drop empty leaves, then uppers left without children, until nothing changes.
    out_leaves = {k: v for k, v in leaves.items() if v}
    for k in leaves:
        if k not in out_leaves:
            warnings.append(f"{where[k].where}: switch {k} has no known nodes; left out")
    known = set(out_leaves)
    out_uppers: dict[str, list[str]] = {}
    changed = True
    while changed:
        changed = False
        for k, children in uppers.items():
            if k in known:
                continue
            if any(c in known for c in children) and all(c in known or c not in uppers for c in children):
                out_uppers[k] = [c for c in children if c in known]
                known.add(k)
                changed = True
    for k, children in uppers.items():
        if k not in out_uppers:
            warnings.append(f"{where[k].where}: switch {k}: none of its child switches {', '.join(children)} is known; left out")
        else:
            for c in children:
                if c not in known:
                    warnings.append(f"{where[k].where}: switch {k}: unknown child switch {c}; left out")
    switches = []
    for name in where:
        if name in out_leaves:
            switches.append({"name": name, "nodes": _collect(out_leaves[name])})
        elif name in out_uppers:
            switches.append({"name": name, "switches": _collect(out_uppers[name])})
    return switches


# ---------------------------------------------------------------------------------- import
def import_site(conf_dir, site_name: str | None = None, gpu_memory_gb: float | None = None) -> tuple[dict, list[str]]:
    """Read a Slurm conf dir; return ``(doc, warnings)``.

    ``doc`` is a plain dict ready for ``Site.model_validate`` (or ``to_yaml``); ``warnings``
    lists, one line each, what was guessed or left out.  ``site_name`` defaults to slurm.conf's
    ClusterName (else the directory's name).  Raises ``InputError`` naming ``file:line`` for a
    missing slurm.conf or a line that cannot be read.
    """
    conf_dir = Path(conf_dir)
    if not conf_dir.is_dir():
        raise InputError(f"{conf_dir}: not a directory (expected a Slurm conf dir with slurm.conf)")
    warnings: list[str] = []
    slurm_conf = conf_dir / "slurm.conf"
    lines = _read_conf(slurm_conf, conf_dir)
    nodes = _parse_nodes(lines, warnings)
    if not nodes:
        raise InputError(f"{slurm_conf}: no NodeName lines")
    gres_conf = conf_dir / "gres.conf"
    if gres_conf.exists():
        _check_gres(_read_conf(gres_conf, conf_dir), nodes, warnings)
    for n in nodes.values():
        if n.gpus and n.gpu_type is None:
            n.gpu_type = UNTYPED_GPU
    untyped = [n.name for n in nodes.values() if n.gpu_type == UNTYPED_GPU and n.gpus]
    if untyped:
        warnings.append(f"nodes {_collect(untyped)} have untyped GPUs (Gres=gpu:N, no gres.conf Type); gpu_type {UNTYPED_GPU!r}")
    partitions = _parse_partitions(lines, nodes, warnings)
    topo_conf, topo_yaml = conf_dir / "topology.conf", conf_dir / "topology.yaml"
    plugin = next((ln.first()[1].lower() for ln in reversed(lines) if ln.first()[0] == "topologyplugin"), None)
    blocks = _Blocks() if plugin == "topology/block" else None
    if topo_yaml.exists():  # 25.05 on: Slurm reads it and ignores topology.conf
        blocks = _Blocks()
        switches = _parse_topology_yaml(topo_yaml, nodes, warnings, blocks)
        if topo_conf.exists():
            warnings.append(f"{topo_conf}: not read: topology.yaml is there, and Slurm reads that instead")
        topo_conf = topo_yaml
    else:
        switches = _parse_topology(_read_conf(topo_conf, conf_dir), nodes, warnings, blocks) if topo_conf.exists() else []

    cluster = None
    for line in lines:
        if line.first()[0] == "clustername":
            cluster = line.first()[1]
    name = site_name or cluster or conf_dir.resolve().name
    if not is_name(name):
        raise InputError(f"{slurm_conf}: site name {name!r} must match {PATTERN}; pass site_name")

    gpu_types: dict[str, dict] = {}
    for n in nodes.values():
        # every node with GPUs has a type by now (UNTYPED_GPU above)
        if n.gpus and n.gpu_type is not None and n.gpu_type not in gpu_types:
            mem, warn = gpu_memory(n.gpu_type, gpu_memory_gb)
            if warn:
                warnings.append(warn)
            gpu_types[n.gpu_type] = {"memory_gb": mem, "weight": 1.0}

    groups: dict[tuple, list[str]] = {}
    for n in nodes.values():
        groups.setdefault((n.gpus, n.gpu_type, n.cpus, n.memory_mb, n.features), []).append(n.name)
    node_docs = []
    for (gpus, gpu_type, cpus, mem, features), names in groups.items():
        entry: dict = {"names": _collect(names), "gpus": gpus}
        if gpu_type:
            entry["gpu_type"] = gpu_type
        entry["cpus"] = cpus
        entry["memory"] = _memory_text(mem)
        if features:
            entry["features"] = list(features)
        node_docs.append(entry)

    read = ", ".join(p.name for p in (slurm_conf, gres_conf, topo_conf) if p.exists())
    doc: dict = {
        "site": name,
        "description": f"imported from {conf_dir.resolve()} ({read}; ClusterName {cluster or 'not set'})",
        "executor": "slurm",
        "gpu_types": gpu_types,
        "nodes": node_docs,
    }
    if blocks is not None and blocks.blocks:
        _block_doc(doc, blocks, topo_conf, warnings)
    if switches:
        doc["switches"] = switches
    elif not doc.get("nvlink_blocks"):
        warnings.append("no topology.conf switches: leaf-switch placement cannot be planned")
    if not partitions:  # a site file needs one; name it so that nobody mistakes it for a Slurm partition
        partitions = [{"name": NO_PARTITION, "nodes": _collect(nodes)}]
        warnings.append(f"{slurm_conf}: no partition with nodes; wrote partition {NO_PARTITION!r} of every node: "
                        f"rename it to the Slurm partition jobs go to")
    doc["partitions"] = partitions
    doc["accounts"] = {}
    return doc, warnings


def _block_doc(doc: dict, blocks: _Blocks, where: Path, warnings: list[str]) -> None:
    """Slurm's blocks as the site's NVLink domains (``nvlink_blocks``): what a step that must stay
    inside one asks with --segment. A block with fewer known nodes than the base size is left out."""
    base = blocks.sizes[0] if blocks.sizes else 1
    domains = []
    for name, members in blocks.blocks.items():
        if len(members) < base:
            warnings.append(f"{where}: block {name} has {len(members)} known nodes, fewer than the base block size "
                            f"{base}; left out")
            continue
        domains.append({"name": name, "nodes": _collect(members)})
    if not domains:
        warnings.append(f"{where}: no block with known nodes: NVLink domains cannot be planned")
        return
    doc["nvlink_blocks"] = True
    if blocks.sizes:
        doc["block_sizes"] = list(blocks.sizes)
    doc["nvlink_domains"] = domains


def _parse_topology_yaml(path: Path, nodes: dict[str, _Node], warnings: list[str], blocks: _Blocks) -> list[dict]:
    """topology.yaml (25.05 on): its block topologies' blocks go to ``blocks``; the switches of
    its first tree topology are returned as topology.conf's would be. Several topologies of one
    kind (partitions choose theirs with Topology=) are merged for blocks; only the first tree is read."""
    from slurmgov.site import yamlfile

    doc = yamlfile.load(path)

    def fail(loc: tuple, msg: str) -> InputError:
        return InputError(f"{doc.where(loc)}: {msg}")

    if not isinstance(doc.data, list):
        raise fail((), "expected a list of topologies (- topology: NAME)")
    switches: list[dict] = []
    for i, topo in enumerate(doc.data):
        if not isinstance(topo, dict) or not isinstance(topo.get("topology"), str):
            raise fail((i,), "each entry needs `topology: NAME`")
        tname = topo["topology"]
        if "block" in topo:
            spec = topo["block"]
            if not isinstance(spec, dict) or not isinstance(spec.get("blocks", []), list):
                raise fail((i, "block"), f"topology {tname}: block: expected block_sizes and a list of blocks")
            sizes = spec.get("block_sizes")
            if sizes is not None:
                if (not isinstance(sizes, list) or not sizes or not all(type(x) is int and x > 0 for x in sizes)
                        or any(b <= a for a, b in zip(sizes, sizes[1:]))):
                    raise fail((i, "block", "block_sizes"), f"topology {tname}: block_sizes: sizes in nodes, "
                                                            "each larger than the one before")
                if blocks.sizes and blocks.sizes != sizes:
                    warnings.append(f"{doc.where((i, 'block', 'block_sizes'))}: topology {tname}: block_sizes "
                                    f"{sizes} differ from an earlier topology's {blocks.sizes}; the first kept")
                blocks.sizes = blocks.sizes or list(sizes)
            for j, b in enumerate(spec.get("blocks", [])):
                loc = (i, "block", "blocks", j)
                if not isinstance(b, dict) or not is_name(b.get("block")):
                    raise fail(loc, f"topology {tname}: each block needs `block: NAME` ({PATTERN})")
                if b["block"] in blocks.blocks:
                    raise fail(loc, f"topology {tname}: block {b['block']} already defined")
                members = []
                try:
                    listed = hostlist.expand_hostlist(str(b.get("nodes") or ""))
                except hostlist.BadHostlist as exc:
                    raise fail(loc, f"block {b['block']}: nodes: bad hostlist: {exc}") from None
                for n in listed:
                    if n in nodes:
                        members.append(n)
                    else:
                        warnings.append(f"{doc.where(loc)}: block {b['block']}: node {n} is not in slurm.conf; left out")
                blocks.blocks[b["block"]] = members
        elif "tree" in topo:
            if switches:
                warnings.append(f"{doc.where((i,))}: topology {tname}: a second tree topology; not imported")
                continue
            switches = _tree_from_yaml(doc, i, topo, nodes, warnings)
    return switches


def _tree_from_yaml(doc, i: int, topo: dict, nodes: dict[str, _Node], warnings: list[str]) -> list[dict]:
    """A tree topology of topology.yaml, read through topology.conf's own checks."""
    spec = topo["tree"]
    if not isinstance(spec, dict) or not isinstance(spec.get("switches"), list):
        raise InputError(f"{doc.where((i, 'tree'))}: topology {topo['topology']}: tree: expected a list of switches")
    lines = []
    for j, sw in enumerate(spec["switches"]):
        if not isinstance(sw, dict) or not isinstance(sw.get("switch"), str):
            raise InputError(f"{doc.where((i, 'tree', 'switches', j))}: each switch needs `switch: NAME`")
        pairs = [("switchname", sw["switch"])]
        raw = ["switch"]
        for key in ("nodes", "children"):
            if sw.get(key) is not None:
                pairs.append(("nodes" if key == "nodes" else "switches", str(sw[key])))
                raw.append(key)
        lines.append(Line(Path(doc.path), doc.line((i, "tree", "switches", j)) or 0, pairs, raw))
    return _parse_topology(lines, nodes, warnings)


def to_yaml(doc: dict, warnings: Sequence[str] = ()) -> str:
    """The site file text: a header saying where it came from (and any warnings), then ``doc``."""
    import yaml

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        f"# Site {doc.get('site')}: generated by slurmgov.slurm.conf_import on {stamp},",
        f"# {doc.get('description') or 'imported from a Slurm configuration'}.",
        "# Not in slurm.conf, so review and fill in: accounts and budgets, GPU price weights,",
        "# GPU memory of unknown types, multi-node NVLink domains (nvlink_domains).",
    ]
    if warnings:
        head.append("# Import warnings:")
        head.extend(f"#   - {w}" for w in warnings)
    body = yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=None, width=120)
    return "\n".join(head) + "\n" + body


def jwt_key_path(conf_dir) -> Path:
    """The HS256 key file with which Slurm signs and checks its JWTs (``scontrol token``):
    ``AuthAltParameters=jwt_key=PATH`` in slurm.conf, by default StateSaveLocation/jwt_hs256.key,
    as Slurm reads it. InputError (naming the file) when slurm.conf has no ``AuthAltTypes=auth/jwt``."""
    conf_dir = Path(conf_dir)
    slurm_conf = conf_dir / "slurm.conf"
    types = params = state = None
    for line in _read_conf(slurm_conf, conf_dir):
        for key, value in line.pairs:
            if key == "authalttypes":
                types = (line, value)
            elif key == "authaltparameters":
                params = (line, value)
            elif key == "statesavelocation":
                state = value
    if types is None or "auth/jwt" not in [t.strip() for t in types[1].split(",")]:
        raise InputError(f"{slurm_conf}: no AuthAltTypes=auth/jwt: Slurm issues no JWTs to check "
                         f"(see https://slurm.schedmd.com/jwt.html)")
    for item in (params[1].split(",") if params else []):
        name, _, value = item.strip().partition("=")
        if name == "jwt_key" and value:
            path = Path(value)
            return path if path.is_absolute() else conf_dir / path
    if state is None:
        raise InputError(f"{types[0].where}: auth/jwt without AuthAltParameters=jwt_key=PATH or StateSaveLocation")
    return Path(state) / "jwt_hs256.key"
