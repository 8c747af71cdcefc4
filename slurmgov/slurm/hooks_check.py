"""`slurmgov hooks check`: held probe jobs through the real submit hook, before an admin trusts it.

One held job (``sbatch -H``) per common GPU request form, plus one CPU-only job, goes through
slurmctld and so through ``job_submit.lua``. For each, the hook's ``probe`` journal line says
what Slurm handed it and its ``admit`` line (found by the hold token in the job's AdminComment)
what it charged; ``scontrol show job`` says what Slurm made of the job afterwards. Every probe
is cancelled whatever happens (errors, Ctrl-C), and the queue is watched, bounded, until they
are gone. Alongside: the fail policy in force, the snapshot's serial and age, and whether
slurm.conf in the hook dir loads both hooks.

The most important finding is a GPU job that Slurm admitted with no journal line for it: the
hook is not running, and nothing is governed.

Pure logic here; every Slurm command is an argument list (never a shell) run through a small
runner with a bounded time, as in ``slurm_cli``. Formats: ``plugins/SNAPSHOT_FORMAT.md``.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from slurmgov.errors import InputError, PermissionDenied, SlurmgovError

PROBE_PREFIX = "slurmgov-probe"
SNAPSHOT = "slurmgov_snapshot.txt"
JOURNAL = "slurmgov_journal.log"
HOOK_CONF = "slurmgov_hook.conf"
HOLD = re.compile(r"slurmgov:hold=(\S+)")
# Refusals that are the budget's answer (the hook works; the account cannot pay).
BUDGET_REFUSAL = re.compile(r"slurmgov: account .*(GPU-h left|has no GPU budget)")
# Fields of a probe line that are the hook's own result, not what Slurm handed it.
HOOK_RESULT_FIELDS = ("price", "priced_time", "priced_gpus", "tasks", "pinned")
CANCEL_WAIT_S = 10.0  # how long to watch the queue for the cancelled probes
JOURNAL_WAIT_S = 2.0  # the hook appends before sbatch returns; this only covers slow shared file systems


class HookCheckFailed(SlurmgovError):
    """A probe shows the hook does not govern (exit 1)."""

    exit_code = 1


class Interrupted(SlurmgovError):
    exit_code = 130


# ------------------------------------------------------------------------------- probe forms
@dataclass(frozen=True)
class Form:
    number: int
    args: tuple[str, ...]
    gpu: bool = True

    @property
    def label(self) -> str:
        return " ".join(self.args)


def probe_forms(gpu_type: str | None) -> list[Form]:
    """The common request forms, numbered; the typed one only when the site names a GPU type."""
    args = [
        ("--gres=gpu:1", "-t", "10"),
        (f"--gres=gpu:{gpu_type}:2", "-t", "10") if gpu_type else None,
        ("--gpus=2", "-t", "10"),
        ("--gpus-per-node=1", "-N", "2", "-t", "10"),
        ("--gpus-per-task=1", "-n", "2", "-t", "10"),
        ("--gres=gpu:1",),  # no time: the partition's default
        ("--gres=gpu:1", "--exclusive", "-t", "10"),
        ("--gres=gpu:1", "-n", "4", "-t", "10"),  # no -N: the hook pins the nodes it priced
        ("--gres=gpu:1", "-a", "0-3", "-t", "10"),
    ]
    forms = [Form(i, a) for i, a in enumerate(args, 1) if a]
    forms.append(Form(len(args) + 1, ("-t", "10"), gpu=False))
    return forms


# --------------------------------------------------------------------------------- the runner
@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str


class Runner(Protocol):
    def __call__(self, cmd: list[str]) -> Result: ...


def probe_env(conf_dir: str | Path, base: dict | None = None) -> dict:
    """The caller's environment aimed at ``conf_dir``'s cluster, without the caller's SBATCH_*/
    SLURM_* settings (an SBATCH_TIMELIMIT would turn the no-time probe into a timed one)."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
    env["SLURM_CONF"] = str(Path(conf_dir).resolve() / "slurm.conf")
    return env


