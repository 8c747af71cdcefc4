"""The request forms and prices of tests/data/hook_prices.yaml, and plugins/job_submit.lua's
internals under plain ``lua5.1`` (tests/lua/hook_driver.lua): shared by the pricing tests.

``lua51`` is a session fixture (registered in conftest.py): the path of ``lua5.1``, installed with apt-get when it is
missing and the tests run as root (as tests/slurm_harness.py installs Slurm).  When it cannot
be had the tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import host_apt
import pytest
import yaml
from slurm_fixtures import _unavailable

from slurmgov.slurm.gpu_request import (
    INFINITE,
    HookCpuPrice,
    HookPartition,
    HookPrice,
    HookRefusal,
    HookView,
    PriceParams,
    hook_cpu_price,
    hook_price,
)

ROOT = Path(__file__).resolve().parents[1]
CASES_PATH = ROOT / "tests" / "data" / "hook_prices.yaml"
DRIVER = ROOT / "tests" / "lua" / "hook_driver.lua"
HOOK = ROOT / "plugins" / "job_submit.lua"
SEP = "\x1f"  # sub-field separator of the driver's part/w/pg/acct fields


# ------------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    args: list[str] | None
    script: str | None
    env: dict[str, str]
    partition_set: str
    partitions: list[HookPartition]
    params: PriceParams
    snapshot: dict  # the case's snapshot parameters, as in the file
    job_desc: dict  # as in the file (time_limit may be "UNLIMITED")
    expect: dict = field(default_factory=dict)
    expect_cpu: dict | None = None  # the CPU price (what an account with a CPU budget pays)

    @property
    def raw_job_desc(self) -> dict:
        """job_desc as the hook gets it: UNLIMITED is INFINITE."""
        return {k: (INFINITE if k == "time_limit" and v == "UNLIMITED" else v) for k, v in self.job_desc.items()}


def partitions_of(rows: list[dict]) -> list[HookPartition]:
    return [HookPartition(r["name"], default_time=r.get("default_time"), max_time=r.get("max_time"),
                          default=bool(r.get("default", False)), max_share=r.get("max_share", 1)) for r in rows]


def params_of(snap: dict) -> PriceParams:
    return PriceParams(
        weights=dict(snap.get("weights") or {}), default_weight=float(snap.get("default_weight", 1.0)),
        default_time_min=int(snap.get("default_time_min", 60)), max_gpus_per_node=snap.get("max_gpus_per_node"),
        total_gpus=snap.get("total_gpus"), sockets_per_node=int(snap.get("sockets_per_node", 1)),
        partition_gpus={k: (int(v[0]), v[1]) for k, v in (snap.get("partition_gpus") or {}).items()},
        partition_cpus={k: (int(v[0]), float(v[1])) for k, v in (snap.get("partition_cpus") or {}).items()},
        default_cpu_weight=float(snap.get("default_cpu_weight", 1.0)), max_cpus_per_node=snap.get("max_cpus_per_node"),
    )


def load_cases() -> list[Case]:
    doc = yaml.safe_load(CASES_PATH.read_text())
    out = []
    for c in doc["cases"]:
        snap = {**doc["snapshot"], **(c.get("snapshot") or {})}
        pset = c.get("partitions", "cluster")
        out.append(Case(
            id=c["id"], args=c.get("args"), script=c.get("script"), env=dict(c.get("env") or {}),
            partition_set=pset, partitions=partitions_of(doc["partition_sets"][pset]), params=params_of(snap),
            snapshot=snap, job_desc=dict(c["job_desc"]), expect=dict(c["expect"]),
            expect_cpu=c.get("expect_cpu"),
        ))
    return out


def expected_result(case: Case) -> dict:
    """The case's expect, as a subset of price_result()'s keys."""
    e = case.expect
    if "refused" in e:
        return {"status": "no", "reason": e["refused"]}
    if e.get("gpu") is False:
        return {"status": "ok", "any_gpu": False}
    return {"status": "ok", "any_gpu": True, "cost": float(e["cost"]), "gpus": float(e["gpus"]),
            "tl": float(e["minutes"]), "tasks": float(e["tasks"]), "types": e["types"],
            "pin_time": e["pin_time"], "pin_nodes": e["pin_nodes"]}


def render_snapshot(params: PriceParams, accounts: dict[str, float], *, serial: int, written: int,
                    max_age_s: int = 600, fail_policy: str = "closed") -> str:
    """A snapshot file (plugins/SNAPSHOT_FORMAT.md) with these pricing parameters."""
    lines = ["slurmgov-snapshot\t1", f"serial\t{serial}", f"written\t{written}", f"max_age_s\t{max_age_s}",
             f"fail_policy\t{fail_policy}", f"default_time_min\t{params.default_time_min}",
             f"default_weight\t{params.default_weight!r}", f"sockets_per_node\t{params.sockets_per_node}"]
    if params.max_gpus_per_node is not None:
        lines.append(f"max_gpus_per_node\t{params.max_gpus_per_node}")
    if params.total_gpus is not None:
        lines.append(f"total_gpus\t{params.total_gpus}")
    lines += [f"weight\t{t}\t{w!r}" for t, w in params.weights.items()]
    lines += [f"partition_gpus\t{p}\t{n}\t{t or '-'}" for p, (n, t) in params.partition_gpus.items()]
    lines += [f"account\t{a}\t{v!r}" for a, v in sorted(accounts.items())]
    return "\n".join(lines) + "\nend\n"


# ------------------------------------------------------------------------------- lua5.1
def _install_lua(log: Path) -> str | None:
    host_apt.install("lua5.1", log=log)
    return shutil.which("lua5.1")


def find_lua(log: Path) -> tuple[str | None, str]:
    """(path of lua5.1, "") or (None, why not); installs Debian's lua5.1 as root when missing."""
    found = shutil.which("lua5.1")
    if found:
        return found, ""
    if os.geteuid() != 0:
        return None, "lua5.1 is not installed (apt-get install lua5.1) and installing it needs root"
    if shutil.which("apt-get") is None:
        return None, "lua5.1 is not installed and there is no apt-get to install it"
    found = _install_lua(log)
    return (found, "") if found else (None, f"apt-get install lua5.1 failed (see {log})")


