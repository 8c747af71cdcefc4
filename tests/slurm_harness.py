"""A throw-away Slurm cluster for tests: munge, MariaDB, slurmdbd, slurmctld, 4 slurmd.

The release is SLURMGOV_SLURM's (tests/slurm_release.py): 22.05 (default) from the host's
Debian packages, 24.11 or 26.05 from a cached debootstrap chroot that every daemon runs in,
with wrappers first on the cluster's PATH so clients are that release's own.

Everything (configs, state, spool, logs, database, fake GPU devices) lives under one
temporary directory.  Daemons run in the foreground (``-D``/``-F``) as children of the
test process, so their PIDs are exact and ``stop()`` can reap them.  Requires root on a
Debian-like system (apt-get); ``can_run()`` says why not otherwise.

munged runs privately on its own socket (``AuthInfo=socket=``), so concurrent test sessions
and any system munged never interfere; that socket and a world-readable copy of slurm.conf
live in a small ``/tmp/slurmgov-slurm-*`` dir (for ``runuser -u nobody`` commands).
Daemons also get SIGTERM if the test process dies without calling ``stop()``.

Nodes gpu01..gpu04 each carry ``Gres=gpu:h100:4`` backed by ``mknod c 195 N`` devices;
topology/tree puts gpu[01-02] under leaf1 and gpu[03-04] under leaf2.  The submit hook
``plugins/job_submit.lua`` and the completion hook ``plugins/jobcomp.lua`` are copied
into the conf dir, where Slurm looks for them (next to slurm.conf).

Slurm's JWT authentication (``AuthAltTypes=auth/jwt``) is on when its plugin is there (Debian's
slurm-wlm-jwt-plugin, installed with apt-get when missing): ``scontrol token username=U`` then
hands out real tokens signed with ``jwt_key`` (``cluster.jwt_key``, mode 0600, SlurmUser's). When
the plugin cannot be had the cluster starts without it (``cluster.jwt_key`` is None, ``jwt_why``
says why) and only the tests that need tokens skip.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import host_apt
import procs
import slurm_release

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGINS_DIR = REPO_ROOT / "plugins"

CLUSTER_NAME = "sgtest"
NODES = ("gpu01", "gpu02", "gpu03", "gpu04")
GPUS_PER_NODE = 4
GPU_TYPE = "h100"
# As site_configs/demo-cluster.yaml says (config_overrides lets slurmd claim more than it has).
CPUS_PER_NODE = 16
MEMORY_MB_PER_NODE = 65536
ACCOUNTS = ("chem-ai", "bio-ml", "physics")
DEFAULT_ACCOUNT = "chem-ai"
# root submits most test jobs; nobody is an unprivileged user (e.g. for job-modify checks).
USERS = ("root", "nobody")
# Slurm 26.05 maps the user "nobody" to no uid (scontrol show assoc_mgr: nobody(4294967294)) and
# refuses its jobs: there the unprivileged user is irc (uid 39 in Debian's base-passwd, host and chroot).
UNPRIVILEGED_USER = {"26.05": "irc"}
# A user Slurm associates with one account only (bio-ml): charging any other must be impossible.
LIMITED_USER, LIMITED_ACCOUNT = "daemon", "bio-ml"
PARTITION = "gpu"
PARTITION_DEFAULT_TIME_MIN = 30
PARTITION_MAX_TIME_MIN = 1440
# A second partition without DefaultTime or MaxTime (the hook's fallbacks apply there).
UNLIMITED_PARTITION = "nolimit"

APT_PACKAGES = (
    "slurmctld", "slurmd", "slurm-client", "munge",
    "slurmdbd", "mariadb-server-core", "mariadb-client-core",
)
REQUIRED_BINARIES = (
    "slurmctld", "slurmd", "slurmdbd", "sbatch", "scontrol", "sinfo", "sacctmgr",
    "munged", "munge", "unmunge", "mariadbd", "mariadb-install-db",
)
# Slurm's JWT authentication (auth/jwt, for `scontrol token`): optional, see _ensure_jwt_plugin.
JWT_PACKAGE = "slurm-wlm-jwt-plugin"
JWT_PLUGIN = "auth_jwt.so"
PLUGIN_DIR_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/slurm-wlm",
    "/usr/lib/aarch64-linux-gnu/slurm-wlm",
    "/usr/lib/slurm-wlm",
    "/usr/lib64/slurm",
)

# Sbin dirs are often missing from a test runner's PATH.
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)


class HarnessError(RuntimeError):
    """The cluster could not be brought up; the message says which step failed."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def _missing_binaries() -> list[str]:
    return [b for b in REQUIRED_BINARIES if _which(b) is None]


