"""Which Slurm release the test cluster runs: SLURMGOV_SLURM=22.05 (default) | 24.11 | 26.05.

22.05 is the host's own Debian 12 packages (tests/slurm_harness.py as always). 24.11 (Debian
trixie) and 26.05 (Debian sid) run from a chroot made with debootstrap once, cached under
$SLURMGOV_TEST_CACHE (default /var/cache/slurmgov-test) and reused while it is there; making it
is locked so that concurrent test sessions build it once.  A ``Chroot`` then mounts /proc, a
small /dev of its own and the cluster's directories (at the same paths) inside it, runs every
daemon there, and writes wrapper scripts (``sbatch`` -> that release's own sbatch) for the
directory put first on the cluster's PATH, so the project's Python calls that release's
clients.  ``Chroot.unmount()`` undoes every mount, on stop and on a failed start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import host_apt

DEFAULT = "22.05"
# release -> Debian suite serving it (None: the host's packages).
RELEASES: dict[str, str | None] = {"22.05": None, "24.11": "trixie", "26.05": "sid"}
CACHE = Path(os.environ.get("SLURMGOV_TEST_CACHE", "/var/cache/slurmgov-test"))
MIRROR = os.environ.get("SLURMGOV_TEST_MIRROR", "http://deb.debian.org/debian")
# MariaDB is the host's (see SlurmCluster._start_mariadb): only Slurm and munge come from the suite.
# libexpat1 and libffi8: the libraries the tests' own Python (bound in, see Chroot.mount) loads that a
# minbase system lacks, for jobs that run slurmgov (the Slurm executor's steps).
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "libexpat1", "libffi8")
OPTIONAL_PACKAGES = ("slurm-wlm-jwt-plugin",)  # auth/jwt: the tests that need tokens skip without it
# Client commands the project and the tests call; each gets a wrapper that runs the chroot's.
CLIENTS = ("sbatch", "srun", "salloc", "scancel", "scontrol", "squeue", "sinfo", "sacct", "sacctmgr",
           "sreport", "sprio", "sshare", "sstat", "strigger", "sattach", "sdiag", "munge", "unmunge")
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
MARKER = ".slurmgov-complete"


class ReleaseError(RuntimeError):
    """A release that is not known, or a chroot that could not be made (which step, where to look)."""


def selected() -> str:
    """The release SLURMGOV_SLURM names (default 22.05); one line naming the supported ones if unknown."""
    want = os.environ.get("SLURMGOV_SLURM", "").strip() or DEFAULT
    if want not in RELEASES:
        raise ReleaseError(f"SLURMGOV_SLURM={want!r} is not a Slurm release the test harness knows; "
                           f"supported: {', '.join(RELEASES)}")
    return want


def chroot_dir(release: str) -> Path:
    return CACHE / f"slurm-{release}-{RELEASES[release]}"


@contextlib.contextmanager
def cache_lock(name: str):
    """One test session at a time fills the cache (the release chroots, and the .deb test's)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _step(release: str, what: str, cmd: list[str], log: Path, timeout: float = 1200, env: dict | None = None,
          ) -> None:
    with open(log, "ab") as fh:
        fh.write(f"\n### {what}: {' '.join(cmd)}\n".encode())
        fh.flush()
        try:
            r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, env=env)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ReleaseError(f"building the Slurm {release} chroot: step '{what}' failed: {e} (see {log})") from e
    if r.returncode != 0:
        raise ReleaseError(f"building the Slurm {release} chroot: step '{what}' failed with exit "
                           f"{r.returncode} (see {log})")