class SlurmRunner:
    """Runs one Slurm command (argument list, no shell, bounded time); a missing command or
    one that hangs is one SlurmgovError line. Exit status and output are the caller's to judge."""

    def __init__(self, env: dict, timeout: float = 30):
        self.env, self.timeout = env, timeout

    def __call__(self, cmd: list[str]) -> Result:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=self.timeout,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SlurmgovError(f"{cmd[0]}: not found; is this a Slurm login node?") from None
        except subprocess.TimeoutExpired:
            raise SlurmgovError(f"{' '.join(cmd[:3])}: no answer in {self.timeout:g} s") from None
        return Result(p.returncode, p.stdout, p.stderr)


def sbatch_cmd(form: Form, name: str, account: str | None) -> list[str]:
    return ["sbatch", "--parsable", "-H", "-J", name, "-o", "/dev/null", "--wrap", "true",
            *(["-A", account] if account else []), *form.args]


# ------------------------------------------------------------------------------ files on disk
@dataclass
class HookConf:
    path: str
    exists: bool
    snapshot_path: str
    journal_path: str
    fail_policy: str  # for a missing or unreadable snapshot
    ignored: list[str] = field(default_factory=list)  # lines the hook ignores, said so
    cpu_budgets: bool = False  # the site has CPU budgets: fail_policy closed holds CPU jobs too


def read_hook_conf(conf_dir: str | Path) -> HookConf:
    """``slurmgov_hook.conf`` read exactly as job_submit.lua reads it (so what is shown is what
    the hook uses): ``key value``, value = rest of the line; ``#`` starts a comment at the start
    of a line or after a space."""
    conf_dir = Path(conf_dir)
    path = conf_dir / HOOK_CONF
    conf = HookConf(str(path), path.exists(), str(conf_dir / SNAPSHOT), str(conf_dir / JOURNAL), "closed")
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return conf
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*([A-Za-z0-9_]+)\s+(.*?)\s*$", re.sub(r"\s+#.*$", "", line))
        if not m or line.startswith("#"):
            continue
        key, value = m.groups()
        if key in ("snapshot_path", "journal_path") and value:
            setattr(conf, key, value)
        elif key == "fail_policy":
            if value in ("open", "closed"):
                conf.fail_policy = value
            else:
                conf.ignored.append(f"{path}:{n}: fail_policy {value!r} is not open or closed; the hook ignores it")
        elif key == "cpu_budgets":
            conf.cpu_budgets = value == "yes"
        elif key == "default_time_min" and not re.fullmatch(r"\d+", value):
            conf.ignored.append(f"{path}:{n}: default_time_min {value!r} is not a whole number; the hook ignores it")
    return conf


@dataclass
class SnapshotInfo:
    path: str
    readable: bool
    error: str | None = None
    serial: str | None = None
    written: float | None = None
    age_s: int | None = None
    max_age_s: float | None = None
    stale: bool | None = None
    fail_policy: str | None = None
    accounts: list[str] = field(default_factory=list)
    cpu_accounts: int = 0  # accounts with a CPU budget (cpu_account lines)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["accounts"] = len(self.accounts)
        return d