def _plugin_dir() -> Path | None:
    for d in PLUGIN_DIR_CANDIDATES:
        if (Path(d) / "job_submit_lua.so").exists():
            return Path(d)
    return None


def can_run() -> tuple[bool, str]:
    """(True, "") when a cluster can be started here, else (False, why not)."""
    if not os.path.isdir("/proc"):
        return False, "no /proc: Slurm test cluster needs Linux"
    missing = _missing_binaries()
    have_all = not missing and _plugin_dir() is not None
    if os.geteuid() != 0:
        return False, "Slurm test cluster needs root (daemons run as SlurmUser=root)"
    if not have_all and _which("apt-get") is None:
        return False, f"Slurm packages missing ({', '.join(missing) or 'plugins'}) and no apt-get to install them"
    return True, ""


def _ensure_packages(log: Path) -> None:
    """Install the Debian packages when any binary or plugin is missing."""
    if not _missing_binaries() and _plugin_dir() is not None:
        return
    env = {"PATH": _SEARCH_PATH}
    # Keep maintainer scripts from starting system-wide daemons we would not own.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        r = host_apt.install(*APT_PACKAGES, log=log, env=env)
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    if r.returncode != 0:
        raise HarnessError(f"apt-get install {' '.join(APT_PACKAGES)} failed (see {log})")
    missing = _missing_binaries()
    if missing or _plugin_dir() is None:
        raise HarnessError(f"after apt-get install still missing: {', '.join(missing) or 'slurm plugins'}")


def _ensure_jwt_plugin(log: Path) -> str:
    """"" when auth/jwt's plugin is there (installed with apt-get as root when missing), else why not."""
    plugin_dir = _plugin_dir()
    if plugin_dir is not None and (plugin_dir / JWT_PLUGIN).exists():
        return ""
    if os.geteuid() != 0 or _which("apt-get") is None:
        return f"{JWT_PLUGIN} is missing (apt-get install {JWT_PACKAGE}) and cannot be installed here"
    host_apt.install(JWT_PACKAGE, log=log, env={"PATH": _SEARCH_PATH})
    plugin_dir = _plugin_dir()
    if plugin_dir is None or not (plugin_dir / JWT_PLUGIN).exists():
        return f"apt-get install {JWT_PACKAGE} did not give {JWT_PLUGIN} (see {log})"
    return ""


