"""What an sbatch command line asks for in GPUs, parsed the way the submit hook prices it.

``plugins/job_submit.lua`` prices a job from the fields Slurm hands it; this module reads the
same request from ``sbatch`` arguments and ``#SBATCH`` lines so a preview (gsbatch) quotes the
cost the hook will charge.  Worst case, per array task:

* ``--gres=gpu[:type]:N`` / ``--gpus-per-node=[type:]N``: N x nodes
* ``--gpus/-G [type:]N``: N
* ``--gpus-per-task=[type:]N``: N x tasks (``-n``, else ``--ntasks-per-node`` x nodes, else 1)
* ``--gpus-per-socket=[type:]N``: N x sockets per node x nodes

where nodes is the upper end of ``-N min[-max]``.  When several forms are given the
dearest one counts.  Cost = weighted GPUs x array tasks x time limit (minutes) x 60.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from slurmgov.errors import InputError
from slurmgov.units import slurm_seconds

# sbatch long options that take a value (``--opt val`` as well as ``--opt=val``).  Options
# with an optional value (``--exclusive[=user]``) only take one after ``=`` and are absent here.
_LONG_WITH_VALUE = frozenset("""
account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment
constraint container core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline
delay-boot dependency distribution error exclude export export-file extra-node-info gid
gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags hint
input job-name kill-on-invalid-dep licenses mail-type mail-user mcs-label mem mem-bind
mem-per-cpu mem-per-gpu mincpus network nodefile nodelist nodes ntasks ntasks-per-core
ntasks-per-gpu ntasks-per-node ntasks-per-socket open-mode output partition power prefer
priority profile qos reservation signal sockets-per-node switches thread-spec
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

_COUNT = re.compile(r"^(\d+)([kKmMgG]?)$")
_TYPE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SUFFIX = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_UNLIMITED = {"unlimited", "infinite", "-1"}
_ARRAY_ITEM = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")
_MAX_ARRAY_WORK = 5_000_000

GpuForm = tuple[tuple[str | None, int], ...]  # ((type or None, GPUs per array task), ...)


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


def _count(text: str, opt: str) -> int:
    m = _COUNT.match(text)
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
            if _COUNT.match(parts[0]):
                gtype, n = None, _count(parts[0], opt)
            elif gres:
                gtype, n = parts[0], 1
            else:
                raise InputError(f"{opt}: {item!r} is not [type:]count")
        elif len(parts) == 2:
            gtype, n = parts[0], _count(parts[1], opt)
        else:
            raise InputError(f"{opt}: {item!r} has too many ':' parts")
        if gtype is not None and not _TYPE.match(gtype):
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
        if not limit.isdigit():
            raise InputError(f"{opt}: bad task limit in {text!r}")
    ids: set[int] = set()
    work = 0
    for item in body.split(","):
        m = _ARRAY_ITEM.match(item.strip())
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


