"""Rich tables for plans, run reports, budgets and usage (the human side of --json)."""

from __future__ import annotations

import errno
import os

from rich.console import Console

from slurmgov.errors import InputError
from slurmgov.interface.tables import Table, show
from slurmgov.ledger.store import per_1k_tokens
from slurmgov.policy import tokens
from slurmgov.site.units import format_time


def write_output(path: str, data: str | bytes) -> None:
    """Write ``data`` to the file at ``path`` (an -o option), or InputError in one line that names
    it: a missing directory, a path through a regular file, no permission, a full disk."""
    try:
        with open(path, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
    except OSError as e:
        raise InputError(f"cannot write {path}: {_why_not(path, e)}") from None


def _why_not(path: str, e: OSError) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    if e.errno == errno.ENOTDIR:  # name the file that stands where a directory should
        first = parent
        while not os.path.exists(first) and os.path.dirname(first) != first:
            first = os.path.dirname(first)
        if os.path.isfile(first):
            return f"{first} is a file, not a directory"
    if e.errno == errno.ENOENT and not os.path.isdir(parent):
        return f"directory {parent} does not exist"
    if e.errno == errno.EISDIR:
        return "it is a directory"
    return (e.strerror or str(e)).lower()


def _h(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


PLAN_ROWS = 40  # a plan with more steps than this is summarised unless every row is asked for
NOTES_NAMED = 5  # a summary names this many allocations per kind of note, then counts the rest


def plan_tables(p, console: Console, every_row: bool = False) -> None:
    """The plan's allocations and steps; a large plan gets a summary of them instead (its
    rows would run to megabytes), unless ``every_row`` (`--all`)."""
    if not every_row and len(p.steps) > PLAN_ROWS:
        _plan_summary(p, console)
        return
    t = Table(title=f"plan: {p.workflow} (account {p.account}, site {p.site})")
    for col in ("alloc", "kind", "steps", "nodes x GPUs", "time", "worst case GPU-h", "Slurm options"):
        t.add_column(col, overflow="fold")
    for a in p.allocations:
        opts = " ".join(o for o in a.slurm_options(p.workflow, p.account) if not o.startswith(("--job-name", "--comment", "--account")))
        shape = "-" if a.kind == "host" else f"{a.nodes} x {a.gpus_per_node} {a.gpu_type or ''}".strip()
        t.add_row(a.id, a.kind, ", ".join(a.steps), shape, format_time(a.time_s) if a.kind != "host" else "-",
                  _h(a.cost_h), opts or "(runs on the submitting host)")
    show(t, console)
    s = Table(title="steps")
    for col in ("step", "alloc", "GPUs", "within", "time", "retries", "worst-case window", "share GPU-h", "KV GiB"):
        s.add_column(col)
    for ps in p.steps.values():
        s.add_row(ps.id, ps.alloc, str(ps.gpus), ps.within if ps.gpus else "-", format_time(ps.time_s), str(ps.retries),
                  f"{format_time(ps.start_s) if ps.start_s else '0'} .. {format_time(ps.end_s)}", _h(ps.share_h),
                  (f"{ps.kv_bytes / 2**30:.1f}" + (" fp8" if ps.kv_dtype == "fp8" else "")) if ps.kv_bytes else "-")
    show(s, console)
    for n in p.notes:
        console.print(f"note: {n}")
    console.print(f"worst case: [bold]{p.cost_h:.2f} GPU-h[/bold] (weighted), makespan up to {format_time(p.makespan_s)}")


def _plan_summary(p, console: Console) -> None:
    allocs: dict[tuple, list] = {}
    for a in p.allocations:
        allocs.setdefault((a.kind, a.gpu_type, a.gpus_per_node, a.within), []).append(a)
    t = Table(title=f"plan: {p.workflow} (account {p.account}, site {p.site}): allocations by shape")
    for col in ("kind", "GPUs per node", "within", "allocs", "steps", "most nodes", "longest", "worst case GPU-h"):
        t.add_column(col)
    for (kind, gpu_type, gpn, within), group in allocs.items():
        if kind == "host":
            t.add_row(kind, "-", "-", str(len(group)), str(sum(len(a.steps) for a in group)), "-", "-", "0")
            continue
        t.add_row(kind, f"{gpn} {gpu_type or ''}".strip(), within, str(len(group)), str(sum(len(a.steps) for a in group)),
                  str(max(a.nodes for a in group)), format_time(max(a.time_s for a in group)),
                  _h(sum(a.cost_h for a in group)))
    console.print(t)
    steps: dict[tuple, list] = {}
    for ps in p.steps.values():
        steps.setdefault((ps.gpus, ps.gpu_type, ps.within if ps.gpus else "-"), []).append(ps)
    s = Table(title="steps by shape")
    for col in ("GPUs", "within", "steps", "longest", "with retries", "wait up to", "share GPU-h"):
        s.add_column(col)
    for (gpus, gpu_type, within), group in sorted(steps.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        wait = max(ps.queue_s for ps in group)
        s.add_row(f"{gpus} {gpu_type or ''}".strip(), within, str(len(group)), format_time(max(ps.time_s for ps in group)),
                  str(sum(1 for ps in group if ps.retries)), format_time(wait) if wait else "-",
                  _h(sum(ps.share_h for ps in group)))
    console.print(s)
    for n in _grouped_notes(p.notes):
        console.print(f"note: {n}")
    jobs = sum(1 for a in p.allocations if a.kind != "host")
    console.print(f"{len(p.steps)} steps in {len(p.allocations)} allocations ({jobs} Slurm jobs); "
                  f"--all lists every allocation and step, --json gives them all")
    console.print(f"worst case: [bold]{p.cost_h:.2f} GPU-h[/bold] (weighted), makespan up to {format_time(p.makespan_s)}")


def _grouped_notes(notes: list[str]) -> list[str]:
    """'a5: X', 'a9: X', ... -> 'a5, a9 and 13 more: X': one line per different note."""
    by_text: dict[str, list[str]] = {}
    for n in notes:
        alloc, sep, text = n.partition(": ")
        if not sep or " " in alloc:  # not about one allocation
            alloc, text = "", n
        by_text.setdefault(text, []).append(alloc)
    out = []
    for text, allocs in by_text.items():
        named = [a for a in allocs if a]
        if not named:
            out.extend([text] * len(allocs))
            continue
        more = f" and {len(named) - NOTES_NAMED} more" if len(named) > NOTES_NAMED else ""
        out.append(f"{', '.join(named[:NOTES_NAMED])}{more}: {text}")
    return out


def run_tables(rep, balance, console: Console) -> None:
    r = rep.result
    slurm = rep.executor == "slurm"
    t = Table(title=f"run {r.run_id}: {rep.plan.workflow} -> {r.status}")
    cols = ["step", "status", "attempts", "alloc", "GPUs", "wall s", "GPU-s", "cost GPU-h", "share GPU-h"]
    metered = {sid: step_tokens(rec.attempts) for sid, rec in r.steps.items()}
    if any(n is not None for n in metered.values()):  # a step reported usage: {prompt_tokens, ...}
        cols += ["tokens", "GPU-s/1k tokens"]
    if slurm:
        cols += ["node", "within (asked -> got)"]
    for col in cols + ["note"]:
        t.add_column(col, overflow="fold")
    for sid, rec in r.steps.items():
        ps = rep.plan.steps[sid]
        sc = rep.steps.get(sid)
        row = [sid, rec.status, str(len(rec.attempts)), rec.spec.alloc, str(rec.spec.gpus), f"{rec.wall_s:.2f}",
               f"{rec.gpu_seconds:.2f}", f"{sc.cost_h:.5f}" if sc else "0", _h(ps.share_h)]
        if "tokens" in cols:
            n = metered[sid]
            per = per_1k_tokens(rec.gpu_seconds, n)
            row += ["-" if n is None else f"{n:,}", "-" if per is None else f"{per:.3f}"]
        if slurm:
            row += [",".join(sc.nodes) if sc else "host", f"{sc.requested} -> {sc.achieved}" if sc else "-"]
        t.add_row(*row, rec.reason or "")
    show(t, console)
    a = Table(title="allocations" + (" (held = sacct's GPUs x elapsed)" if slurm else ""))
    cols = ["alloc", "GPUs"] + (["Slurm jobs", "nodes", "leaf", "within (asked -> got)"] if slurm else [])
    for col in cols + ["held GPU-s", "busy GPU-s", "idle GPU-s", "busy %", "cost GPU-h", "events"]:
        a.add_column(col, overflow="fold")
    for aid, ac in rep.allocations.items():
        row = [aid, str(ac.gpus)]
        if slurm:
            jobs = [f"{j} {st}" for j, st in zip(ac.job_ids, ac.states)]
            ok = "" if ac.locality_ok else " (!)"
            row += ["; ".join(jobs) or "-", ",".join(ac.nodes) or "-", ",".join(ac.leaves) or "-",
                    f"{ac.requested} -> {ac.achieved}{ok}"]
        row += [f"{ac.held_gpu_s:.2f}", f"{ac.busy_gpu_s:.2f}", f"{ac.idle_gpu_s:.2f}",
                f"{100 * ac.busy_gpu_s / ac.held_gpu_s:.0f}%" if ac.held_gpu_s else "-", f"{ac.cost_h:.5f}",
                "; ".join(ac.events)]
        a.add_row(*row)
    show(a, console)
    for sid, rec in r.steps.items():
        out = rec.output
        if isinstance(out, dict) and "blocks_saved" in out:  # a step that reports its KV cache
            console.print(
                f"context: {sid} kept {out['blocks_used']} KV blocks instead of {out['blocks_without_sharing']}: "
                f"{out['blocks_saved']} blocks ({out.get('bytes_saved', 0):,} bytes) saved by sharing; "
                f"{out.get('kv_block_seconds', 0):.3f} KV block-seconds ({out.get('path', '?')})"
            )
    waste = rep.waste_gpu_s
    held = sum(ac.held_gpu_s for ac in rep.allocations.values())
    console.print(f"waste: {waste:.1f} of {held:.1f} allocated GPU-s sat idle ({100 * waste / held if held else 0:.0f}%)")
    if slurm:
        console.print(
            f"worst case {rep.plan.cost_h:.2f} GPU-h; the allocations' jobs cost {rep.charged_h:.5f} GPU-h "
            f"(sacct; the governor charges it). account {balance.account}: {balance.available_h:.4f} of "
            f"{balance.budget_h:.2f} GPU-h left ({balance.period}) as of its last sync"
        )
    else:
        console.print(
            f"held up to {rep.plan.cost_h:.2f} GPU-h; charged {rep.charged_h:.5f} GPU-h; released the rest. "
            f"account {balance.account}: {balance.available_h:.4f} of {balance.budget_h:.2f} GPU-h left ({balance.period})"
        )


def balance_table(balances, console: Console, forecasts: dict | None = None, fmt: str = "table",
                  cpu: dict | None = None) -> None:
    """``cpu``: account -> the Balance of its CPU budget, for the accounts that have one (their
    columns come last, and only when some account has one: other sites' output is unchanged)."""
    t = Table(title="budgets")
    cols = ["account", "period", "budget GPU-h", "charged", "held", "available", "used %", "burn/day", "runs out"]
    if cpu:
        cols += ["CPU budget CPU-h", "CPU held", "CPU available"]
    for col in cols:
        t.add_column(col, justify="right" if col != "account" else "left")
    for b in balances:
        f = (forecasts or {}).get(b.account)
        used = 100 * (b.charged_h + b.held_h) / b.budget_h if b.budget_h else 0
        style = "red" if f and f.alert else None
        budget = _h(b.budget_h) + (f" (+{_h(b.carried_h)} rolled over)" if b.carried_h else "")
        period = b.period + (f", expires {b.expires}" if b.expires else "")
        extra = []
        if cpu:
            c = cpu.get(b.account)
            extra = [_h(c.budget_h), _h(c.held_h), _h(c.available_h)] if c else ["-", "-", "-"]
        t.add_row(b.account, period, budget, _h(b.charged_h), _h(b.held_h), _h(b.available_h),
                  f"{used:.1f}%", _h(f.burn_h_per_day) if f else "-", (f.runs_out or "-") if f else "-", *extra,
                  style=style)
    show(t, console, fmt)
    for f in (forecasts or {}).values() if fmt == "table" else ():  # tsv is the table alone
        if f.runs_out and any(b.account == f.account for b in balances):
            console.print(f.sentence())


def step_tokens(attempts) -> int | None:
    """The tokens a step's attempts reported (None: none reported any)."""
    counts = [tokens.total(*tokens.reported(a.output)) for a in attempts]
    return None if all(n is None for n in counts) else sum(n or 0 for n in counts)


def _opt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def usage_as_table(rows, by: str) -> Table:
    t = Table(title=f"usage by {by}")
    for col in (by, "charges", "GPU-s", "charged GPU-h", "tokens", "GPU-s/1k tokens"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["key"]), str(r["charges"]), f"{r['gpu_seconds']:.2f}", f"{r['charged_h']:.5f}",
                  _opt(r.get("tokens"), "d"), _opt(r.get("gpu_s_per_1k_tokens"), ".3f"))
    return t


def usage_table(rows, by: str, console: Console, fmt: str = "table") -> None:
    show(usage_as_table(rows, by), console, fmt)


def waste_table(rows, by: str, console: Console, fmt: str = "table") -> None:
    t = Table(title=f"allocated GPU time by {by}: used by steps vs idle")
    for col in (by, "runs", "used GPU-s", "idle GPU-s", "idle %", "idle GPU-h"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["key"]), str(r["runs"]), f"{r['used_gpu_seconds']:.1f}", f"{r['idle_gpu_seconds']:.1f}",
                  f"{100 * r['idle_share']:.0f}%", f"{r['idle_h']:.4f}")
    show(t, console, fmt)


def placement_table(rep: dict, console: Console, fmt: str = "table") -> None:
    if not rep["jobs"] and fmt == "table":
        console.print("no GPU jobs recorded yet (the governor samples running jobs every --placement-every seconds)")
        return
    t = Table(title=f"placement: {rep['jobs']} GPU jobs, {100 * rep['share']:.0f}% got the locality they asked for")
    for col in ("asked for", "jobs", "got it", "share"):
        t.add_column(col)
    for within, r in rep["by_request"].items():
        if r["jobs"]:
            t.add_row(within, str(r["jobs"]), str(r["satisfied"]), f"{100 * r['share']:.0f}%")
    show(t, console, fmt)
    for miss in rep["misses"][:20] if fmt == "table" else ():
        console.print(f"miss: job {miss['job_id']} asked for {miss['requested']}, got {miss['got']} ({miss['nodes']})")


def fragmentation_table(rep: dict, console: Console, fmt: str = "table") -> None:
    if not rep["samples"] and fmt == "table":
        console.print("no samples recorded yet (run `slurmgov governor`, or `slurmgov sync --placement`)")
        return
    t = Table(title=f"free N-GPU slots over {rep['samples']} samples (now / min / mean)")
    t.add_column("leaf switch")
    for k in rep["total"]:
        t.add_column(f"{k}-GPU")
    for name, series in list(rep["leaf_switches"].items()) + [("all", rep["total"])]:
        t.add_row(name, *(f"{v['now']} / {v['min']} / {v['mean']:.1f}" for v in series.values()))
    show(t, console, fmt)