def _python_dirs(bound: list[Path], base: bool = False) -> tuple[Path, ...]:
    """What jobs need to run this Python and slurmgov inside a release's chroot, as on a site's
    compute node: the repository and the venv (``base=False``), or the interpreter's own prefix
    (``base=True``, bound read-only). A system prefix (/usr...) is never bound over the chroot's own;
    jobs that run slurmgov then fail there (say a pyenv or a /opt Python is needed)."""
    system = {Path(p) for p in ("/", "/usr", "/usr/local", "/bin", "/lib", "/opt")}
    want = [Path(sys.base_prefix)] if base else [REPO_ROOT, Path(sys.prefix)]
    out: list[Path] = []
    for d in want:
        d = d.resolve()
        if d in system or any(d.is_relative_to(b) for b in [*bound, *out]):
            continue
        if not base and d.resolve() == Path(sys.base_prefix).resolve():
            continue
        out.append(d)
    return tuple(out)


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the test process dies without calling stop()."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _munge_works(env: dict, sock: Path) -> bool:
    try:
        enc = subprocess.run(["munge", "-n", "-S", str(sock)], capture_output=True, timeout=5, env=env)
        if enc.returncode != 0:
            return False
        dec = subprocess.run(["unmunge", "-S", str(sock)], input=enc.stdout, capture_output=True,
                             timeout=5, env=env)
        return dec.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class SlurmCluster:
    """One test cluster under ``root``; call ``start()`` then ``stop()``."""

    def __init__(self, root: str | os.PathLike, release: str | None = None, topology: str = "tree"):
        """``release``: SLURMGOV_SLURM's unless given; ``topology``: "tree" (leaf1, leaf2 under
        spine) or "block" (topology/block, 23.11 on: blocks nvl1 = gpu[01-02] and nvl2 =
        gpu[03-04], BlockSizes=2, as two 2-node NVLink domains)."""
        if topology not in ("tree", "block"):
            raise HarnessError(f"topology {topology!r}: tree or block")
        self.topology = topology
        self.root = Path(root).resolve()
        self.conf_dir = self.root / "etc"
        self.state_dir = self.root / "state"
        self.spool_dir = self.root / "spool"
        self.log_dir = self.root / "log"
        self.run_dir = self.root / "run"
        self.dev_dir = self.root / "dev"
        self.db_dir = self.root / "mysql"
        self.work_dir = self.root / "work"
        self.slurm_conf = self.conf_dir / "slurm.conf"
        self.snapshot_path = self.conf_dir / "slurmgov_snapshot.txt"
        self.journal_path = self.conf_dir / "slurmgov_journal.log"
        self.settle_path = self.conf_dir / "slurmgov_settle.log"
        self.hook_conf_path = self.conf_dir / "slurmgov_hook.conf"
        self.jwt_key: Path | None = None  # the HS256 key of auth/jwt, when it is on
        self.jwt_why = "not started"  # why auth/jwt is off ("" when on)
        self.cluster_name = CLUSTER_NAME
        self.nodes = NODES
        self.partition = PARTITION
        self.accounts = ACCOUNTS
        self.default_account = DEFAULT_ACCOUNT
        self.release = release or slurm_release.selected()
        if release is not None and release not in slurm_release.RELEASES:
            raise HarnessError(f"Slurm {release}: the harness knows {', '.join(slurm_release.RELEASES)}")
        if topology == "block" and self.release == "22.05":
            raise HarnessError("topology/block needs Slurm 23.11 or later, not 22.05")
        self.chroot: slurm_release.Chroot | None = None  # None: the host's Slurm (22.05)
        # How Slurm spells a GRES in TresPerNode & co.: "gres:gpu:1" in 22.05, "gres/gpu:1" from 23.11.
        self.gres = "gres:" if self.release == "22.05" else "gres/"
        self.user = UNPRIVILEGED_USER.get(self.release, "nobody")  # the tests' unprivileged submitter
        self.uid = pwd.getpwnam(self.user).pw_uid
        self.users = ("root", self.user)
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self.started: list[tuple[int, int | None]] = []  # (PID, start ticks); kept after stop() for checks
        self._logs: list = []
        self.bringup_s: float | None = None  # daemons up to 4 idle nodes, package install excluded
        self.install_s: float | None = None
        self.chroot_build_s: float | None = None  # seconds spent making the release's chroot, None if cached
        # World-readable dir outside the tmp dir (which may sit under a root-only directory):
        # the private munge socket and a copy of slurm.conf for unprivileged users.
        self.public_dir: Path | None = None
        self.munge_socket: Path | None = None
        self.env = dict(os.environ)
        self.env.update(PATH=_SEARCH_PATH, SLURM_CONF=str(self.slurm_conf))
        # A caller's SLURM_* settings (account, partition...) must not leak into tests.
        for k in list(self.env):
            if k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")) and k != "SLURM_CONF":
                del self.env[k]

    # ---------------------------------------------------------------- helpers
    def run(self, *cmd: str, check: bool = False, timeout: float = 30, input: str | None = None,
            **kw) -> subprocess.CompletedProcess:
        """Run a client command against this cluster (SLURM_CONF set); text output."""
        if len(cmd) == 1 and isinstance(cmd[0], (list, tuple)):
            cmd = tuple(cmd[0])
        r = subprocess.run(list(cmd), env=kw.pop("env", self.env), capture_output=True, text=True,
                           timeout=timeout, input=input, cwd=kw.pop("cwd", self.work_dir), **kw)
        if check and r.returncode != 0:
            raise HarnessError(f"{' '.join(cmd)} -> rc {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def sbatch(self, args: list[str] | tuple[str, ...] = (), script: str | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess:
        """Submit ``script`` (default: a trivial job) with ``--parsable``; stdout is the job id."""
        if script is None:
            script = "#!/bin/sh\necho \"$SLURMD_NODENAME ${CUDA_VISIBLE_DEVICES:-}\"\n"
        return self.run("sbatch", "--parsable", "-o", str(self.work_dir / "slurm-%j.out"),
                        *args, input=script, timeout=timeout)

    @staticmethod
    def job_id(cp: subprocess.CompletedProcess) -> str:
        """Job id from a successful ``sbatch --parsable`` (``id`` or ``id;cluster``)."""
        if cp.returncode != 0:
            raise HarnessError(f"sbatch failed rc={cp.returncode}: {cp.stderr.strip()}")
        return cp.stdout.strip().split(";")[0]

    def spelled(self, job_desc: dict) -> dict:
        """A job_desc as 22.05 hands it to the hook (tests/data/hook_prices.yaml), spelled as this
        release does: from 23.11 a GRES is ``gres/gpu:...`` and tres_per_task's count follows "="
        (``gres/gpu=1``, ``gres/gpu:h100=1``)."""
        if self.release == "22.05":
            return dict(job_desc)
        out = {}
        for k, v in job_desc.items():
            if k.startswith("tres_per_") and isinstance(v, str):
                items = [("gres/" + i[5:]) if i.startswith("gres:") else i for i in v.split(",")]
                if k == "tres_per_task":
                    items = [i[::-1].replace(":", "=", 1)[::-1] if i.count(":") >= 1 else i for i in items]
                v = ",".join(items)
            out[k] = v
        return out

    def unprivileged_env(self) -> dict:
        """Environment for commands run as another user (e.g. ``runuser -u nobody``).

        The tmp dir may sit under a root-only directory, so such users get a world-readable
        copy of slurm.conf elsewhere (removed by ``stop()``).
        """
        public = self.public_dir / "slurm.conf"
        if not public.exists():
            shutil.copyfile(self.slurm_conf, public)
            public.chmod(0o644)
        return dict(self.env, SLURM_CONF=str(public))

    def token(self, user: str, lifespan: int = 600) -> str:
        """A real Slurm JWT for ``user`` (``scontrol token``, asked as root); needs auth/jwt on."""
        if self.jwt_key is None:
            raise HarnessError(f"auth/jwt is off: {self.jwt_why}")
        r = self.run("scontrol", "token", f"username={user}", f"lifespan={lifespan}", check=True, timeout=15)
        for tok in r.stdout.split():
            if tok.startswith("SLURM_JWT="):
                return tok.split("=", 1)[1]
        raise HarnessError(f"scontrol token: no SLURM_JWT= in {r.stdout.strip()!r}")

    def job_state(self, jobid: str) -> str | None:
        r = self.run("scontrol", "show", "job", "-o", str(jobid), timeout=10)
        if r.returncode != 0:
            return None
        for tok in r.stdout.split():
            if tok.startswith("JobState="):
                return tok.split("=", 1)[1]
        return None

    def wait_job(self, jobid: str, states=("COMPLETED",), timeout: float = 30) -> str:
        """Poll until the job reaches one of ``states`` (or any terminal state); return it."""
        terminal = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
        want = set(states)
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.job_state(jobid)
            if state in want or state in terminal:
                return state
            time.sleep(0.1)
        raise HarnessError(f"job {jobid} still {state} after {timeout}s (wanted {sorted(want)})")

    def requeue(self, jobid: str, timeout: float = 30) -> float:
        """``scontrol requeue`` a batch job and wait until its run has wound down (PENDING again).
        Returns the wall-clock time the requeue had been answered by, for :meth:`start_requeued`."""
        self.run("scontrol", "requeue", str(jobid), check=True)
        answered = time.time()
        deadline = time.monotonic() + timeout
        while (state := self.job_state(jobid)) != "PENDING":
            if time.monotonic() > deadline:
                raise HarnessError(f"requeued job {jobid} still {state} after {timeout}s")
            time.sleep(0.1)
        return answered

    def start_requeued(self, jobid: str, requeued_at: float, timeout: float = 5) -> None:
        """Start a requeued job now instead of after Slurm's requeue delay (the credential lifetime,
        two minutes). slurmd refuses a launch credential stamped in the same whole second as the
        previous run's revocation (cred_revoked: ``ctime <= revoked``) and the job ends FAILED, so
        the clock must first have passed the second the requeue was answered in."""
        deadline = time.monotonic() + timeout
        while time.time() < int(requeued_at) + 1:
            if time.monotonic() > deadline:  # a clock stepped backwards: say so, do not hang
                raise HarnessError(f"the clock did not pass {int(requeued_at) + 1} within {timeout}s")
            time.sleep(0.05)
        self.run("scontrol", "update", f"jobid={jobid}", "StartTime=now", check=True)

    def job_story(self, jobid: str, lines: int = 40) -> str:
        """What Slurm says of a job, for a failed assertion: scontrol, sacct (every run), and the
        daemons' log lines that name it."""
        show = self.run("scontrol", "show", "job", "-o", str(jobid), timeout=10)
        acct = self.run("sacct", "-n", "-P", "-D", "-j", str(jobid),
                        "-o", "JobID,State,ExitCode,Start,End,NodeList,Reason", timeout=10)
        names = re.compile(rf"(JobId={jobid}\b|[Jj]ob {jobid}\b|\[{jobid}\.)")
        logged = [f"{log.name}: {ln}" for log in sorted(self.log_dir.glob("slurm*.log"))
                  for ln in log.read_text(errors="replace").splitlines() if names.search(ln)]
        return "\n".join([show.stdout.strip() or show.stderr.strip(), acct.stdout.strip(), *logged[-lines:]])

    def node_states(self) -> dict[str, str]:
        r = self.run("sinfo", "-h", "-N", "-o", "%N %T", timeout=10)
        out = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = parts[1]
        return out

    def cancel_all(self, timeout: float = 10) -> None:
        """Cancel every job of this cluster and wait (bounded) until the queue is empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.run("squeue", "-h", "-o", "%A", timeout=10)  # %A: one id per array task
            ids = r.stdout.split()
            if r.returncode == 0 and not ids:
                return
            if ids:
                self.run("scancel", *ids, timeout=10)
            time.sleep(0.1)

    # -------------------------------------------------------------- bring-up
    def start(self, timeout: float = 60) -> SlurmCluster:
        """Install packages if needed, then bring the daemons up within ``timeout`` seconds."""
        for d in (self.conf_dir, self.state_dir, self.spool_dir, self.log_dir, self.run_dir,
                  self.dev_dir, self.work_dir):
            d.mkdir(parents=True, exist_ok=True)
        t_install = time.monotonic()
        _ensure_packages(self.log_dir / "apt.log")  # on every release: MariaDB is the host's
        if slurm_release.RELEASES[self.release] is None:
            self.jwt_why = _ensure_jwt_plugin(self.log_dir / "apt.log")
        else:
            try:
                chroot_root, self.chroot_build_s = slurm_release.ensure_chroot(
                    self.release, self.log_dir / f"chroot-{self.release}.log")
            except slurm_release.ReleaseError as e:
                raise HarnessError(str(e)) from e
            self.chroot = slurm_release.Chroot(self.release, chroot_root)
            plugin_dir = self.chroot.plugin_dir()
            if plugin_dir is None:
                raise HarnessError(f"Slurm {self.release} chroot {chroot_root} has no job_submit_lua.so")
            self.jwt_why = "" if (plugin_dir / JWT_PLUGIN).exists() else f"{JWT_PLUGIN} missing in {plugin_dir}"
        self.install_s = time.monotonic() - t_install
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.public_dir = Path(tempfile.mkdtemp(prefix="slurmgov-slurm-"))
        self.public_dir.chmod(0o755)
        self.munge_socket = self.public_dir / "munge" / "munge.socket"
        try:
            if self.chroot is not None:
                # All of /tmp, not just our dirs: tests point the hooks at files in their own tmp_path.
                shared = [Path(tempfile.gettempdir()).resolve()]
                shared += [d for d in (self.root, self.public_dir) if not d.resolve().is_relative_to(shared[0])]
                self.chroot.mount(*shared, *_python_dirs(shared), read_only=_python_dirs(shared, base=True))
                self.chroot.write_wrappers(self.public_dir / "bin")
                self.env["PATH"] = f"{self.public_dir / 'bin'}{os.pathsep}{self.env['PATH']}"
            self._write_configs()
            self._start_munge(deadline)
            self._start_mariadb(deadline)
            self._start_slurmdbd(deadline)
            self._setup_accounts()
            self._start_slurmctld(deadline)
            self._start_slurmds(deadline)
        except BaseException:
            self.stop()
            raise
        self.bringup_s = time.monotonic() - t0
        return self

    def _bin(self, name: str) -> list[str]:
        """argv that runs daemon or tool ``name`` of this cluster's release (inside its chroot)."""
        if self.chroot is None:
            return [_which(name) or name]
        inner = self.chroot.which(name)
        if inner is None:
            raise HarnessError(f"Slurm {self.release} chroot {self.chroot.root} has no {name}")
        return self.chroot.argv(inner, cwd=self.root)

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.stdout", "ab")
        self._logs.append(log)
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=env or self.env, cwd=self.root, start_new_session=True,
                             preexec_fn=_die_with_parent)
        self._procs.append((name, p))
        self.started.append((p.pid, procs.start_ticks(p.pid)))  # not reaped yet: its /proc entry is there
        return p

    def _wait(self, what: str, ok, deadline: float, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
        while time.monotonic() < deadline:
            if ok():
                return
            if proc is not None and proc.poll() is not None:
                raise HarnessError(f"{what}: process exited rc={proc.returncode}{self._tail(log)}")
            time.sleep(0.05)
        raise HarnessError(f"{what}: not ready before deadline{self._tail(log)}")

    @staticmethod
    def _tail(log: Path | None, n: int = 15) -> str:
        if log is None or not log.exists():
            return ""
        lines = log.read_text(errors="replace").splitlines()[-n:]
        return "\n  " + "\n  ".join(lines)

    def _write_configs(self) -> None:
        plugin_dir = self.chroot.plugin_dir() if self.chroot else _plugin_dir()
        (self.ctld_port, self.dbd_port, self.db_port, *self.node_ports) = _free_ports(3 + len(NODES))
        r = self.root
        node_lines, gres_lines = [], []
        jwt_lines = ""
        if not self.jwt_why:
            key = self.conf_dir / "jwt_hs256.key"
            key.unlink(missing_ok=True)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # slurmctld refuses a key others read
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(32).hex().encode())
            os.chown(key, 0, 0)  # SlurmUser's
            self.jwt_key = key
            jwt_lines = f"AuthAltTypes=auth/jwt\nAuthAltParameters=jwt_key={key}\n"
        for i, (node, port) in enumerate(zip(NODES, self.node_ports)):
            devdir = self.dev_dir / node
            devdir.mkdir(parents=True, exist_ok=True)
            for g in range(GPUS_PER_NODE):
                dev = devdir / f"nvidia{g}"
                if not dev.exists():
                    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(195, i * GPUS_PER_NODE + g))
            (self.spool_dir / node).mkdir(parents=True, exist_ok=True)
            node_lines.append(
                f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
                f"CPUs={CPUS_PER_NODE} Boards=1 SocketsPerBoard=2 CoresPerSocket={CPUS_PER_NODE // 2} ThreadsPerCore=1 "
                f"RealMemory={MEMORY_MB_PER_NODE} Gres=gpu:{GPU_TYPE}:{GPUS_PER_NODE} State=UNKNOWN")
            gres_lines.append(f"NodeName={node} Name=gpu Type={GPU_TYPE} File={devdir}/nvidia[0-{GPUS_PER_NODE - 1}]")
        slurm_conf = f"""\
# Generated by tests/slurm_harness.py; everything under {r}
ClusterName={CLUSTER_NAME}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
AccountingStoragePass={self.munge_socket}
CredType=cred/munge
{jwt_lines}PluginDir={plugin_dir}
StateSaveLocation={self.state_dir}
SlurmdSpoolDir={self.spool_dir}/%n
SlurmctldPidFile={self.run_dir}/slurmctld.pid
SlurmdPidFile={self.run_dir}/slurmd.%n.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
TopologyPlugin=topology/{self.topology}
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.dbd_port}
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations,limits,safe
JobAcctGatherType=jobacct_gather/none
JobSubmitPlugins=lua
JobCompType=jobcomp/lua
PriorityType=priority/multifactor
PriorityDecayHalfLife=0
PriorityUsageResetPeriod=NONE
SchedulerType=sched/backfill
MinJobAge=300
MailProg=/bin/true
KillWait=2
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
{chr(10).join(node_lines)}
PartitionName={PARTITION} Nodes=gpu[01-04] Default=YES DefaultTime={PARTITION_DEFAULT_TIME_MIN} MaxTime={PARTITION_MAX_TIME_MIN} State=UP
PartitionName={UNLIMITED_PARTITION} Nodes=gpu[01-04] Default=NO State=UP
"""
        self.slurm_conf.write_text(slurm_conf)
        if self.chroot is not None:
            # 24.11+: slurmd dies with "cgroup filesystem not mounted" unless cgroups are off.
            (self.conf_dir / "cgroup.conf").write_text("CgroupPlugin=disabled\n")
        (self.conf_dir / "gres.conf").write_text("AutoDetect=off\n" + "\n".join(gres_lines) + "\n")
        (self.conf_dir / "topology.conf").write_text(
            "SwitchName=leaf1 Nodes=gpu[01-02]\n"
            "SwitchName=leaf2 Nodes=gpu[03-04]\n"
            "SwitchName=spine Switches=leaf[1-2]\n" if self.topology == "tree" else
            "BlockName=nvl1 Nodes=gpu[01-02]\n"
            "BlockName=nvl2 Nodes=gpu[03-04]\n"
            "BlockSizes=2\n")
        dbd = self.conf_dir / "slurmdbd.conf"
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.dbd_port}
SlurmUser=root
PidFile={self.run_dir}/slurmdbd.pid
LogFile={self.log_dir}/slurmdbd.log
DebugLevel=info
PluginDir={plugin_dir}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser=root
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)  # slurmdbd refuses a conf file others can read
        for name in ("job_submit.lua", "jobcomp.lua"):
            src = PLUGINS_DIR / name
            if not src.exists():
                raise HarnessError(f"missing {src}")
            shutil.copyfile(src, self.conf_dir / name)

    def _start_munge(self, deadline: float) -> None:
        # A private munged on its own socket: clusters of concurrent test sessions (and any
        # system munged) never share, so stopping one cannot break another.
        sock_dir = self.munge_socket.parent
        sock_dir.mkdir(parents=True, exist_ok=True)
        sock_dir.chmod(0o755)  # munged refuses a socket dir others can write
        key = self.root / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        log = self.log_dir / "munged.stdout"
        p = self._spawn("munged", [*self._bin("munged"), "-F", "--force", f"--key-file={key}",
                                   f"--socket={self.munge_socket}",
                                   f"--pid-file={self.run_dir}/munged.pid",
                                   f"--seed-file={self.run_dir}/munged.seed",
                                   f"--log-file={self.log_dir}/munged.log"])
        self._wait("munged", lambda: _munge_works(self.env, self.munge_socket), deadline, p, log)

    def _start_mariadb(self, deadline: float) -> None:
        # The host's MariaDB on every release: 24.11's slurmdbd against trixie's MariaDB 11.8 dies in
        # _check_mysql_concat_is_sane (client error 5027); the database is not what a site's release changes.
        log = self.log_dir / "mariadb-install-db.log"
        # A temporary directory of its own: side by side (one session per release), bootstraps sharing
        # /tmp failed with "Could not remove temporary table: '/tmp/#sql-temptable-...'".
        tmp = self.run_dir / "mysql-tmp"
        tmp.mkdir(exist_ok=True)
        with open(log, "wb") as fh:
            r = subprocess.run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={self.db_dir}",
                                "--user=root", "--auth-root-authentication-method=normal",
                                "--skip-test-db", "--skip-name-resolve", f"--tmpdir={tmp}"],
                               stdout=fh, stderr=subprocess.STDOUT, env=self.env, timeout=120)
        if r.returncode != 0:
            raise HarnessError(f"mariadb-install-db failed{self._tail(log)}")
        log = self.log_dir / "mariadbd.log"
        # skip-grant-tables: no passwords or GRANTs needed for a private, loopback-only server.
        p = self._spawn("mariadbd", [
            _which("mariadbd"), "--no-defaults", f"--datadir={self.db_dir}", "--user=root",
            f"--socket={self.run_dir}/mysqld.sock", f"--port={self.db_port}", "--bind-address=127.0.0.1",
            f"--pid-file={self.run_dir}/mariadbd.pid", f"--log-error={log}", "--skip-grant-tables",
            "--skip-name-resolve", "--skip-log-bin", f"--tmpdir={tmp}", "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M", "--innodb-flush-log-at-trx-commit=0"])
        self._wait("mariadbd", lambda: _port_open(self.db_port), deadline, p, log)

    def _start_slurmdbd(self, deadline: float) -> None:
        log = self.log_dir / "slurmdbd.log"
        # slurmdbd has no -f: it reads slurmdbd.conf next to $SLURM_CONF.
        p = self._spawn("slurmdbd", [*self._bin("slurmdbd"), "-D"])
        self._wait("slurmdbd", lambda: _port_open(self.dbd_port), deadline, p, log)

    def _setup_accounts(self) -> None:
        c = CLUSTER_NAME
        self.run("sacctmgr", "-i", "add", "cluster", c, check=True)
        self.run("sacctmgr", "-i", "add", "account", ",".join(ACCOUNTS), f"cluster={c}", check=True)
        users = ",".join(self.users)
        self.run("sacctmgr", "-i", "add", "user", users, f"account={','.join(ACCOUNTS)}",
                 f"cluster={c}", check=True)
        self.run("sacctmgr", "-i", "modify", "user", "where", f"name={users}", "set",
                 f"defaultaccount={DEFAULT_ACCOUNT}", check=True)
        self.run("sacctmgr", "-i", "add", "user", LIMITED_USER, f"account={LIMITED_ACCOUNT}",
                 f"defaultaccount={LIMITED_ACCOUNT}", f"cluster={c}", check=True)

    def _start_slurmctld(self, deadline: float) -> None:
        log = self.log_dir / "slurmctld.log"
        p = self._spawn("slurmctld", [*self._bin("slurmctld"), "-D", "-f", str(self.slurm_conf)])
        self._wait("slurmctld", lambda: self.run("scontrol", "ping", timeout=10).stdout.count("UP") >= 1,
                   deadline, p, log)

    def _start_slurmds(self, deadline: float) -> None:
        procs = [self._spawn(f"slurmd.{n}", [*self._bin("slurmd"), "-D", "-N", n, "-f", str(self.slurm_conf)])
                 for n in NODES]

        def all_idle() -> bool:
            for (n, p) in zip(NODES, procs):
                if p.poll() is not None:
                    raise HarnessError(f"slurmd {n} exited rc={p.returncode}"
                                       f"{self._tail(self.log_dir / f'slurmd.{n}.log')}")
            st = self.node_states()
            return len(st) == len(NODES) and all(s == "idle" for s in st.values())

        self._wait("nodes idle", all_idle, deadline, None, self.log_dir / "slurmctld.log")

    # --------------------------------------------------------------- teardown
    def _stray_pids(self) -> list[int]:
        """slurmstepd and job processes (double-forked by slurmd) holding files under our root."""
        ours = {p.pid for _, p in self._procs}
        found = []
        roots = (str(self.root),) + ((str(self.chroot.inside(self.root)),) if self.chroot else ())
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid() or int(entry) in ours:
                continue
            pid = int(entry)
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if not comm.startswith("slurmstepd"):
                continue
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
                if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(roots) for fd in fds):
                    found.append(pid)
            except OSError:
                continue
        return found

    def stop(self, timeout: float = 15) -> None:
        """Cancel jobs, then TERM (later KILL) every daemon this object started, and reap them."""
        names = {n for n, _ in self._procs}
        if "slurmctld" in names and any(p.poll() is None for n, p in self._procs if n == "slurmctld"):
            try:
                self.cancel_all(timeout=5)
            except Exception:
                pass
        # Reverse start order: slurmd before slurmctld before slurmdbd before the database.
        for _name, p in reversed(self._procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + timeout
        for _name, p in reversed(self._procs):
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for pid in self._stray_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for fh in self._logs:
            fh.close()
        self._logs.clear()
        self._procs.clear()
        # The database files are ~100 MB and useless once the server is gone; logs stay.
        shutil.rmtree(self.db_dir, ignore_errors=True)
        if self.chroot is not None:
            self.chroot.unmount()  # daemons are gone: nothing holds the mounts now
        if self.public_dir is not None:
            shutil.rmtree(self.public_dir, ignore_errors=True)
            self.public_dir = None

    def running_pids(self) -> list[int]:
        """PIDs of daemons this object started that are still alive (zombies do not count).

        A PID alone does not say which process it is: after a restart's or a stop()'s reaping
        it may be reused, by a ``slurmgov`` command or another cluster's ``slurmstepd`` among
        others (stop 28's CI failed so). The start time taken at spawn decides.
        """
        return [pid for pid, ticks in self.started
                if procs.still_running(pid, ticks)]

    # ------------------------------------------------------ fault injection
    def stop_slurmctld(self, timeout: float = 15) -> None:
        """SIGTERM slurmctld and reap it: it saves its state and exits; jobs keep running under
        their slurmd.  ``start_slurmctld()`` brings it back with that state."""
        keep = []
        for name, p in self._procs:
            if name != "slurmctld":
                keep.append((name, p))
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        self._procs = keep

    def start_slurmctld(self, timeout: float = 30) -> None:
        """Start slurmctld again (it recovers jobs from StateSaveLocation) and wait, bounded by
        ``timeout``, until it answers and every node has registered again."""
        if any(n == "slurmctld" and p.poll() is None for n, p in self._procs):
            raise HarnessError("slurmctld is already running")
        deadline = time.monotonic() + timeout
        self._start_slurmctld(deadline)

        def nodes_back() -> bool:
            st = self.node_states()
            return len(st) == len(NODES) and all(
                s.rstrip("*~#%$@+-") in ("idle", "mixed", "allocated", "completing") and not s.endswith("*")
                for s in st.values())

        self._wait("nodes back after slurmctld restart", nodes_back, deadline, None,
                   self.log_dir / "slurmctld.log")

    def restart_slurmctld(self, down_s: float = 0, timeout: float = 30) -> None:
        """Stop slurmctld, leave it down ``down_s`` seconds, then start it again."""
        self.stop_slurmctld()
        time.sleep(down_s)
        self.start_slurmctld(timeout=timeout)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_cluster(tmpdir: str | os.PathLike, timeout: float = 60, release: str | None = None,
                  topology: str = "tree") -> SlurmCluster:
    """Start a cluster under ``tmpdir`` (of ``release``, default SLURMGOV_SLURM's; ``topology``
    tree or block); raise HarnessError (daemons stopped) on failure."""
    ok, why = can_run()
    if not ok:
        raise HarnessError(why)
    return SlurmCluster(tmpdir, release, topology).start(timeout=timeout)

