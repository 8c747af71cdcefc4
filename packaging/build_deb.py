"""Build slurmgov's Debian package (dh-virtualenv) from this source tree.

    python3 packaging/build_deb.py OUT_DIR [--wheelhouse DIR]    # writes OUT_DIR/slurmgov_<version>_amd64.deb
    python3 packaging/build_deb.py --fill-wheelhouse DIR          # download the wheels a build needs, once

The tracked files (git ls-files) are copied to a scratch directory with packaging/debian/ as its
debian/ and a debian/changelog for the version in slurmgov/__init__.py, then built with
``dpkg-buildpackage -b``. Needs root or fakeroot, debhelper, dh-virtualenv and python3-venv
(``apt-get install dh-virtualenv debhelper devscripts python3-venv``). With --wheelhouse the
Python dependencies come from that directory only (no index): an offline, repeatable build.
"""

from __future__ import annotations

import argparse
import configparser
import email.utils
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class BuildError(Exception):
    """One line saying what went wrong (the build's log is named in it)."""


def version() -> str:
    m = re.search(r'^__version__ = "([^"]+)"', (ROOT / "slurmgov" / "__init__.py").read_text(), re.M)
    if not m:
        raise BuildError(f"{ROOT / 'slurmgov' / '__init__.py'}: no __version__ = \"...\" line")
    return m.group(1)


def requirements() -> list[str]:
    """setup.cfg's install_requires, and what building the wheel needs (pyproject.toml)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    return reqs + ["setuptools>=68", "wheel"]


def _tracked(dest: Path) -> None:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # an unpacked release: everything but build debris
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not {".git", ".venv", "build", "dist", "__pycache__"} & set(p.parts)]
    for name in names:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def changelog(ver: str) -> str:
    when = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    return (f"slurmgov ({ver}) unstable; urgency=medium\n\n"
            f"  * slurmgov {ver}: see CHANGELOG.md (/usr/share/doc/slurmgov).\n\n"
            f" -- slurmgov maintainers <slurmgov@localhost>  {email.utils.formatdate(when, usegmt=True).replace('GMT', '+0000')}\n")


def build(out_dir: Path, wheelhouse: Path | None = None) -> Path:
    for tool in ("dpkg-buildpackage", "dh", "dh_virtualenv"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} not found: apt-get install dh-virtualenv debhelper devscripts python3-venv")
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise BuildError(f"{wheelhouse}: no such wheelhouse (fill it with --fill-wheelhouse)")
    ver = version()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slurmgov-deb-") as tmp:
        src = Path(tmp) / f"slurmgov-{ver}"
        _tracked(src)
        shutil.copytree(src / "packaging" / "debian", src / "debian")
        (src / "debian" / "changelog").write_text(changelog(ver))
        (src / "debian" / "rules").chmod(0o755)
        env = {**os.environ, "DEB_BUILD_OPTIONS": "nocheck", "DH_VERBOSE": os.environ.get("DH_VERBOSE", "0")}
        if wheelhouse is not None:
            env["SLURMGOV_WHEELHOUSE"] = str(wheelhouse.resolve())
        log = out_dir / "build.log"
        root = [] if os.geteuid() == 0 else ["-rfakeroot"]
        with open(log, "wb") as fh:
            p = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b", *root], cwd=src, env=env, stdout=fh,
                               stderr=subprocess.STDOUT, check=False)
        if p.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise BuildError(f"dpkg-buildpackage failed (exit {p.returncode}; see {log}): {tail[0]}")
        (deb,) = Path(tmp).glob(f"slurmgov_{ver}_*.deb")
        return Path(shutil.copy2(deb, out_dir / deb.name))


def fill_wheelhouse(dest: Path) -> None:
    """Download the wheels of slurmgov's dependencies for this machine's python3 into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slurmgov-wheelhouse-") as tmp:
        subprocess.run(["/usr/bin/python3", "-m", "venv", tmp], check=True)
        p = subprocess.run([f"{tmp}/bin/pip", "download", "-q", "-d", str(dest),
                            *requirements()], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise BuildError(f"pip download into {dest} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Build slurmgov's Debian package.")
    ap.add_argument("out_dir", nargs="?", type=Path)
    ap.add_argument("--wheelhouse", type=Path, help="install the Python dependencies from these wheels only")
    ap.add_argument("--fill-wheelhouse", type=Path, metavar="DIR", help="download the wheels a build needs")
    args = ap.parse_args(argv)
    try:
        if args.fill_wheelhouse:
            fill_wheelhouse(args.fill_wheelhouse)
            return 0
        if args.out_dir is None:
            ap.error("OUT_DIR is needed")
        print(build(args.out_dir, args.wheelhouse))
        return 0
    except BuildError as e:
        print(f"build_deb: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
