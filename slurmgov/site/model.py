"""The site description: nodes, GPU types, NVLink domains, the switch tree, partitions,
accounts and their budgets, price weights, the ledger URL and the fail policy.

Validated as strictly as a jobspec; errors name the file, line and field.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Literal

import hostlist
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slurmgov.errors import InputError
from slurmgov.site import yamlfile
from slurmgov.site.names import PATTERN, is_name, is_user_name
from slurmgov.site.shared import shared_path
from slurmgov.site.topology import Topology, TopologyError
from slurmgov.site.units import format_time, parse_memory_mb, parse_time_seconds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _At(ValueError):
    """A site error that knows where in the file it belongs, e.g. ("switches", 3, "switches");
    pydantic would place a check across entries at the top of the file."""

    def __init__(self, loc: tuple, msg: str):
        super().__init__(msg)
        self.loc, self.msg = loc, msg


def _expand(v: str) -> list[str]:
    try:
        names = hostlist.expand_hostlist(v)
    except hostlist.BadHostlist as exc:
        raise ValueError(f"bad hostlist {v!r}: {exc}") from None
    if not names:
        raise ValueError(f"empty hostlist {v!r}")
    return names


class GpuType(Strict):
    memory_gb: float = Field(gt=0, le=100_000)
    weight: float = Field(1.0, gt=0, le=1000, description="price weight per GPU-hour")


class NodeGroup(Strict):
    names: str
    gpus: int = Field(ge=0, le=1024)
    gpu_type: str | None = None
    cpus: int = Field(1, ge=1, le=100_000)
    memory_mb: int = Field(0, ge=0, alias="memory")
    features: tuple[str, ...] = ()
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("memory_mb", mode="before")
    @classmethod
    def _mem(cls, v):
        return parse_memory_mb(v)

    @field_validator("names")
    @classmethod
    def _names(cls, v):
        _expand(v)
        return v

    @model_validator(mode="after")
    def _typed(self):
        if self.gpus and not self.gpu_type:
            raise ValueError("nodes with GPUs need a gpu_type")
        return self


class Domain(Strict):
    name: str = Field(pattern=PATTERN)
    nodes: str

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, v):
        _expand(v)
        return v


class Switch(Strict):
    name: str = Field(pattern=PATTERN)
    nodes: str | None = None
    switches: str | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.nodes is None) == (self.switches is None):
            raise ValueError("a switch lists exactly one of `nodes` (a leaf) or `switches`")
        # `nodes: ""` is a leaf with an empty hostlist, not a list of switches
        _expand(self.nodes if self.nodes is not None else self.switches or "")
        return self


class Partition(Strict):
    name: str = Field(pattern=PATTERN)
    nodes: str
    default: bool = False
    default_time_s: int = Field(3600, alias="default_time")
    max_time_s: int | None = Field(None, alias="max_time")
    # price weight per CPU-hour of this partition's CPUs, for accounts with a CPU budget (as
    # Slurm's TRESBillingWeights are per partition: the hook knows the partitions, not the nodes)
    cpu_weight: float = Field(1.0, ge=0, le=1e6)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("default_time_s", "max_time_s", mode="before")
    @classmethod
    def _time(cls, v):
        return None if v is None else parse_time_seconds(v)


class Account(Strict):
    budget_gpu_hours: float = Field(ge=0, le=1e12)
    # optional budget of weighted CPU-hours per period (absent: this account's CPUs are not budgeted)
    budget_cpu_hours: float | None = Field(None, ge=0, le=1e12)
    period: Literal["monthly", "quarterly", "none"] = "monthly"
    # last period's unused budget carries over, up to this share of the budget (0: none)
    rollover_pct: int = Field(0, ge=0, le=100)
    expires: date | None = None  # the project ends: no budget from this day on (UTC)
    # users who manage this account (besides Slurm's coordinators of it): set its users' caps,
    # see its usage, budgets, holds and audit trail
    managers: tuple[str, ...] = ()

    @field_validator("managers")
    @classmethod
    def _manager_names(cls, v):
        for name in v:
            if not is_user_name(name):
                raise ValueError(f"manager {name!r} is not a user name")
        return v

    @model_validator(mode="after")
    def _rollover_needs_periods(self):
        if self.rollover_pct and self.period == "none":
            raise ValueError("rollover_pct needs a monthly or quarterly period")
        return self

    def terms(self) -> dict:
        """The ledger's keyword arguments for these terms."""
        expires = None
        if self.expires is not None:
            expires = datetime(self.expires.year, self.expires.month, self.expires.day, tzinfo=timezone.utc).timestamp()
        return {"rollover_pct": self.rollover_pct, "expires": expires}


