"""slurmgov as a Debian site installs it: the .deb that packaging/build_deb.py builds (dh-virtualenv),
installed with apt into a clean Debian bookworm chroot (debootstrap --variant=minbase), where
`slurmgov --version`, `man slurmgov` and `slurmgov hooks install` work, the service files are in
place, and a ledger an older slurmgov wrote (schema version 4) is migrated in place.

Root on Debian only (debootstrap, chroot, mount); under CI=true it must run. What is slow to make
is kept under $SLURMGOV_TEST_CACHE (default /var/cache/slurmgov-test) and reused: the minbase
chroot (with man-db; each test session installs into a fresh overlay of it, never into it), the
downloaded .debs, and the wheels of slurmgov's dependencies."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packaging"))
import build_deb  # noqa: E402
import host_apt  # noqa: E402
from slurm_release import DEVICES, cache_lock  # noqa: E402  (the same cache, lock and devices)

CACHE = Path(os.environ.get("SLURMGOV_TEST_CACHE", "/var/cache/slurmgov-test"))
MIRROR = os.environ.get("SLURMGOV_TEST_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
BASE = CACHE / f"{SUITE}-minbase"  # debootstrap'd, apt lists fetched, man-db installed
ARCHIVES = CACHE / "apt-archives"  # the chroot's /var/cache/apt/archives: each .deb downloaded once
BUILD_TOOLS = ("debootstrap", "dpkg-dev", "debhelper", "dh-virtualenv", "python3-venv")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.slow


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _skip(why: str):
    (pytest.fail if _ci() else pytest.skip)(why)


def _run(cmd: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    assert p.returncode == 0, f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@contextlib.contextmanager
def _mounted(root: Path):
    """/proc, a /dev of its own (a tmpfs with the few devices apt and dpkg use: never the host's
    /dev, which a stray rm -r could reach) and the shared apt archive inside ``root``; unmounted on
    the way out, whatever happened (lazily if a process still holds one)."""
    done: list[Path] = []
    try:
        for args, where in ((["-t", "proc", "proc"], root / "proc"), (["-t", "tmpfs", "-o", "mode=0755", "dev"], root / "dev"),
                            (["--bind", str(ARCHIVES)], root / "var/cache/apt/archives")):
            where.mkdir(parents=True, exist_ok=True)
            _run(["mount", *args, str(where)])
            done.append(where)
            if where.name == "dev":
                for name, (major, minor) in DEVICES.items():
                    os.mknod(where / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
                    os.chmod(where / name, 0o666)
                for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
                    os.symlink(target, where / name)
        yield root
    finally:
        for where in reversed(done):
            if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def in_chroot(root: Path, *cmd: str, env: dict[str, str] | None = None, timeout: float = 900,
              check: bool = True) -> subprocess.CompletedProcess:
    base = {"PATH": PATH, "HOME": "/root", "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["chroot", str(root), "env", "-i", *(f"{k}={v}" for k, v in {**base, **(env or {})}.items()), *cmd]
    if check:
        return _run(argv, timeout=timeout)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


APT = ("apt-get", "-y", "-q", "-o", "APT::Sandbox::User=root", "-o", "Dpkg::Use-Pty=0")


def _base_chroot() -> Path:
    """The cached minbase chroot, made once: debootstrap, apt lists, man-db."""
    with cache_lock("base"):
        if (BASE / "usr/bin/man").exists():
            return BASE
        ARCHIVES.mkdir(parents=True, exist_ok=True)
        tmp = CACHE / f"{BASE.name}.tmp"
        if tmp.exists():  # a session killed while making it: its mounts first, then the rest
            for where in ("var/cache/apt/archives", "dev", "proc"):
                subprocess.run(["umount", "-l", str(tmp / where)], capture_output=True, check=False)
            shutil.rmtree(tmp)
        _run(["debootstrap", "--variant=minbase", f"--cache-dir={ARCHIVES}", SUITE, str(tmp), MIRROR], timeout=1200)
        shutil.copy2("/etc/resolv.conf", tmp / "etc/resolv.conf")
        with _mounted(tmp):
            in_chroot(tmp, *APT, "update")
            in_chroot(tmp, *APT, "install", "--no-install-recommends", "man-db")
        os.replace(tmp, BASE)
        return BASE


def _wheelhouse() -> Path:
    """The wheels of slurmgov's dependencies, downloaded once per set of requirements."""
    key = hashlib.sha256("\n".join(build_deb.requirements()).encode()).hexdigest()[:12]
    dest = CACHE / f"wheelhouse-{key}"
    with cache_lock("wheelhouse"):
        if not (dest / ".complete").exists():
            shutil.rmtree(dest, ignore_errors=True)
            build_deb.fill_wheelhouse(dest)
            (dest / ".complete").touch()
    return dest