@pytest.fixture(scope="session", name="lua51")
def lua51_fixture(tmp_path_factory):
    path, why = find_lua(tmp_path_factory.mktemp("lua") / "apt.log")
    if path is None:
        _unavailable(why)
    return path


def esc(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def unesc(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"t": "\t", "n": "\n", "r": "\r"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def line(fields: list[tuple[str, object]]) -> str:
    """One driver input line; fields with value None are left out."""
    return "\t".join(f"{k}={esc(v)}" for k, v in fields if v is not None)


def _num(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    return repr(v) if isinstance(v, float) else str(v)


def context_fields(params: PriceParams, partitions: list[HookPartition]) -> list[tuple[str, object]]:
    """Driver fields of the partitions (part_list) and snapshot parameters."""
    out: list[tuple[str, object]] = []
    for p in partitions:
        out.append(("part", SEP.join([p.name, _num(p.default_time), _num(p.max_time), _num(p.default),
                                      _num(p.max_share)])))
    for t, w in params.weights.items():
        out.append(("w", f"{t}{SEP}{_num(float(w))}"))
    for name, (n, t) in params.partition_gpus.items():
        out.append(("pg", SEP.join([name, _num(n), t or ""])))
    for name, (n, w) in params.partition_cpus.items():
        out.append(("pc", SEP.join([name, _num(n), _num(float(w))])))
    out.append(("default_cpu_weight", _num(float(params.default_cpu_weight))))
    if params.max_cpus_per_node is not None:
        out.append(("max_cpus_per_node", _num(params.max_cpus_per_node)))
    out += [("default_weight", _num(float(params.default_weight))), ("default_time_min", _num(params.default_time_min)),
            ("sockets_per_node", _num(params.sockets_per_node))]
    if params.max_gpus_per_node is not None:
        out.append(("max_gpus_per_node", _num(params.max_gpus_per_node)))
    return out


def price_line(case_id: str, job_desc: dict, params: PriceParams, partitions: list[HookPartition]) -> str:
    """Driver line: price the hook's desc_view of ``job_desc`` (raw Slurm values)."""
    fields: list[tuple[str, object]] = [("id", case_id), ("cmd", "price")]
    fields += [(f"d.{k}", v) for k, v in job_desc.items() if v is not None]
    return line(fields + context_fields(params, partitions))


def view_line(case_id: str, view: HookView, params: PriceParams, partitions: list[HookPartition]) -> str:
    """Driver line: price ``view`` as it is (as job_modify prices a rec_view)."""
    fields: list[tuple[str, object]] = [("id", case_id), ("cmd", "price")]
    fields += [(f"v.{k}", v) for k, v in vars(view).items() if v is not None]
    return line(fields + context_fields(params, partitions))


def cpu_price_line(case_id: str, req: dict | HookView, params: PriceParams, partitions: list[HookPartition]) -> str:
    """Driver line: the CPU price of a job_desc (raw Slurm values) or of a view as it is."""
    fields: list[tuple[str, object]] = [("id", case_id), ("cmd", "cpu_price")]
    if isinstance(req, HookView):
        fields += [(f"v.{k}", v) for k, v in vars(req).items() if v is not None]
    else:
        fields += [(f"d.{k}", v) for k, v in req.items() if v is not None]
    return line(fields + context_fields(params, partitions))


def run_lua(lua: str, lines: list[str], timeout: float = 300) -> list[list[str]]:
    """Run the driver once over ``lines``; one TAB-split, unescaped result row per line."""
    proc = subprocess.run([lua, str(DRIVER), str(HOOK)], check=False, input="".join(ln + "\n" for ln in lines),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0 and not proc.stderr, (proc.returncode, proc.stderr[-2000:])
    rows = [[unesc(f) for f in ln.split("\t")] for ln in proc.stdout.splitlines()]
    assert len(rows) == len(lines), (len(rows), len(lines))
    return rows


_FLOATS = ("gpus", "weighted", "per_node", "nodes", "tasks", "tl", "cost")


def lua_price_result(row: list[str]) -> dict:
    """A driver price row (without its id) as a comparable dict."""
    status = row[0]
    if status == "no":
        return {"status": "no", "reason": row[1], "message": row[2]}
    if status != "ok":
        return {"status": status, "message": "\t".join(row[1:])}
    kv = dict(f.split("=", 1) for f in row[1:])
    if kv["any_gpu"] == "0":
        return {"status": "ok", "any_gpu": False}
    out: dict = {"status": "ok", "any_gpu": True, "types": kv["types"], "pin_time": kv["pin_time"] == "1",
                 "pin_nodes": kv["pin_nodes"] == "1",
                 "max_nodes": None if kv["max_nodes"] == "-" else float(kv["max_nodes"])}
    for k in _FLOATS:
        out[k] = float(kv[k])
    return out


def py_price_result(p: HookPrice | HookRefusal) -> dict:
    """hook_price()'s answer as a comparable dict (numbers as the doubles Lua has)."""
    if isinstance(p, HookRefusal):
        return {"status": "no", "reason": p.reason, "message": p.message}
    if not p.any_gpu:
        return {"status": "ok", "any_gpu": False}
    out: dict = {"status": "ok", "any_gpu": True, "types": p.types, "pin_time": p.pin_time, "pin_nodes": p.pin_nodes,
                 "max_nodes": None if p.max_nodes is None else float(p.max_nodes)}
    for k in _FLOATS:
        out[k] = float(getattr(p, k))
    return out


_CPU_FLOATS = ("cpus", "weighted", "nodes", "tasks", "tl", "cost")


def lua_cpu_result(row: list[str]) -> dict:
    """A driver cpu_price row (without its id) as a comparable dict."""
    if row[0] == "no":
        return {"status": "no", "reason": row[1], "message": row[2]}
    if row[0] != "ok":
        return {"status": row[0], "message": "\t".join(row[1:])}
    kv = dict(f.split("=", 1) for f in row[1:])
    out: dict = {"status": "ok", "pin_time": kv["pin_time"] == "1", "pin_nodes": kv["pin_nodes"] == "1"}
    for k in _CPU_FLOATS:
        out[k] = float(kv[k])
    return out


def py_cpu_result(p: HookCpuPrice | HookRefusal) -> dict:
    """hook_cpu_price()'s answer as a comparable dict."""
    if isinstance(p, HookRefusal):
        return {"status": "no", "reason": p.reason, "message": p.message}
    out: dict = {"status": "ok", "pin_time": p.pin_time, "pin_nodes": p.pin_nodes}
    for k in _CPU_FLOATS:
        out[k] = float(getattr(p, k))
    return out


def py_cpu_price(view: HookView, params: PriceParams, partitions: list[HookPartition]) -> HookCpuPrice | HookRefusal:
    """hook_cpu_price with the GPUs the view's GPU price counts, as the hook passes them."""
    g = hook_price(view, params, partitions)
    return hook_cpu_price(view, params, partitions, g.gpus if isinstance(g, HookPrice) and g.any_gpu else 0)


def expected_cpu_result(case: Case) -> dict | None:
    """The case's expect_cpu (None: the case does not state its CPU price)."""
    e = case.expect_cpu
    if e is None:
        return None
    if "refused" in e:
        return {"status": "no", "reason": e["refused"]}
    return {"status": "ok", "cost": float(e["cost"]), "cpus": float(e["cpus"]), "tl": float(e["minutes"]),
            "tasks": float(e["tasks"]), "nodes": float(e["nodes"]), "pin_time": e["pin_time"],
            "pin_nodes": e["pin_nodes"]}


def subset(result: dict, keys) -> dict:
    return {k: result.get(k) for k in keys}
