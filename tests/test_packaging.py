"""slurmgov installed as a site installs it: from a wheel built from this repository, into a
fresh virtualenv, not editable. Its `hooks install` must find the Lua hooks the wheel ships
(<prefix>/share/slurmgov/plugins), put them next to the real test cluster's slurm.conf, and
the cluster must then be governed by them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from helpers import write_snapshot

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("clean_hook_conf")]


def _source_copy(dest: Path) -> Path:
    """The repository's tracked files, copied: a build in place would leave build/ and egg-info."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with slurmgov's wheel (no editable finder); its dependencies come from the
    test environment's site-packages through a .pth line (nothing is downloaded)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    wheels = tmp / "dist"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(src)], capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (wheel,) = wheels.glob("slurmgov-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)  # ensurepip: offline
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    p = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


def test_the_wheel_ships_the_hooks_and_installs_them_into_a_real_cluster(installed, slurm_cluster, tmp_path):
    c = slurm_cluster
    env = {**c.env, "SLURMGOV_HOME": str(tmp_path / "home"), "PYTHONPATH": ""}
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import slurmgov; print(slurmgov.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.strip()
    assert where.startswith(str(installed)), where  # the wheel's copy, not this source tree
    for name in ("job_submit.lua", "jobcomp.lua"):
        shipped = installed / "share" / "slurmgov" / "plugins" / name
        assert shipped.read_bytes() == (ROOT / "plugins" / name).read_bytes()
    for name in ("job_submit.lua", "jobcomp.lua"):
        (c.conf_dir / name).unlink(missing_ok=True)
    p = subprocess.run([str(installed / "bin" / "slurmgov"), "hooks", "install", "--slurm-conf-dir", str(c.conf_dir)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert (c.conf_dir / "job_submit.lua").read_bytes() == (ROOT / "plugins" / "job_submit.lua").read_bytes()
    # governed: an account without budget is refused a GPU job, one with budget is admitted
    write_snapshot(c, {"physics": 0.0, "chem-ai": 3600.0 * 10})
    refused = c.sbatch(["-H", "-A", "physics", "--gres=gpu:h100:1", "-t", "10", "--wrap", "true"])
    assert refused.returncode != 0 and "slurmgov" in refused.stderr, refused.stderr
    admitted = c.sbatch(["-H", "-A", "chem-ai", "--gres=gpu:h100:1", "-t", "10", "--wrap", "true"])
    assert admitted.returncode == 0, admitted.stderr
    c.run("scancel", c.job_id(admitted))


def test_without_its_hooks_an_install_says_what_is_missing(installed, tmp_path):
    """A broken install (the shared plugins folder removed) fails with one line, not a traceback."""
    shared = installed / "share" / "slurmgov" / "plugins"
    keep = tmp_path / "keep"
    shutil.copytree(shared, keep)
    shutil.rmtree(shared)
    try:
        conf = tmp_path / "etc"
        conf.mkdir()
        (conf / "slurm.conf").write_text(f"SlurmUser={os.environ.get('USER', 'root')}\n")
        p = subprocess.run([str(installed / "bin" / "slurmgov"), "hooks", "install", "--slurm-conf-dir", str(conf)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
                           env={**os.environ, "SLURMGOV_HOME": str(tmp_path / "home"), "PYTHONPATH": ""})
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode != 0 and len(lines) == 1 and "job_submit.lua: missing" in lines[0], p.stderr
    finally:
        shutil.copytree(keep, shared)