_NUM = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def read_snapshot(path: str | Path, now: float) -> SnapshotInfo:
    """The header of a snapshot, judged as the hook judges it (readable or not, stale or not)."""
    info = SnapshotInfo(str(path), readable=False)
    try:
        lines = Path(path).read_text(errors="replace").split("\n")
    except OSError as exc:
        info.error = f"cannot read {path}: {exc.strerror or exc}"
        return info
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    while lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != "slurmgov-snapshot\t1":
        info.error = "not a version 1 slurmgov snapshot"
        return info
    if lines[-1] != "end":
        info.error = "no end line (incomplete write?)"
        return info
    kv: dict[str, list[str]] = {}
    accounts: list[str] = []
    for i, line in enumerate(lines[1:-1], 2):
        if not line or line.startswith("#"):
            continue
        f = line.split("\t")
        if f[0] == "account":
            if len(f) != 3 or not f[1] or not _NUM.fullmatch(f[2]) or f[1] in accounts:
                info.error = f"bad line {i} (account)"
                return info
            accounts.append(f[1])
        elif f[0] == "cpu_account":
            info.cpu_accounts += 1
        elif f[0] in ("serial", "written", "max_age_s", "fail_policy"):
            ok = len(f) == 2 and (re.fullmatch(r"\d+", f[1]) if f[0] == "serial" else
                                  f[1] in ("open", "closed") if f[0] == "fail_policy" else _NUM.fullmatch(f[1]))
            if not ok:
                info.error = f"bad line {i} ({f[0]})"
                return info
            kv[f[0]] = f
    if not all(k in kv for k in ("serial", "written", "max_age_s")):
        info.error = "missing serial, written or max_age_s"
        return info
    info.readable = True
    info.serial = kv["serial"][1]
    info.written = float(kv["written"][1])
    info.max_age_s = float(kv["max_age_s"][1])
    info.age_s = int(now - info.written)
    info.stale = now - info.written > info.max_age_s
    info.fail_policy = kv["fail_policy"][1] if "fail_policy" in kv else "closed"
    info.accounts = accounts
    return info


@dataclass
class SlurmConfInfo:
    path: str
    job_submit_plugins: str | None = None
    job_comp_type: str | None = None

    @property
    def submit_lua(self) -> bool:
        return any(p.strip().split("/")[-1] == "lua" for p in (self.job_submit_plugins or "").split(","))

    @property
    def jobcomp_lua(self) -> bool:
        return (self.job_comp_type or "").strip() == "jobcomp/lua"

    def as_dict(self) -> dict:
        return {"path": self.path, "JobSubmitPlugins": self.job_submit_plugins, "submit_lua": self.submit_lua,
                "JobCompType": self.job_comp_type, "jobcomp_lua": self.jobcomp_lua}


def read_slurm_conf(conf_dir: str | Path) -> SlurmConfInfo:
    """JobSubmitPlugins and JobCompType of slurm.conf (and the files it Includes), keys in any case."""
    path = Path(conf_dir) / "slurm.conf"
    info = SlurmConfInfo(str(path))
    seen: set[Path] = set()

    def scan(p: Path) -> None:
        if p in seen or len(seen) > 32:
            return
        seen.add(p)
        try:
            text = p.read_text(errors="replace")
        except OSError:
            return
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            word = line.split(None, 1)
            if word[0].lower() == "include" and len(word) == 2:
                inc = Path(word[1].strip())
                scan(inc if inc.is_absolute() else Path(conf_dir) / inc)
                continue
            for tok in line.split():
                key, _, value = tok.partition("=")
                if key.lower() == "jobsubmitplugins":
                    info.job_submit_plugins = value
                elif key.lower() == "jobcomptype":
                    info.job_comp_type = value

    scan(path)
    return info


def journal_size(path: str | Path) -> int:
    """Where this check's lines will start; the journal must be readable (it holds tokens: 0640)."""
    try:
        with open(path, "rb") as fh:
            return fh.seek(0, os.SEEK_END)
    except FileNotFoundError:
        return 0
    except PermissionError:
        raise PermissionDenied(f"{path}: permission denied; run hooks check as root or in SlurmUser's group "
                               "(the journal holds hold tokens)") from None
    except OSError as exc:
        raise SlurmgovError(f"{path}: cannot read the hook's journal: {exc.strerror or exc}") from None


