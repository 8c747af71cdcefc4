"""The harness's release switch (tests/slurm_release.py): SLURMGOV_SLURM names one of the releases
it knows or the run stops with one line naming them; a chroot that cannot be made says which step
failed and leaves nothing mounted or half-made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import slurm_release

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value,want", [("", "22.05"), ("22.05", "22.05"), ("24.11", "24.11"), (" 26.05 ", "26.05")])
def test_the_switch_names_a_release(monkeypatch, value, want):
    monkeypatch.setenv("SLURMGOV_SLURM", value)
    assert slurm_release.selected() == want


@pytest.mark.parametrize("value", ["25.11", "24.11.5", "latest", "23"])
def test_an_unknown_release_is_one_line_naming_the_supported_ones(monkeypatch, value):
    monkeypatch.setenv("SLURMGOV_SLURM", value)
    with pytest.raises(slurm_release.ReleaseError) as e:
        slurm_release.selected()
    assert str(e.value) == (f"SLURMGOV_SLURM={value!r} is not a Slurm release the test harness knows; "
                            "supported: 22.05, 24.11, 26.05")


def test_a_run_with_an_unknown_release_stops_before_any_cluster(tmp_path):
    env = {**os.environ, "SLURMGOV_SLURM": "25.11", "PYTHONPATH": str(ROOT)}
    env.pop("CI", None)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_slurm_hook.py::test_cluster_is_up"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 4, p.stdout + p.stderr
    assert "SLURMGOV_SLURM='25.11' is not a Slurm release the test harness knows; supported: 22.05, 24.11, 26.05" \
        in p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr


def test_an_unknown_release_among_the_others_stops_the_run_in_one_line(tmp_path):
    env = {**os.environ, "SLURMGOV_RELEASES": "22.05,24.1", "PYTHONPATH": str(ROOT)}
    env.pop("CI", None)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_releases.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 4, p.stdout + p.stderr
    assert ("SLURMGOV_RELEASES names '24.1', not a Slurm release the test harness knows; supported: 22.05, "
            "24.11, 26.05") in p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert not list((ROOT / "tests").glob("**/releases/slurm-*"))  # no child was started


def _mounts_under(path: Path) -> list[str]:
    return [ln.split()[1] for ln in Path("/proc/self/mounts").read_text().splitlines()
            if ln.split()[1].startswith(str(path))]


def _need_root_and_debootstrap(log: Path) -> None:
    """Root, and debootstrap (installed here if missing, as a chroot's first build does)."""
    if os.geteuid() != 0:
        (pytest.fail if os.environ.get("CI", "").lower() in ("1", "true", "yes") else pytest.skip)("needs root")
    slurm_release.ensure_debootstrap("24.11", log)


def test_a_chroot_that_cannot_be_made_says_which_step_and_leaves_nothing(tmp_path, monkeypatch):
    _need_root_and_debootstrap(tmp_path / "apt.log")
    monkeypatch.setattr(slurm_release, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(slurm_release, "MIRROR", "http://127.0.0.1:9/debian")  # nothing listens there
    log = tmp_path / "build.log"
    with pytest.raises(slurm_release.ReleaseError) as e:
        slurm_release.ensure_chroot("24.11", log)
    assert str(e.value) == (f"building the Slurm 24.11 chroot: step 'debootstrap' failed with exit 1 (see {log})")
    assert _mounts_under(tmp_path) == []
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["slurm-24.11-trixie.lock"]  # nothing half-made


def test_a_failed_install_into_a_cached_chroot_names_the_step_and_unmounts(tmp_path, monkeypatch):
    """A cached chroot made with another package list gets the missing ones installed in place; when
    that fails, the error names the step, its /proc and /dev are unmounted and it stays as it was."""
    dest = slurm_release.chroot_dir("24.11")
    _need_root_and_debootstrap(tmp_path / "apt.log")
    slurm_release.ensure_chroot("24.11", tmp_path / "make.log")  # made once, if missing; the suite's 24.11 tests share it
    before = slurm_release._marker(dest)
    mounted_before = _mounts_under(dest)
    monkeypatch.setattr(slurm_release, "PACKAGES", (*slurm_release.PACKAGES, "slurmgov-no-such-package"))
    log = tmp_path / "build.log"
    with pytest.raises(slurm_release.ReleaseError) as e:
        slurm_release.ensure_chroot("24.11", log)
    assert str(e.value) == f"building the Slurm 24.11 chroot: step 'apt-get install' failed with exit 100 (see {log})"
    assert _mounts_under(dest) == mounted_before
    assert slurm_release._marker(dest) == before
