"""packaging/: what a site installs to run slurmgov as a service. The systemd units' command lines
are commands slurmgov accepts; the logrotate file, run by the real logrotate, rotates the hooks'
journals without losing a line the governor had not read and keeps them 0640 and SlurmUser's;
the man pages generated from the CLI's help render without a warning."""

from __future__ import annotations

import configparser
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import click
import host_apt
import pytest
from test_governor import admit, append, env  # noqa: F401  (env: a fixture)

from slurmgov.interface.cli import cli
from slurmgov.slurm import governor, snapshot

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"


def ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_tool(name: str, package: str) -> str:
    """The path of ``name``; as root on Debian its package is installed when missing (as the Slurm
    harness does); otherwise skipped, and under CI=true a failure."""
    if shutil.which(name) is None and os.geteuid() == 0 and shutil.which("apt-get"):
        host_apt.install(package)
    found = shutil.which(name)
    if found is None:
        (pytest.fail if ci() else pytest.skip)(f"{name} is not installed (apt-get install {package})")
    return found


def unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    text = (PACKAGING / "systemd" / name).read_text()
    # repeated keys (Environment=, ExecStart=) are kept, one per line, as systemd reads them
    seen: dict[tuple[str, str], int] = {}
    lines, section = [], ""
    for ln in text.splitlines():
        if ln.startswith("["):
            section = ln
        elif "=" in ln and not ln.startswith("#"):
            key = ln.split("=", 1)[0]
            n = seen[(section, key)] = seen.get((section, key), 0) + 1
            ln = f"{key}#{n}={ln.split('=', 1)[1]}"
        lines.append(ln)
    cp.read_string("\n".join(lines))
    return cp


def values(cp: configparser.ConfigParser, section: str, key: str) -> list[str]:
    return [v for k, v in cp[section].items() if k.split("#")[0] == key]


def environment(cp: configparser.ConfigParser) -> dict[str, str]:
    return dict(kv.split("=", 1) for v in values(cp, "Service", "Environment") for kv in shlex.split(v))


def parses(command_line: str, settings: dict[str, str], conf_dir: Path) -> None:
    """``command_line`` as systemd would run it (${VAR} and $VAR from the unit's environment) is a
    slurmgov command whose options click accepts (a typo, a removed option: UsageError)."""
    settings = {**settings, "SLURMGOV_SLURM_CONF_DIR": str(conf_dir)}
    words = []
    for w in shlex.split(command_line):
        if w.startswith("${") and w.endswith("}"):
            words.append(settings[w[2:-1]])
        elif w.startswith("$"):
            words.extend(shlex.split(settings[w[1:]]))  # $VAR: split on spaces, empty gives nothing
        else:
            words.append(w)
    assert words[0] == "/usr/bin/slurmgov", words
    cmd, args, ctx = cli, words[1:], click.Context(cli, info_name="slurmgov")
    while isinstance(cmd, click.Group):  # the units give no group options: words are command names
        name, args = args[0], args[1:]
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"{command_line}: no command {name}"
        ctx, cmd = click.Context(sub, info_name=name, parent=ctx), sub
    cmd.make_context(ctx.info_name, list(args), parent=ctx.parent)  # UsageError on an option it lacks


def test_the_governor_runs_as_a_service_that_restarts_on_failure(tmp_path):
    u = unit("slurmgov-governor.service")
    assert values(u, "Service", "Type") == ["simple"]
    assert values(u, "Service", "Restart") == ["on-failure"]
    # exit 2 (bad site file) would fail again at once: no restart loop
    assert "2" in values(u, "Service", "RestartPreventExitStatus")[0].split()
    assert values(u, "Service", "KillSignal") == ["SIGTERM"]  # the governor's clean stop, exit 0
    assert values(u, "Install", "WantedBy") == ["multi-user.target"]
    settings = environment(u)
    assert settings["SLURMGOV_HOME"] == "/var/lib/slurmgov" and values(u, "Service", "StateDirectory") == ["slurmgov"]
    assert values(u, "Service", "EnvironmentFile") == ["-/etc/default/slurmgov"]
    (cmd,) = values(u, "Service", "ExecStart")
    assert " governor " in cmd
    parses(cmd, settings, tmp_path)
    parses(cmd, {**settings, "SLURMGOV_GOVERNOR_ARGS": "--interval 5 --metrics-port 9464"}, tmp_path)


def test_sync_and_limits_sync_run_from_a_timer(tmp_path):
    svc, timer = unit("slurmgov-sync.service"), unit("slurmgov-sync.timer")
    assert values(svc, "Service", "Type") == ["oneshot"]
    cmds = values(svc, "Service", "ExecStart")
    assert [shlex.split(c)[1:3] for c in cmds] == [["sync", "--slurm-conf-dir"], ["limits", "sync"]]
    for c in cmds:
        parses(c, environment(svc), tmp_path)
    assert values(timer, "Install", "WantedBy") == ["timers.target"]
    assert values(timer, "Timer", "OnUnitActiveSec") and values(timer, "Timer", "Persistent") == ["true"]
    assert not values(timer, "Timer", "Unit")  # the default: slurmgov-sync.service
    # the service reads the same settings as the governor
    assert environment(svc).items() >= {k: v for k, v in environment(unit("slurmgov-governor.service")).items()
                                         if k != "SLURMGOV_GOVERNOR_ARGS"}.items()