class Admins(Strict):
    """Who may change budgets besides root: users and Unix groups (e.g. SlurmUser, hpc-admins)."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @field_validator("users", "groups")
    @classmethod
    def _names(cls, v):
        for name in v:
            if not is_user_name(name):
                raise ValueError(f"{name!r} is not a user or group name")
        return v


class Operators(Admins):
    """Who may grant and transfer GPU-hours (up to ``max_grant_gpu_hours`` a change and
    ``max_gpu_hours_per_day`` in all over any 24 hours, each operator, where set) and release
    holds, but not set budgets: users and Unix groups."""

    max_grant_gpu_hours: float | None = Field(None, ge=0, le=1e12)
    max_gpu_hours_per_day: float | None = Field(None, ge=0, le=1e12)


class Managers(Strict):
    """What account managers (an account's ``managers`` and, with ``slurm_coordinators``, Slurm's
    coordinators of it) may do besides reading their accounts and setting their users' caps:
    grant or transfer between their own accounts up to ``max_grant_gpu_hours`` a change (0: not at all)
    and, where set, ``max_gpu_hours_per_day`` in all over any 24 hours, each manager."""

    max_grant_gpu_hours: float = Field(0, ge=0, le=1e12)
    max_gpu_hours_per_day: float | None = Field(None, ge=0, le=1e12)
    slurm_coordinators: bool = True


class Site(Strict):
    site: str = Field(pattern=PATTERN)
    description: str = ""
    executor: Literal["local", "slurm"] = "slurm"
    gpu_types: dict[str, GpuType] = Field(default_factory=dict)
    nodes: tuple[NodeGroup, ...] = Field(min_length=1)
    nvlink_domains: tuple[Domain, ...] = ()
    # Slurm's topology/block (23.11 on): the nvlink_domains are Slurm's blocks (topology.conf's
    # BlockName lines), and a step that must stay inside one asks Slurm with --segment instead of
    # node features. block_sizes: Slurm's BlockSizes; the first, the base block size, is the most
    # nodes Slurm keeps inside one block (a block may have more).
    nvlink_blocks: bool = False
    block_sizes: tuple[int, ...] = ()
    switches: tuple[Switch, ...] = ()
    partitions: tuple[Partition, ...] = ()  # at least one: checked in _consistent, to say so plainly
    accounts: dict[str, Account] = Field(default_factory=dict)
    ledger: str = "sqlite:///${SLURMGOV_HOME}/ledger.sqlite"
    fail_policy: Literal["closed", "open"] = "closed"
    snapshot_max_age_s: int = Field(300, ge=1, le=86400 * 30)
    default_weight: float = Field(1.0, gt=0)
    admins: Admins = Admins()
    operators: Operators = Operators()
    managers: Managers = Managers()
    # the budget an account gets when it appears in Slurm (its associations, or the hook journal)
    # without one in the ledger; None: such an account has no budget until an admin sets one
    default_budget: Account | None = None

    @field_validator("accounts")
    @classmethod
    def _acct_names(cls, v):
        for k in v:
            if not is_name(k):
                raise ValueError(f"account name {k!r} must match {PATTERN}")
            if k != k.lower():  # Slurm keeps account names in lower case, and so the hook compares them
                raise ValueError(f"account name {k!r}: Slurm account names are lower case; write {k.lower()!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        for i, g in enumerate(self.nodes):
            if g.gpu_type and g.gpu_type not in self.gpu_types:
                raise _At(("nodes", i, "gpu_type"), f"{g.gpu_type!r} is not in gpu_types")
        if not self.partitions:
            raise _At(("partitions",), "a site needs at least one partition (the Slurm partition its jobs go to)")
        for kind, what in (("switches", "switch"), ("nvlink_domains", "NVLink domain"), ("partitions", "partition")):
            seen: set[str] = set()
            for i, entry in enumerate(getattr(self, kind)):
                if entry.name in seen:
                    raise _At((kind, i, "name"), f"duplicate {what} name {entry.name!r}")
                seen.add(entry.name)
        defaults = [i for i, p in enumerate(self.partitions) if p.default]
        if len(defaults) > 1:
            raise _At(("partitions", defaults[1], "default"),
                      f"more than one partition is marked default ({self.partitions[defaults[0]].name} already is)")
        for i, p in enumerate(self.partitions):
            _check_times(i, p)
        self._check_blocks()
        _ = self.topology  # builds and cross-checks names; raises _At
        return self

    def _check_blocks(self) -> None:
        """What Slurm's topology/block insists on, said here with the site file's line."""
        if self.block_sizes and not self.nvlink_blocks:
            raise _At(("block_sizes",), "block sizes are for nvlink_blocks: true (Slurm's topology/block)")
        if self.nvlink_blocks and not self.nvlink_domains:
            raise _At(("nvlink_blocks",), "no nvlink_domains: list Slurm's blocks there (topology.conf BlockName lines)")
        for i, size in enumerate(self.block_sizes):
            if size < 1 or (i and size <= self.block_sizes[i - 1]):
                raise _At(("block_sizes",), f"{list(self.block_sizes)}: sizes in nodes, each larger than the one before")
        if self.block_sizes:
            for i, d in enumerate(self.nvlink_domains):
                if len(_expand(d.nodes)) < self.block_sizes[0]:  # slurmctld will not start with such a block
                    raise _At(("nvlink_domains", i, "nodes"), f"block {d.name} has {len(_expand(d.nodes))} nodes, "
                              f"fewer than the base block size {self.block_sizes[0]} (block_sizes)")

    @cached_property
    def topology(self) -> Topology:
        nodes = {}
        for i, g in enumerate(self.nodes):
            for n in _expand(g.names):
                if n in nodes:
                    raise _At(("nodes", i, "names"), f"node {n} is listed twice")
                nodes[n] = (g.gpus, g.gpu_type, g.cpus, g.memory_mb, g.features)
        domains = {d.name: _expand(d.nodes) for d in self.nvlink_domains}
        leaves = {s.name: _expand(s.nodes) for s in self.switches if s.nodes}
        uppers = {s.name: _expand(s.switches) for s in self.switches if s.switches}
        parts = {p.name: _expand(p.nodes) for p in self.partitions}
        try:
            cap = self.block_sizes[0] if self.nvlink_blocks and self.block_sizes else None
            return Topology(nodes, domains, leaves, uppers, parts, domain_cap=cap)
        except TopologyError as exc:
            index = next(i for i, e in enumerate(getattr(self, exc.kind)) if e.name == exc.name)
            raise _At((exc.kind, index, exc.field), exc.msg) from None

    def partition(self, name: str | None) -> Partition:
        if name is None:
            for p in self.partitions:
                if p.default:
                    return p
            return self.partitions[0]
        for p in self.partitions:
            if p.name == name:
                return p
        raise InputError(f"site {self.site}: no partition {name!r} (have: {', '.join(p.name for p in self.partitions)})")

    def weight(self, gpu_type: str | None) -> float:
        """Price weight of a GPU type; an untyped request is priced at the dearest type (worst case)."""
        if gpu_type is None:
            return max((t.weight for t in self.gpu_types.values()), default=self.default_weight)
        t = self.gpu_types.get(gpu_type)
        return t.weight if t else self.default_weight

    def ledger_url(self) -> str:
        return self.ledger.replace("${SLURMGOV_HOME}", str(slurmgov_home()))


def slurmgov_home() -> Path:
    """$SLURMGOV_HOME, else the user's XDG data directory; always absolute (a relative one is taken
    from the current directory): the ledger URL is ``sqlite:///`` + this path, and a relative path
    there would land under ``/``. The CLI pins it once at start (``pin_home`` in the interface)."""
    if os.environ.get("SLURMGOV_HOME"):
        return Path(os.environ["SLURMGOV_HOME"]).expanduser().absolute()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return (Path(base) / "slurmgov").absolute()


def _check_times(index: int, p: Partition) -> None:
    """A step without a time limit gets the partition's default: it must fit under the maximum."""
    if p.max_time_s is None or p.default_time_s <= p.max_time_s:
        return
    if "default_time_s" in p.model_fields_set:
        raise _At(("partitions", index, "default_time"),
                  f"{format_time(p.default_time_s)} is longer than max_time {format_time(p.max_time_s)}")
    raise _At(("partitions", index, "max_time"),
              f"{format_time(p.max_time_s)} is shorter than the default time limit {format_time(p.default_time_s)}; "
              f"set default_time")