def _positive_int(text: str, opt: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise InputError(f"{opt}: {text!r} is not a positive integer")
    return int(text)


def _nodes(text: str) -> int:
    lo, sep, hi = text.strip().partition("-")
    n = _positive_int(lo, "--nodes")
    if sep and hi:
        m = _positive_int(hi, "--nodes")
        if m < n:
            raise InputError(f"--nodes: {text!r}: maximum below minimum")
        n = m
    return n


def _long_name(raw: str) -> str:
    """Full option name; getopt_long accepts unambiguous prefixes."""
    known = _LONG_WITH_VALUE | _LONG_FLAGS
    if raw in known:
        return raw
    hits = sorted(k for k in known if k.startswith(raw))
    if len(hits) > 1:
        raise InputError(f"--{raw} is ambiguous ({', '.join('--' + h for h in hits)})")
    return hits[0] if hits else raw


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
            opts[name] = val if (eq or name in _LONG_WITH_VALUE) else ""
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
                    opts[_SHORT_WITH_VALUE[ch]] = val
                    break
                opts["-" + ch] = ""  # a flag (or one this parser does not know)
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


def parse_sbatch_args(argv: list[str], script_text: str | None = None) -> GpuRequest:
    """GPU request of ``sbatch ARGV`` with the batch script's ``#SBATCH`` lines (command line wins).

    When ``script_text`` is None and ARGV names a script file, that file is read.
    """
    cli, script_path = _scan(list(argv), "command line")
    if script_text is None and script_path is not None and "wrap" not in cli:
        try:
            script_text = Path(script_path).read_text()
        except OSError as e:
            raise InputError(f"cannot read batch script {script_path}: {e.strerror}") from None
    opts: dict[str, str] = {}
    if script_text:
        opts.update(_scan(_script_args(script_text), "#SBATCH")[0])
    opts.update(cli)

    nodes = _nodes(opts["nodes"]) if "nodes" in opts else 1
    ntasks = _positive_int(opts["ntasks"], "--ntasks") if "ntasks" in opts else None
    tpn = _positive_int(opts["ntasks-per-node"], "--ntasks-per-node") if "ntasks-per-node" in opts else None
    tasks = ntasks if ntasks is not None else (tpn * nodes if tpn else 1)
    if "sockets-per-node" in opts:
        sockets = _positive_int(opts["sockets-per-node"], "--sockets-per-node")
    elif "extra-node-info" in opts:
        sockets = _positive_int(opts["extra-node-info"].split(":")[0], "--extra-node-info")
    else:
        sockets = 1

    forms: list[GpuForm] = []
    per_node: int | None = None

    def add(entries, mult: int, node_mult: int | None) -> None:
        nonlocal per_node
        if not entries:
            return
        forms.append(tuple((t, n * mult) for t, n in entries))
        if node_mult is not None:
            per_node = max(per_node or 0, sum(n for _, n in entries) * node_mult)

    if "gres" in opts:
        add(_gpu_list(opts["gres"], "--gres", gres=True), nodes, 1)
    if "gpus-per-node" in opts:
        add(_gpu_list(opts["gpus-per-node"], "--gpus-per-node", gres=False), nodes, 1)
    if "gpus" in opts:
        add(_gpu_list(opts["gpus"], "--gpus", gres=False), 1, 1 if "nodes" in opts and nodes == 1 else None)
    if "gpus-per-task" in opts:
        add(_gpu_list(opts["gpus-per-task"], "--gpus-per-task", gres=False), tasks, tpn)
    if "gpus-per-socket" in opts:
        add(_gpu_list(opts["gpus-per-socket"], "--gpus-per-socket", gres=False), sockets * nodes, sockets)

    totals = [sum(n for _, n in f) for f in forms]
    gpus_total = max(totals, default=0)
    types = sorted({t for f in forms for t, _ in f if t is not None})
    time_min, unlimited = None, False
    if "time" in opts:
        time_min = parse_time_min(opts["time"])
        unlimited = time_min is None
    array_size = parse_array_size(opts["array"]) if "array" in opts else 1
    return GpuRequest(
        gpus_total=gpus_total,
        gpus_per_node=per_node,
        gpu_type="+".join(types) if types else None,
        nodes=nodes,
        ntasks=ntasks if ntasks is not None else (tpn * nodes if tpn else None),
        time_limit_min=time_min,
        array_size=array_size,
        account=opts.get("account") or None,
        partition=opts.get("partition") or None,
        job_name=opts.get("job-name") or None,
        time_unlimited=unlimited,
        forms=tuple(f for f in forms if sum(n for _, n in f) > 0),
    )


def worst_case_gpu_seconds(req: GpuRequest, weights: dict[str, float], default_weight: float = 1.0,
                           default_time_min: int = 60, max_time_min: int | None = None) -> float:
    """Weighted GPU-seconds the hook charges: dearest form x array tasks x time x 60.

    ``default_time_min`` stands for the partition's DefaultTime (job without ``--time``);
    ``max_time_min`` for its MaxTime (job with ``--time=UNLIMITED``), without which such a
    job cannot be priced.  Untyped GPUs and types missing from ``weights`` cost ``default_weight``.
    """
    if not req.forms:
        return 0.0
    if req.time_unlimited:
        if not max_time_min:
            raise InputError("--time: a job without a time limit cannot be priced; give a finite --time")
        minutes = max_time_min
    else:
        minutes = req.time_limit_min if req.time_limit_min is not None else default_time_min
    weighted = max(sum(n * weights.get(t, default_weight) if t is not None else n * default_weight
                       for t, n in form) for form in req.forms)
    return float(weighted * req.array_size * minutes * 60)