def journal_lines(path: str | Path, offset: int) -> list[list[str]]:
    """Whole lines from ``offset`` on (all of them if the journal was rotated meanwhile), split on TAB."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(offset if offset <= size else 0)
            data = fh.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SlurmgovError(f"{path}: cannot read the hook's journal: {exc.strerror or exc}") from None
    return [raw.decode("utf-8", "replace").split("\t") for raw in data.split(b"\n")[:-1]]


def parse_probe_fields(text: str) -> dict[str, str]:
    """``key=value key=value ...`` of a probe line (values never contain spaces)."""
    out = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if eq:
            out[key] = value
    return out


_UNSET32 = {"4294967294": None, "4294967295": "INFINITE"}  # NO_VAL, INFINITE
_UNSET16 = {"65534": None, "65535": "INFINITE"}  # NO_VAL16, INFINITE16
_FIELDS16 = {"ntasks_per_node", "sockets_per_node", "shared"}


def set_fields(handed: dict[str, str]) -> dict[str, str]:
    """What Slurm handed the hook, less what it left unset (its NO_VAL sentinels); INFINITE named."""
    out = {}
    for k, v in handed.items():
        table = _UNSET16 if k in _FIELDS16 else _UNSET32
        if v in table:
            named = table[v]
            if named is None:
                continue
            v = named
        out[k] = v
    return out


def _scontrol_fields(text: str) -> dict[str, str]:
    """First record of ``scontrol show job -o`` as key -> value (AdminComment kept whole: it may hold spaces)."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    out: dict[str, str] = {}
    for m in re.finditer(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(\S*)", line):
        out.setdefault(m.group(1), m.group(2))
    admin = re.search(r"(?:^|\s)AdminComment=(.*?)(?=\s[A-Z][A-Za-z]*=|$)", line)
    if admin:
        out["AdminComment"] = admin.group(1).strip()  # scontrol pads it with a second space
    return out


def fmt_gpuh(gpu_s: float) -> str:
    """GPU-h as the hook writes them: two decimals, a trailing zero dropped (0.5, 0.17, 2.0)."""
    return re.sub(r"(\.\d)0$", r"\1", f"{gpu_s / 3600:.2f}")


# ---------------------------------------------------------------------------------- the check
@dataclass
class Probe:
    form: int
    request: str
    args: list[str]
    gpu: bool
    job_name: str
    submitted: bool = False
    job_id: str | None = None
    refusal: str | None = None  # sbatch's own line(s) when it refused
    handed: dict | None = None  # what Slurm handed the hook (probe line), None without one
    hook_price: dict | None = None  # the hook's own price/priced_* fields of the probe line
    pinned: str | None = None
    admit: dict | None = None  # the journaled price
    admin_comment: str | None = None
    token: str | None = None
    slurm_now: dict | None = None  # TimeLimit/NumNodes as Slurm shows the job
    outcome: str = "not run"
    ok: bool = False
    problem: str | None = None
    hook_inactive: bool = False  # Slurm admitted a GPU job the hook never journaled


@dataclass
class Report:
    conf_dir: str
    slurm_conf: SlurmConfInfo
    hook_conf: HookConf
    snapshot: SnapshotInfo
    account: str | None
    gpu_type: str | None
    hook_same_as_shipped: bool | None
    probes: list[Probe] = field(default_factory=list)
    left_in_queue: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def fail_policy(self) -> str:
        """What the hook does with GPU jobs when it cannot trust the snapshot: the snapshot's own
        policy while it is readable, else hook.conf's."""
        snap = self.snapshot
        return snap.fail_policy if snap.readable and snap.fail_policy is not None else self.hook_conf.fail_policy

    @property
    def ok(self) -> bool:
        return not self.problems

    def headline(self) -> str:
        """The one line an admin must read first."""
        dead = [p for p in self.probes if p.hook_inactive]
        if dead:
            forms = ", ".join(f"#{p.form}" for p in dead)
            return (f"the hook journaled nothing for {len(dead)} GPU probe(s) that Slurm admitted ({forms}): "
                    f"job_submit.lua in {self.conf_dir} is not governing GPU jobs (JobSubmitPlugins=lua in the "
                    "slurm.conf slurmctld reads? scontrol reconfigure?)")
        if not self.problems:
            return "ok"
        more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
        return self.problems[0] + more

    def as_dict(self) -> dict:
        return {
            "ok": self.ok, "conf_dir": self.conf_dir, "slurm_conf": self.slurm_conf.as_dict(),
            "hook_conf": asdict(self.hook_conf), "snapshot": self.snapshot.as_dict(),
            "fail_policy": self.fail_policy, "account": self.account, "gpu_type": self.gpu_type,
            "hook_same_as_shipped": self.hook_same_as_shipped, "journal_path": self.hook_conf.journal_path,
            "probes": [asdict(p) for p in self.probes], "left_in_queue": self.left_in_queue,
            "warnings": self.warnings, "problems": self.problems,
        }


def require_hook_dir(conf_dir: str | Path) -> Path:
    conf_dir = Path(conf_dir)
    if not (conf_dir / "slurm.conf").is_file():
        raise InputError(f"{conf_dir}: no slurm.conf; --slurm-conf-dir must be the directory of slurm.conf")
    if not (conf_dir / "job_submit.lua").is_file():
        raise InputError(f"{conf_dir}: no job_submit.lua; install it with `slurmgov hooks install "
                         f"--slurm-conf-dir {conf_dir}`")
    return conf_dir


def pick_account(site_accounts: dict, snap: SnapshotInfo) -> str | None:
    """The first account of the site file with a budget (one the snapshot lists, when it is
    readable); None: sbatch uses the user's default account."""
    budgeted = [a for a, terms in site_accounts.items() if terms.budget_gpu_hours > 0]
    if snap.readable:
        listed = [a for a in budgeted if a in snap.accounts]
        if listed:
            return listed[0]
    return budgeted[0] if budgeted else None


def check(conf_dir: str | Path, account: str | None, gpu_type: str | None, runner: Runner,
          clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
          shipped_hook: Path | None = None) -> Report:
    """Run the probes through the hook and judge them; every probe job is cancelled before this returns."""
    conf_dir = require_hook_dir(conf_dir)
    hook_conf = read_hook_conf(conf_dir)
    snap = read_snapshot(hook_conf.snapshot_path, clock())
    same = None
    if shipped_hook is not None and shipped_hook.exists():
        try:
            same = (conf_dir / "job_submit.lua").read_bytes() == shipped_hook.read_bytes()
        except OSError:
            same = None
    rep = Report(str(conf_dir), read_slurm_conf(conf_dir), hook_conf, snap, account, gpu_type, same)
    offset = journal_size(hook_conf.journal_path)
    forms = {f.number: f for f in probe_forms(gpu_type)}
    rep.probes = [Probe(f.number, f.label, list(f.args), f.gpu, f"{PROBE_PREFIX}-{f.number}-{secrets.token_hex(4)}")
                  for f in forms.values()]
    try:
        for p in rep.probes:
            _submit(p, forms[p.form], account, runner)
        _read_journal(rep, offset, sleep, clock)
    except KeyboardInterrupt:
        raise Interrupted("hooks check: interrupted; the probe jobs were cancelled") from None
    finally:
        rep.left_in_queue = cancel_probes(rep.probes, runner, sleep, clock)
    for p in rep.probes:
        _judge(p)
    _summarise(rep)
    return rep


def _submit(p: Probe, form: Form, account: str | None, runner: Runner) -> None:
    r = runner(sbatch_cmd(form, p.job_name, account))
    if r.rc != 0:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        mine = [ln for ln in lines if "slurmgov:" in ln]
        p.refusal = "; ".join(mine or lines[-1:]) or f"sbatch exited {r.rc}"
        return
    p.submitted = True
    p.job_id = (r.stdout.strip().splitlines() or [""])[-1].split(";")[0].strip() or None
    if not p.job_id:
        return
    show = runner(["scontrol", "show", "job", "-o", p.job_id])
    if show.rc != 0:
        return
    f = _scontrol_fields(show.stdout)
    p.admin_comment = f.get("AdminComment") or ""
    m = HOLD.search(p.admin_comment)
    p.token = m.group(1) if m else None
    p.slurm_now = {k: f.get(k) for k in ("TimeLimit", "NumNodes", "NumTasks", "TresPerNode", "TresPerJob",
                                         "TresPerTask", "ArrayTaskId")
                   if f.get(k) not in (None, "(null)")}


def _read_journal(rep: Report, offset: int, sleep, clock) -> None:
    """Attach each probe's ``probe`` line (by job name) and ``admit`` line (by token)."""
    deadline = clock() + JOURNAL_WAIT_S
    while True:
        lines = journal_lines(rep.hook_conf.journal_path, offset)
        probes = {ln[2]: ln for ln in lines if ln[0] == "probe" and len(ln) >= 4}
        admits = {ln[3]: ln for ln in lines if ln[0] == "admit" and len(ln) >= 10}
        missing = False
        for p in rep.probes:
            if p.job_name in probes:
                ln = probes[p.job_name]
                fields = parse_probe_fields(ln[3])
                p.handed = {k: v for k, v in fields.items() if k not in HOOK_RESULT_FIELDS}
                p.hook_price = {k: fields[k] for k in HOOK_RESULT_FIELDS[:-1] if k in fields}
                p.pinned = fields.get("pinned")
            elif p.gpu:
                missing = True
            if p.token and p.token in admits:
                p.admit = _admit_dict(admits[p.token])
            elif p.token:
                missing = True
        if not missing or clock() >= deadline:
            return
        sleep(0.2)


def _admit_dict(ln: list[str]) -> dict:
    def num(s):
        try:
            return float(s)
        except ValueError:
            return None
    cost = num(ln[6])
    return {"serial": ln[2], "token": ln[3], "account": ln[4], "user_id": ln[5], "weighted_gpu_s": cost,
            "gpu_h": None if cost is None else fmt_gpuh(cost), "gpus": ln[7], "minutes": ln[8],
            "gpu_type": None if ln[9] in ("", "-") else ln[9],
            "tasks": ln[10] if len(ln) > 10 else None}  # array tasks: admit lines of 11 fields on


def cancel_probes(probes: list[Probe], runner: Runner, sleep, clock, wait_s: float = CANCEL_WAIT_S) -> list[str]:
    """scancel every probe (found by id, and by name for any whose id sbatch never told us), then
    watch the queue, bounded, until they are gone; returns what is still there."""
    ids = [p.job_id for p in probes if p.job_id]
    names = ",".join(p.job_name for p in probes)
    deadline = clock() + wait_s
    try:  # runs in a `finally`: an error here must not hide the one that brought us here
        if ids:
            runner(["scancel", *ids])
        while True:
            r = runner(["squeue", "-h", "-o", "%A", "-n", names])
            if r.rc != 0:
                return [f"(squeue failed: {r.stderr.strip() or r.rc}; look for jobs named {PROBE_PREFIX}-*)"]
            left = sorted(set(r.stdout.split()))
            if not left or clock() >= deadline:
                return left
            runner(["scancel", *left])
            sleep(0.2)
    except SlurmgovError as exc:
        return [f"({exc}; look for jobs named {PROBE_PREFIX}-*)"]


def _judge(p: Probe) -> None:
    price = p.admit
    if not p.gpu:
        if not p.submitted:
            p.outcome, p.problem = "refused", f"form #{p.form} (CPU only) was refused: {p.refusal}"
        elif p.token or price or (p.hook_price or {}).get("price"):
            p.outcome = "touched"
            what = (f"set AdminComment {p.admin_comment!r}" if p.token else
                    f"priced it ({(p.hook_price or {}).get('price')} GPU-s)")
            p.problem = f"form #{p.form} (CPU only): the hook {what}; it must leave CPU-only jobs alone"
        else:
            p.outcome, p.ok = "untouched", True
        return
    if p.submitted:
        if not p.token and not price:
            p.outcome, p.hook_inactive = "admitted, not journaled", True
            p.problem = f"form #{p.form} ({p.request}): Slurm admitted it (job {p.job_id}) but the hook journaled nothing"
        elif p.token and not price:
            p.outcome = "admitted, no admit line"
            p.problem = (f"form #{p.form} ({p.request}): the job holds token {p.token} but the journal "
                         f"has no admit line for it")
        elif p.handed is None:
            p.outcome = "admitted, no probe line"
            p.problem = (f"form #{p.form} ({p.request}): admitted and journaled, but no probe line "
                         "(job_submit.lua in the hook dir predates `hooks check`?)")
        else:
            p.outcome, p.ok = "admitted", True
        return
    if not p.refusal or "slurmgov:" not in p.refusal:
        p.outcome = "refused by Slurm"
        p.problem = f"form #{p.form} ({p.request}): refused without a slurmgov line: {p.refusal}"
    elif p.handed is None:
        p.outcome = "refused, no probe line"
        p.problem = (f"form #{p.form} ({p.request}): refused by the hook but no probe line "
                     "(job_submit.lua in the hook dir predates `hooks check`?)")
    elif BUDGET_REFUSAL.search(p.refusal):
        p.outcome, p.ok = "refused (budget)", True
    else:
        p.outcome = "refused (not budget)"
        p.problem = f"form #{p.form} ({p.request}): {p.refusal.split('slurmgov:', 1)[1].strip()}"


def _summarise(rep: Report) -> None:
    s = rep.snapshot
    if not rep.slurm_conf.submit_lua:
        rep.warnings.append(f"{rep.slurm_conf.path}: JobSubmitPlugins={rep.slurm_conf.job_submit_plugins or '(unset)'}"
                            " does not load lua: the submit hook is off")
    if not rep.slurm_conf.jobcomp_lua:
        rep.warnings.append(f"{rep.slurm_conf.path}: JobCompType={rep.slurm_conf.job_comp_type or '(unset)'} is not "
                            "jobcomp/lua: no settle lines, holds close only by reconciliation with sacct")
    if not s.readable:
        jobs = "GPU and CPU jobs are" if rep.hook_conf.cpu_budgets else "GPU jobs are"
        rep.warnings.append(f"snapshot {s.path} unreadable ({s.error}): {jobs} "
                            f"{'admitted unchecked' if rep.fail_policy == 'open' else 'refused'} "
                            f"(fail_policy {rep.fail_policy}, from {HOOK_CONF})")
    elif s.cpu_accounts and not rep.hook_conf.cpu_budgets:
        rep.warnings.append(f"snapshot {s.path} gives {s.cpu_accounts} account(s) a CPU budget but {HOOK_CONF} does not "
                            "say `cpu_budgets yes`: while the snapshot is unreadable, CPU jobs pass unchecked")
    elif s.stale:
        rep.warnings.append(f"snapshot {s.path} is stale ({s.age_s} s old, max {s.max_age_s:g} s): GPU jobs are "
                            f"{'admitted unchecked' if s.fail_policy == 'open' else 'refused'} (fail_policy "
                            f"{s.fail_policy}); is the governor running?")
    rep.warnings.extend(rep.hook_conf.ignored)
    if rep.hook_same_as_shipped is False:
        rep.warnings.append(f"{rep.conf_dir}/job_submit.lua differs from slurmgov's plugins/job_submit.lua "
                            "(`slurmgov hooks install` copies it)")
    rep.problems = [p.problem for p in rep.probes if p.problem]
    if rep.left_in_queue:
        rep.problems.append(f"probe jobs still in the queue after {CANCEL_WAIT_S:g} s: "
                            f"{', '.join(rep.left_in_queue)} (scancel them)")