def _describe(loc, data):
    if len(loc) >= 2 and loc[0] in ("nodes", "partitions", "switches", "nvlink_domains") and isinstance(loc[1], int):
        try:
            item = data[loc[0]][loc[1]]
            label = item.get("name") or item.get("names")
        except (KeyError, IndexError, TypeError, AttributeError):
            label = None
        return (f"{loc[0]}[{label or loc[1] + 1}]", loc[2:])
    return None, loc


def parse(doc: yamlfile.Located) -> Site:
    if not isinstance(doc.data, dict):
        raise InputError(f"{doc.path}: a site file is a YAML mapping with site, gpu_types, nodes, ...")
    try:
        return Site.model_validate(doc.data)
    except ValidationError as err:
        exc = err.errors()[0].get("ctx", {}).get("error")
        if isinstance(exc, _At):
            name, rest = _describe(exc.loc, doc.data)
            parts = [doc.where(exc.loc), name, ".".join(str(x) for x in rest)]
            raise InputError(": ".join(x for x in parts if x) + f": {exc.msg}") from None
        raise yamlfile.first_error(err, doc, _describe) from None


def load(path: str | Path) -> Site:
    return parse(yamlfile.load(path))


def default_site_path() -> Path:
    """$SLURMGOV_SITE, else the embedded default site_configs/local.yaml (the source tree's, or
    the one a wheel installed under <prefix>/share/slurmgov)."""
    if os.environ.get("SLURMGOV_SITE"):
        return Path(os.environ["SLURMGOV_SITE"])
    return shared_path("site_configs", "local.yaml")