@pytest.fixture(scope="module")
def timings() -> dict[str, float]:
    return {}


@pytest.fixture(scope="module")
def deb(tmp_path_factory, timings) -> Path:
    if os.geteuid() != 0 or not Path("/etc/debian_version").exists():
        _skip("needs root on Debian (debootstrap, chroot, mount)")
    missing = [t for t in BUILD_TOOLS if subprocess.run(["dpkg", "-s", t], capture_output=True).returncode != 0]
    if missing:
        p = host_apt.install(*missing)
        if p.returncode != 0:
            _skip(f"apt-get install {' '.join(missing)} failed: {p.stderr.strip()[-300:]}")
    t = time.monotonic()
    wheels = _wheelhouse()
    timings["wheelhouse"] = time.monotonic() - t
    t = time.monotonic()
    try:
        built = build_deb.build(tmp_path_factory.mktemp("deb"), wheels)
    except build_deb.BuildError as e:
        pytest.fail(str(e))
    timings["build"] = time.monotonic() - t
    return built


def _old_ledger(path: Path) -> None:
    """A ledger as slurmgov wrote it at schema version 4 (before accounts.held_ms): two budgets
    and an open hold, made by today's code and taken back as tests/test_ledger.py does."""
    from slurmgov.ledger.store import Ledger

    led = Ledger.open(f"sqlite:///{path}")
    led.set_budget("chem", 10.0, "none", actor="t")
    led.set_budget("bio", 5.0, "none", actor="t")
    led.admit("old-run", "chem", "wf", {"s": 2.0, "t": 1.5})
    led.disconnect()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX holds_lease")
    conn.execute("ALTER TABLE accounts DROP COLUMN held_ms")
    conn.execute("UPDATE schema_version SET version = 4")
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def chroot(deb, tmp_path_factory, timings):
    """A fresh overlay of the cached minbase chroot, holding a version-4 ledger where the package's
    services keep theirs, and the .deb installed into it by apt (its dependencies resolved)."""
    t = time.monotonic()
    base = _base_chroot()
    timings["base chroot"] = time.monotonic() - t
    t = time.monotonic()
    tmp = tmp_path_factory.mktemp("chroot")
    root = tmp / "root"
    for d in ("upper", "work", "root"):
        (tmp / d).mkdir()
    overlay = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                              f"lowerdir={base},upperdir={tmp / 'upper'},workdir={tmp / 'work'}", str(root)],
                             capture_output=True, check=False).returncode == 0
    if not overlay:  # no overlayfs here: a copy
        root.rmdir()
        _run(["cp", "-a", "--reflink=auto", str(base), str(root)])
    try:
        shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
        (root / "etc/slurmgov").mkdir(parents=True)
        shutil.copy2(ROOT / "site_configs" / "local.yaml", root / "etc/slurmgov/site.yaml")
        (root / "var/lib/slurmgov").mkdir(parents=True)
        _old_ledger(root / "var/lib/slurmgov/ledger.sqlite")
        shutil.copy2(deb, root / "tmp" / deb.name)
        (root / "tmp" / "slurmgov.deb").symlink_to(deb.name)
        with _mounted(root):
            install = (*APT, "install", "--no-install-recommends", f"/tmp/{deb.name}")
            if in_chroot(root, *install, check=False).returncode != 0:  # the cached lists went stale
                in_chroot(root, *APT, "update")
                in_chroot(root, *install)
            timings["install"] = time.monotonic() - t
            yield root
    finally:
        if overlay:
            subprocess.run(["umount", str(root)], capture_output=True, check=False)
        print("\ntimings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), file=sys.stderr)


def test_slurmgov_version_and_its_venv(chroot):
    p = in_chroot(chroot, "slurmgov", "--version")
    assert p.stdout.strip() == f"slurmgov, version {build_deb.version()}"
    site = Path(in_chroot(chroot, "/opt/venvs/slurmgov/bin/python", "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    names = os.listdir(chroot / site.relative_to("/"))
    assert "slurmgov_kernels" in names and "triton_kernels" not in names
    p = in_chroot(chroot, "gsbatch", "--gsbatch-preview", "--gres=gpu:1", "/bin/true", check=False)
    assert "Traceback" not in p.stderr, p.stderr


def test_man_slurmgov(chroot):
    text = in_chroot(chroot, "man", "slurmgov", env={"MANWIDTH": "100", "MANPAGER": "cat"}).stdout
    assert "Govern what agent workflows cost on Slurm GPU clusters" in text and "slurmgov-governor(1)" in text
    text = in_chroot(chroot, "man", "slurmgov-hooks-install", env={"MANWIDTH": "100", "MANPAGER": "cat"}).stdout
    assert "JobSubmitPlugins=lua" in text


def test_hooks_install_from_the_package(chroot):
    conf = chroot / "etc/slurm-test"
    conf.mkdir()
    (conf / "slurm.conf").write_text("ClusterName=test\nSlurmUser=nobody\n")
    p = in_chroot(chroot, "slurmgov", "hooks", "install", "--slurm-conf-dir", "/etc/slurm-test",
                  env={"SLURMGOV_HOME": "/root/sg"})
    assert "installed job_submit.lua, jobcomp.lua in /etc/slurm-test" in p.stdout
    for name in ("job_submit.lua", "jobcomp.lua"):
        assert (conf / name).read_bytes() == (ROOT / "plugins" / name).read_bytes()
    nobody = in_chroot(chroot, "id", "-u", "nobody").stdout.strip()
    for name in ("slurmgov_journal.log", "slurmgov_settle.log", "slurmgov_refusals.log"):
        st = (conf / name).stat()
        assert (oct(st.st_mode & 0o777), str(st.st_uid)) == ("0o640", nobody)
    (conf / "slurm.conf").write_text("SlurmUser=no-such-user\n")  # bad input: one line
    p = in_chroot(chroot, "slurmgov", "hooks", "install", "--slurm-conf-dir", "/etc/slurm-test",
                  env={"SLURMGOV_HOME": "/root/sg"}, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and "no-such-user is not a user" in lines[0], p.stderr


def test_the_service_files_are_installed(chroot):
    for path in ("lib/systemd/system/slurmgov-governor.service", "lib/systemd/system/slurmgov-sync.service",
                 "lib/systemd/system/slurmgov-sync.timer", "etc/logrotate.d/slurmgov", "etc/default/slurmgov"):
        assert (chroot / path).read_text() == (ROOT / "packaging" / _source_of(path)).read_text(), path
    conffiles = in_chroot(chroot, "dpkg-query", "-W", "-f=${Conffiles}", "slurmgov").stdout
    assert "/etc/default/slurmgov" in conffiles and "/etc/logrotate.d/slurmgov" in conffiles


def _source_of(path: str) -> str:
    name = path.rsplit("/", 1)[1]
    return {"slurmgov": "logrotate/slurmgov" if "logrotate" in path else "default"}.get(name, f"systemd/{name}")


def test_an_older_ledger_is_migrated_in_place(chroot):
    """The ledger an older slurmgov left where the services keep it (/var/lib/slurmgov), opened by
    the packaged slurmgov with the services' settings: migrated to today's schema, nothing lost."""
    ledger = chroot / "var/lib/slurmgov/ledger.sqlite"
    inode = ledger.stat().st_ino
    env = {"SLURMGOV_HOME": "/var/lib/slurmgov", "SLURMGOV_SITE": "/etc/slurmgov/site.yaml"}
    rows = {r["account"]: r for r in json.loads(in_chroot(chroot, "slurmgov", "budget", "show", "--json", env=env).stdout)}
    assert (rows["chem"]["budget_h"], rows["chem"]["held_h"], rows["chem"]["available_h"]) == (10.0, 3.5, 6.5)
    assert (rows["bio"]["budget_h"], rows["bio"]["held_h"]) == (5.0, 0.0)
    from slurmgov.ledger import schema

    conn = sqlite3.connect(ledger)
    try:
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert conn.execute("SELECT held_ms FROM accounts WHERE account = 'chem'").fetchone()[0] == 3.5 * 3600 * 1000
    finally:
        conn.close()
    assert ledger.stat().st_ino == inode  # in place


def test_an_upgrade_keeps_the_sites_settings_and_its_ledger(chroot):
    """Installing the package over itself runs its upgrade scripts: a changed /etc/default/slurmgov
    (a conffile) is kept, the ledger is left as it was."""
    settings = chroot / "etc/default/slurmgov"
    settings.write_text(settings.read_text() + "SLURMGOV_GOVERNOR_ARGS=--interval 5\n")
    ledger = chroot / "var/lib/slurmgov/ledger.sqlite"
    before = ledger.read_bytes()
    in_chroot(chroot, "dpkg", "-i", "/tmp/slurmgov.deb")
    assert settings.read_text().endswith("SLURMGOV_GOVERNOR_ARGS=--interval 5\n")
    assert ledger.read_bytes() == before
    assert in_chroot(chroot, "slurmgov", "--version").stdout.strip() == f"slurmgov, version {build_deb.version()}"