def test_systemd_reads_the_units_without_a_complaint(tmp_path):
    """systemd-analyze verify: no unknown key, bad value or missing unit (the units' command
    stands in for /usr/bin/slurmgov, which only the package installs)."""
    analyze = need_tool("systemd-analyze", "systemd")
    names = ["slurmgov-governor.service", "slurmgov-sync.service", "slurmgov-sync.timer"]
    for name in names:
        text = (PACKAGING / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/bin/slurmgov", "/bin/true"))
    p = subprocess.run([analyze, "verify", "--man=no", *(str(tmp_path / n) for n in names)], capture_output=True,
                       text=True, timeout=120, check=False)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    (tmp_path / names[0]).write_text((tmp_path / names[0]).read_text().replace("Restart=", "Restrt="))
    p = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / names[0])], capture_output=True, text=True,
                       timeout=120, check=False)
    assert "Unknown key 'Restrt'" in p.stderr  # what a typo looks like, so the check above means something


def test_build_deb_says_what_is_wrong_in_one_line(tmp_path):
    p = subprocess.run([sys.executable, str(PACKAGING / "build_deb.py"), str(tmp_path / "out"), "--wheelhouse",
                        str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=60, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("build_deb: "), p.stderr
    assert "nowhere: no such wheelhouse" in lines[0] or "not found: apt-get install" in lines[0]


def test_the_default_file_names_only_settings_the_units_read():
    names = {ln.lstrip("#").split("=", 1)[0] for ln in (PACKAGING / "default").read_text().splitlines()
             if "=" in ln and ln.lstrip("#")[:1].isupper()}
    known = set(environment(unit("slurmgov-governor.service"))) | set(environment(unit("slurmgov-sync.service")))
    assert names and names <= known, names - known


def _logrotate(tmp_path: Path, conf: Path) -> Path:
    """packaging/logrotate/slurmgov with the journals in ``conf`` instead of /etc/slurm."""
    text = (PACKAGING / "logrotate" / "slurmgov").read_text()
    assert text.count("/etc/slurm/") == 3
    cfg = tmp_path / "logrotate.conf"
    cfg.write_text(text.replace("/etc/slurm/", f"{conf}/"))
    cfg.chmod(0o644)
    return cfg


def test_logrotate_renames_the_journals_and_the_governor_loses_no_line(env, tmp_path):  # noqa: F811
    site, conf, state, ledger, sync = env
    logrotate = need_tool("logrotate", "logrotate")
    owner = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
    (conf / "slurm.conf").write_text(f"SlurmUser={owner.pw_name}\n")
    governor.install_hooks(conf)  # the journals: 0640, SlurmUser's
    conf.chmod(0o755)  # as /etc/slurm: logrotate refuses a directory others may write to
    append(conf / governor.ADMITS, admit("before"))
    assert sync().admitted == 1
    append(conf / governor.ADMITS, admit("unread"))  # written after the governor's last pass
    append(conf / governor.REFUSALS, "refuse\t1\tno budget\tphysics\talice\n")
    p = subprocess.run([logrotate, "-f", "-s", str(tmp_path / "logrotate.state"), str(_logrotate(tmp_path, conf))],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert "unread" in (conf / (governor.ADMITS + ".1")).read_text()  # renamed, not compressed yet
    for name in (governor.ADMITS, governor.REFUSALS):
        st = (conf / name).stat()
        assert st.st_size == 0 and (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, owner.pw_uid, owner.pw_gid)
    append(conf / governor.ADMITS, admit("after"))  # the hook's next line: into the new file
    rep = sync()
    assert rep.admitted == 2 and not rep.problems, rep
    assert ledger.balance("physics").held_h == pytest.approx(6.0)  # before, unread, after: 2 GPU-h each
    for token in ("before", "unread", "after"):
        assert ledger.hold(f"slurm:{token}").state == "open"
    snap = snapshot.read(conf / governor.SNAPSHOT)
    assert snap.journal_offset == (conf / governor.ADMITS).stat().st_size  # the new file's, for the hook
    assert sync().admitted == 0  # nothing twice
    append(conf / governor.ADMITS, admit("later"))
    assert sync().admitted == 1 and ledger.balance("physics").held_h == pytest.approx(8.0)


def test_man_pages_from_the_cli_help_render_without_warnings(tmp_path):
    man = need_tool("man", "man-db")
    p = subprocess.run([sys.executable, str(PACKAGING / "gen_man.py"), str(tmp_path)], capture_output=True,
                       text=True, timeout=120, check=False, env={**os.environ, "SOURCE_DATE_EPOCH": "1780000000"})
    assert p.returncode == 0, p.stderr
    pages = {f.name for f in tmp_path.glob("*.1")}
    assert {"slurmgov.1", "slurmgov-governor.1", "slurmgov-sync.1", "slurmgov-limits-sync.1",
            "slurmgov-hooks-install.1", "gsbatch.1"} <= pages
    for page in sorted(tmp_path.glob("*.1")):
        r = subprocess.run([man, "--warnings", "-l", str(page)], capture_output=True, text=True, timeout=60,
                           check=False, env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0"})
        assert r.returncode == 0 and not r.stderr.strip(), f"{page.name}: {r.stderr}"
    text = subprocess.run([man, "-l", str(tmp_path / "slurmgov-limits-sync.1")], capture_output=True, text=True,
                          check=True, env={**os.environ, "MANWIDTH": "200"}).stdout
    # the page says what --help says: its description, each option, its example
    assert "GrpTRESMins=gres/gpu=N" in text and "--dry-run" in text and "--wait SECONDS" in text
    assert "slurmgov limits sync --site /etc/slurmgov/site.yaml --dry-run" in text
    assert "2026-05-28" in text  # SOURCE_DATE_EPOCH: the same pages from the same source
