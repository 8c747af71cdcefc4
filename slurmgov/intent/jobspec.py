"""The jobspec: an agent workflow DAG in YAML, validated strictly.

Every error is one line naming the file, the line, the step and the field, e.g.
``jobspecs/x.yaml:14: step 'critic': resources.gpus: Input should be greater than or equal to 0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from slurmgov.context.kv_size import DTYPE_BYTES, PRESETS, KVShape
from slurmgov.errors import InputError
from slurmgov.site import yamlfile
from slurmgov.site.names import PATTERN
from slurmgov.site.units import parse_memory_mb, parse_time_seconds

# Names (site.names) end up in Slurm job names, sacctmgr, SQL and the Lua hook's data: kept plain.
CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
Within = Literal["node", "nvlink-domain", "leaf-switch", "any"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Strict):
    gpus: int = Field(0, ge=0, le=4096, description="GPUs in total for the step")
    gpu_type: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    nodes: int = Field(1, ge=1, le=4096)
    cpus: int = Field(1, ge=1, le=4096, description="CPUs per node")
    memory_mb: int = Field(0, ge=0, alias="memory", description="memory per node (e.g. 16G)")
    time_s: int | None = Field(None, alias="time", description="time limit (Slurm format)")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("memory_mb", mode="before")
    @classmethod
    def _mem(cls, v):
        return parse_memory_mb(v)

    @field_validator("time_s", mode="before")
    @classmethod
    def _time(cls, v):
        return None if v is None else parse_time_seconds(v)

    @model_validator(mode="after")
    def _split(self):
        if self.gpus % self.nodes:
            raise ValueError(f"gpus ({self.gpus}) must split evenly over nodes ({self.nodes})")
        return self

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // self.nodes


class Model(Strict):
    layers: int = Field(ge=1, le=1000)
    kv_heads: int = Field(ge=1, le=1024)
    head_dim: int = Field(ge=1, le=4096)
    dtype: Literal["fp32", "fp16", "bf16", "fp8", "int8"] = "bf16"
    params_b: float = Field(0.0, ge=0, le=100_000)


class Context(Strict):
    model: Model | str
    tokens: int = Field(ge=1, le=100_000_000, description="context tokens per sequence")
    sequences: int = Field(1, ge=1, le=1_000_000)
    share: str | None = Field(None, pattern=PATTERN, description="steps with the same key reuse one KV prefix")
    kv_fp8: Literal["never", "if-needed", "always"] = Field(
        "never", description="KV cache in fp8 (e4m3, 1 byte): 'if-needed' when the model's dtype does not fit the GPUs asked"
    )

    @field_validator("model")
    @classmethod
    def _preset(cls, v):
        if isinstance(v, str) and v not in PRESETS:
            raise ValueError(f"unknown model preset {v!r} (known: {', '.join(sorted(PRESETS))})")
        return v

    @property
    def shape(self) -> KVShape:
        if isinstance(self.model, str):
            shape = KVShape(**PRESETS[self.model])
        else:
            m = self.model
            shape = KVShape(m.layers, m.kv_heads, m.head_dim, m.dtype, m.params_b)
        return shape.with_dtype("fp8") if self.kv_fp8 == "always" else shape


class Step(Strict):
    id: str = Field(pattern=PATTERN)
    run: str | None = Field(None, min_length=1, description="shell command")
    call: str | None = Field(None, description="Python callable module:function")
    params: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    after: tuple[str, ...] = ()
    resources: Resources = Resources()
    within: Within | None = None
    context: Context | None = None
    retries: int = Field(0, ge=0, le=10)

    @field_validator("after", mode="before")
    @classmethod
    def _after(cls, v):
        return (v,) if isinstance(v, str) else v

    @field_validator("call")
    @classmethod
    def _call(cls, v):
        if v is not None and not CALLABLE.fullmatch(v):
            raise ValueError(f"{v!r} is not a Python callable; write module.path:function")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v):
        for k in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise ValueError(f"{k!r} is not an environment variable name")
        return v

    @model_validator(mode="after")
    def _checks(self):
        if (self.run is None) == (self.call is None):
            raise ValueError("a step runs exactly one of `run` (shell) or `call` (module:function)")
        if self.params and self.call is None:
            raise ValueError("`params` go with `call`, not `run`")
        if self.within == "node" and self.resources.nodes > 1:
            raise ValueError(f"within: node, but the step asks for {self.resources.nodes} nodes")
        if self.within in ("nvlink-domain", "leaf-switch") and self.resources.gpus == 0:
            raise ValueError(f"within: {self.within} constrains GPUs, but the step asks for none")
        return self

    @property
    def placement(self) -> Within:
        """The topology requirement, defaulted: one node when it fits one node, else any."""
        if self.within:
            return self.within
        return "node" if self.resources.nodes == 1 else "any"


@dataclass(frozen=True)
class Source:
    """Where a workflow was read from, so a refusal after validation can still name ``file:line``."""

    path: str
    fields: dict[str, int | None]  # top-level keys: "account", "partition"
    step_lines: tuple[int | None, ...]  # the line of each step, in file order


class Workflow(Strict):
    workflow: str = Field(pattern=PATTERN)
    account: str = Field(pattern=PATTERN)
    description: str = ""
    partition: str | None = Field(None, pattern=PATTERN)
    on_failure: Literal["continue", "cancel"] = "continue"
    steps: tuple[Step, ...] = Field(min_length=1, max_length=100_000)
    _source: Source | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _dag(self):
        ids: dict[str, int] = {}
        for i, s in enumerate(self.steps):
            if s.id in ids:
                raise _StepError(i, "id", f"duplicate step id {s.id!r}")
            ids[s.id] = i
        for i, s in enumerate(self.steps):
            for d in s.after:
                if d not in ids:
                    raise _StepError(i, "after", f"unknown step {d!r}")
                if d == s.id:
                    raise _StepError(i, "after", "a step cannot come after itself")
        cycle = find_cycle(self.steps)
        if cycle:
            raise _StepError(ids[cycle[0]], "after", "cycle: " + " -> ".join(cycle + [cycle[0]]))
        return self

    def step(self, step_id: str) -> Step:
        return self.by_id[step_id]

    @property
    def by_id(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    def where(self, field: str) -> str | None:
        """``file:line`` of a top-level field ("account", "partition"); None when not read from a file."""
        src = self._source
        return _at(src.path, src.fields.get(field)) if src else None

    def where_step(self, step_id: str) -> str | None:
        """``file:line`` of a step; None when not read from a file."""
        src = self._source
        if src is None:
            return None
        index = next((i for i, s in enumerate(self.steps) if s.id == step_id), None)
        return _at(src.path, src.step_lines[index] if index is not None else None)


def _at(path: str, line: int | None) -> str:
    return f"{path}:{line}" if line else path


class _StepError(ValueError):
    """A DAG error that knows which step it belongs to (pydantic only knows the workflow)."""

    def __init__(self, index: int, field: str, msg: str):
        super().__init__(msg)
        self.index, self.field, self.msg = index, field, msg


def find_cycle(steps) -> list[str] | None:
    """Return one cycle as a list of step ids, or None. Iterative: 100k-step chains are fine."""
    after = {s.id: s.after for s in steps}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root, deps in after.items():
        if root in state:
            continue
        stack = [(root, iter(deps))]
        path = [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :][::-1]
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(after[nxt])))
                path.append(nxt)
    return None


def topo_order(wf: Workflow) -> list[Step]:
    """Steps in dependency order (Kahn), ties kept in file order."""
    indeg = {s.id: len(s.after) for s in wf.steps}
    children: dict[str, list[str]] = {s.id: [] for s in wf.steps}
    for s in wf.steps:
        for d in s.after:
            children[d].append(s.id)
    by_id = wf.by_id
    ready = [s.id for s in wf.steps if indeg[s.id] == 0]
    out = []
    while ready:
        sid = ready.pop(0) if len(ready) < 64 else ready.pop()
        out.append(by_id[sid])
        for c in children[sid]:
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    return out


def _describe(data):
    def describe(loc, _):
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            try:
                sid = data["steps"][loc[1]].get("id")
            except (KeyError, IndexError, TypeError, AttributeError):
                sid = None
            return (f"step {sid!r}" if sid else f"step #{loc[1] + 1}"), loc[2:]
        return None, loc

    return describe


# Values YAML aliases may add to a jobspec. The loader shares an alias's data, so reading is cheap,
# but whatever writes the data out (a step's output that echoes its params, the run record, the
# MCP server's copy) expands it: a few hundred bytes of nested aliases are 10**9 values. A jobspec
# written out in full is never refused for its size; the largest benchmarked (10,000 steps) has 174,000.
MAX_ALIAS_VALUES = 1_000_000


def parse(doc: yamlfile.Located) -> Workflow:
    if not isinstance(doc.data, dict):
        raise InputError(f"{doc.path}: a jobspec is a YAML mapping with workflow, account and steps")
    if doc.alias_values > MAX_ALIAS_VALUES:
        raise InputError(f"{doc.path}: its YAML aliases expand it by {doc.alias_values:,} values; a jobspec's "
                         f"aliases may add at most {MAX_ALIAS_VALUES:,} (write the repeated part out, or repeat it less)")
    try:
        wf = Workflow.model_validate(doc.data)
    except ValidationError as err:
        e = err.errors()[0]
        exc = e.get("ctx", {}).get("error")
        if isinstance(exc, _StepError):
            loc = ("steps", exc.index, exc.field)
            name, _ = _describe(doc.data)(loc, None)
            raise InputError(f"{doc.where(loc)}: {name}: {exc.field}: {exc.msg}") from None
        raise yamlfile.first_error(err, doc, _describe(doc.data)) from None
    wf._source = Source(
        doc.path,
        {k: doc.line((k,)) for k in ("account", "partition") if k in doc.data},
        tuple(doc.line(("steps", i)) for i in range(len(wf.steps))),
    )
    return wf


def load(path: str | Path) -> Workflow:
    return parse(yamlfile.load(path))


def loads(text: str, name: str = "<jobspec>") -> Workflow:
    return parse(yamlfile.load_text(text, name))


__all__ = ["DTYPE_BYTES", "Context", "Resources", "Step", "Workflow", "load", "loads", "topo_order"]