def _in_root(root: Path, *cmd: str) -> list[str]:
    env = {"PATH": CHROOT_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    return ["chroot", str(root), "env", "-i", *(f"{k}={v}" for k, v in env.items()), *cmd]


def _umount_all_under(root: Path) -> None:
    """Unmount whatever is mounted at or below ``root`` (deepest first; lazily if busy)."""
    prefix = str(root).rstrip("/") + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]
    for where in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        if subprocess.run(["umount", where], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", where], capture_output=True, check=False)


def _make_dev(where: Path) -> None:
    """A /dev of its own (tmpfs with the few devices daemons use): never the host's /dev."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "dev", str(where)], check=True, capture_output=True)
    for name, (major, minor) in DEVICES.items():
        os.mknod(where / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(where / name, 0o666)
    (where / "shm").mkdir(mode=0o1777)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, where / name)


def ensure_debootstrap(release: str, log: Path) -> None:
    """debootstrap, installed (root on Debian) where it is missing: a fresh Debian lacks it, as it
    lacks Slurm; else ReleaseError."""
    if shutil.which("debootstrap") is None and os.geteuid() == 0:
        log.parent.mkdir(parents=True, exist_ok=True)
        host_apt.install("debootstrap", log=log)
    if shutil.which("debootstrap") is None:
        raise ReleaseError(f"building the Slurm {release} chroot: step 'debootstrap' failed: debootstrap "
                           f"is not installed (apt-get install debootstrap; see {log})")


def ensure_chroot(release: str, log: Path) -> tuple[Path, float | None]:
    """The release's chroot, made when missing: (its path, seconds spent making it or None if cached).

    Steps: debootstrap, apt-get update, apt-get install.  A failed step raises ReleaseError
    naming it, with nothing left mounted and the half-made tree removed.
    """
    suite = RELEASES[release]
    if suite is None:
        raise ReleaseError(f"Slurm {release} runs from the host's packages, not a chroot")
    dest = chroot_dir(release)
    want = _marker_text(release)
    if _marker(dest) == want:
        return dest, None
    if _marker(dest) is not None:  # made with an older package list: add what is missing, in place
        with cache_lock(dest.name):
            if _marker(dest) != want:
                t0 = time.monotonic()
                # Only our own mounts: a running cluster of another session may have its own in there.
                done: list[Path] = []
                try:
                    _install(release, dest, log, done)
                finally:
                    for where in reversed(done):
                        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
                            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
                (dest / MARKER).write_text(want)
                return dest, time.monotonic() - t0
        return dest, None
    ensure_debootstrap(release, log)
    with cache_lock(dest.name):
        if _marker(dest) is not None:  # another session made it meanwhile
            return ensure_chroot(release, log)
        t0 = time.monotonic()
        tmp = CACHE / f"{dest.name}.tmp"
        _umount_all_under(tmp)  # a session killed while making it
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            _step(release, "debootstrap", ["debootstrap", "--variant=minbase", suite, str(tmp), MIRROR], log)
            _install(release, tmp, log, [])
        except BaseException:
            _umount_all_under(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _umount_all_under(tmp)
        (tmp / MARKER).write_text(want)
        os.replace(tmp, dest)
        return dest, time.monotonic() - t0


def _marker_text(release: str) -> str:
    return f"Slurm {release} from Debian {RELEASES[release]}: {' '.join(sorted(PACKAGES))}\n"


def _marker(root: Path) -> str | None:
    try:
        return (root / MARKER).read_text()
    except OSError:
        return None


def _install(release: str, root: Path, log: Path, mounted: list[Path]) -> None:
    """apt-get update and install PACKAGES (and what it can of OPTIONAL_PACKAGES) in ``root``,
    with /proc and a private /dev mounted meanwhile (added to ``mounted``: the caller unmounts them)."""
    shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
    # Daemons started by maintainer scripts would be no test's: refuse them.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True, capture_output=True)
    mounted.append(root / "proc")
    _make_dev(root / "dev")
    mounted.append(root / "dev")
    apt = ["apt-get", "-y", "-q", "-o", "APT::Sandbox::User=root", "-o", "Dpkg::Use-Pty=0",
           # sid's Release file on the mirror may be past its Valid-Until date.
           "-o", "Acquire::Check-Valid-Until=false"]
    _step(release, "apt-get update", _in_root(root, *apt, "update"), log)
    _step(release, "apt-get install", _in_root(root, *apt, "install", "--no-install-recommends", *PACKAGES), log)
    with contextlib.suppress(ReleaseError):
        _step(release, "apt-get install (optional)",
              _in_root(root, *apt, "install", "--no-install-recommends", *OPTIONAL_PACKAGES), log)
    _step(release, "apt-get clean", _in_root(root, "apt-get", "clean"), log)


class Chroot:
    """One cluster's use of a release's chroot: its mounts, its daemons' argv, its client wrappers."""

    def __init__(self, release: str, root: Path):
        self.release = release
        self.root = root
        self.mounted: list[Path] = []

    def inside(self, path: str | os.PathLike) -> Path:
        return self.root / str(path).lstrip("/")

    def plugin_dir(self) -> Path | None:
        """PluginDir as a path that means the same inside and outside (see ``mount``)."""
        for d in ("usr/lib/x86_64-linux-gnu/slurm-wlm", "usr/lib/aarch64-linux-gnu/slurm-wlm"):
            if (self.root / d / "job_submit_lua.so").exists():
                return self.root / d
        return None

    def mount(self, *dirs: Path, read_only: tuple[Path, ...] = ()) -> None:
        """/proc, a private /dev, /etc/hosts, and each of ``dirs`` (and ``read_only``) bound at its own
        path inside.

        The chroot's own path also resolves inside it (a link to /), so a path such as PluginDir
        names the same file for daemons inside and for clients run from outside as another user.
        """
        try:
            shutil.copy2("/etc/hosts", self.root / "etc/hosts")  # else getaddrinfo("localhost") fails
            self_link = self.inside(self.root)
            if not self_link.is_symlink():
                self_link.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    self_link.symlink_to("/")
            self._mount(["-t", "proc", "proc"], self.root / "proc")
            self._mount(None, self.root / "dev")
            for d in dirs:
                self._mount(["--bind", str(d)], self.inside(d))
            for d in read_only:
                self._mount(["--bind", str(d)], self.inside(d))
                self._mount(["-o", "remount,bind,ro"], self.inside(d), again=True)
        except BaseException:
            self.unmount()
            raise

    def _mount(self, args: list[str] | None, where: Path, again: bool = False) -> None:
        where.mkdir(parents=True, exist_ok=True)
        if args is None:
            _make_dev(where)
        else:
            r = subprocess.run(["mount", *args, str(where)], capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise ReleaseError(f"mount {' '.join(args)} {where}: {r.stderr.strip()}")
        if not again:
            self.mounted.append(where)

    def unmount(self) -> None:
        for where in reversed(self.mounted):
            if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
        self.mounted.clear()

    def argv(self, binary: str, *args: str, cwd: str | os.PathLike | None = None) -> list[str]:
        """Run ``binary`` (an absolute path inside the chroot) there, in ``cwd`` (default /)."""
        return ["chroot", str(self.root), "/bin/sh", "-c", 'cd "$0" && exec "$@"', str(cwd or "/"), binary, *args]

    def which(self, name: str) -> str | None:
        for d in ("usr/sbin", "usr/bin", "sbin", "bin"):
            if (self.root / d / name).exists():
                return f"/{d}/{name}"
        return None

    def write_wrappers(self, bin_dir: Path) -> None:
        """``bin_dir/sbatch`` etc.: root runs the chroot's command inside it (in the same working
        directory); another user (who may not chroot) runs the same binary with the chroot's own
        loader and libraries."""
        bin_dir.mkdir(parents=True, exist_ok=True)
        bin_dir.chmod(0o755)
        loader = next((p for p in ("lib64/ld-linux-x86-64.so.2", "lib/ld-linux-aarch64.so.1")
                       if (self.root / p).exists()), None)
        libs = ":".join(str(self.root / d) for d in (
            "usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu/slurm-wlm",
            "usr/lib/aarch64-linux-gnu", "lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu/slurm-wlm"))
        for name in CLIENTS:
            inner = self.which(name)
            if inner is None:
                continue
            other = (f'exec "{self.root / loader}" --library-path "{libs}" "{self.root}{inner}" "$@"'
                     if loader else f'echo "{name}: Slurm {self.release} runs as root only here" >&2; exit 1')
            script = (f"#!/bin/sh\n# Slurm {self.release}'s {name} (tests/slurm_release.py)\n"
                      f'if [ "$(id -u)" = 0 ]; then\n'
                      f'  exec chroot "{self.root}" /bin/sh -c \'cd "$0" 2>/dev/null || cd /; exec "$@"\' '
                      f'"$PWD" {inner} "$@"\nfi\n{other}\n')
            path = bin_dir / name
            path.write_text(script)
            path.chmod(0o755)
