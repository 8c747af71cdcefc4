"""slurmgov installed as a site installs it: from a wheel built from this repository, into a
fresh virtualenv, not editable. Its `hooks install` must find the Lua hooks the wheel ships
(<prefix>/share/slurmgov/plugins), put them next to the real test cluster's slurm.conf, and
the cluster must then be governed by them. Its kernels install as `slurmgov_kernels`, beside
whatever owns the import name `triton_kernels` (vLLM's triton-kernels)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from importlib.util import find_spec
from pathlib import Path

import pytest
from helpers import write_snapshot

ROOT = Path(__file__).resolve().parents[1]



def _source_copy(dest: Path) -> Path:
    """The repository's tracked files, copied: a build in place would leave build/ and egg-info."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _build_wheel(src: Path, dest: Path) -> Path:
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(dest), str(src)], capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (wheel,) = dest.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """slurmgov's wheel, built from a copy of the tracked files."""
    tmp = tmp_path_factory.mktemp("wheel")
    return _build_wheel(_source_copy(tmp / "src"), tmp / "dist")


def _fresh_venv(env_dir: Path, *installs: list[str]) -> Path:
    """A venv whose dependencies come from the test environment's site-packages through a .pth
    line (nothing is downloaded); ``installs``: pip install arguments, run in it in turn."""
    venv.create(env_dir, with_pip=True)  # ensurepip: offline
    py = env_dir / "bin" / "python"
    for args in installs:
        p = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", *args],
                           capture_output=True, text=True, timeout=600, check=False)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with slurmgov's wheel (no editable finder)."""
    return _fresh_venv(tmp_path_factory.mktemp("installed") / "venv", [str(wheel)])


@pytest.mark.slurm
@pytest.mark.usefixtures("clean_hook_conf")
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


@pytest.mark.slurm
@pytest.mark.usefixtures("clean_hook_conf")
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


STAND_IN = {
    "triton_kernels/__init__.py": "OWNER = 'triton-kernels stand-in'\n\n\ndef swiglu(x, y):\n    return x * y\n",
    "setup.py": "from setuptools import setup\n\nsetup(name='triton-kernels', version='3.4.0', packages=['triton_kernels'])\n",
}


def _needs_torch():
    if find_spec("torch") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("torch is not installed (the kernels extra)")
        pytest.skip("the kernels need torch (pip install -e '.[kernels]')")


# slurmgov's kernels at work: one reference cache write, read back (torch only, no triton).
KERNELS_WORK = """
import torch
from slurmgov.context.kernels import import_kernels
tk = import_kernels()
k = torch.arange(8, dtype=torch.float32).reshape(2, 1, 4)
kc = torch.zeros(2, 2, 1, 4)
vc = torch.zeros(2, 2, 1, 4)
tk.reference_reshape_and_cache(k, k + 1, kc, vc, torch.tensor([3, 0]))
assert torch.equal(kc[1, 1, 0], k[0, 0]) and torch.equal(kc[0, 0, 0], k[1, 0]), kc
print(tk.__name__, tk.__file__)
"""


def test_the_wheel_installs_its_kernels_as_slurmgov_kernels(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("triton_kernels/")], names
    shipped = {n.split("/", 1)[1] for n in names if n.startswith("slurmgov_kernels/")}
    assert shipped == {p.name for p in (ROOT / "triton_kernels").glob("*.py")}
    packages = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "slurmgov").rglob("__init__.py")}
    assert packages <= {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}, (
        "a package of slurmgov/ is missing from setup.cfg's packages")


@pytest.mark.parametrize("stand_in_first", [True, False], ids=["stand-in-first", "slurmgov-first"])
def test_slurmgov_installs_beside_a_triton_kernels_distribution(wheel, tmp_path, stand_in_first):
    """vLLM's triton-kernels owns the import name triton_kernels: installed in either order
    beside it, slurmgov overwrites none of its files and both packages import and work."""
    _needs_torch()
    src = tmp_path / "stand-in"
    for name, text in STAND_IN.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    other = _build_wheel(src, tmp_path / "dist")
    order = [[str(other)], [str(wheel)]] if stand_in_first else [[str(wheel)], [str(other)]]
    env_dir = _fresh_venv(tmp_path / "venv", *order)
    py = str(env_dir / "bin" / "python")
    env = {**os.environ, "PYTHONPATH": "", "TRITON_INTERPRET": "1"}
    p = subprocess.run([py, "-c", "import triton_kernels as t; print(t.OWNER, t.swiglu(3, 4), t.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert p.returncode == 0 and p.stdout.startswith("triton-kernels stand-in 12 " + str(env_dir)), p.stdout + p.stderr
    p = subprocess.run([py, "-c", KERNELS_WORK + "import triton_kernels; assert triton_kernels.OWNER\n"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert p.stdout.startswith("slurmgov_kernels " + str(env_dir)), p.stdout
    p = subprocess.run([py, "-m", "pip", "show", "-f", "triton-kernels"], capture_output=True, text=True, check=True)
    assert "triton_kernels/__init__.py" in p.stdout


def test_an_editable_install_imports_the_kernels_of_its_tree(tmp_path):
    """`pip install -e .` (the README's commands): slurmgov_kernels is the tree's triton_kernels/."""
    _needs_torch()
    src = _source_copy(tmp_path / "src")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = str(env_dir / "bin" / "python")
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # pip, setuptools, deps
    p = subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-e", str(src)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": "", "TRITON_INTERPRET": "1"}
    p = subprocess.run([py, "-c", KERNELS_WORK + "import slurmgov_kernels.paged_decode as pd\nprint(pd.__file__)\n"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert p.stdout.split() == ["slurmgov_kernels", str(src / "triton_kernels" / "__init__.py"),
                                str(src / "triton_kernels" / "paged_decode.py")], p.stdout
