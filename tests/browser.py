"""A real headless Chromium for the dashboard tests (Debian's chromium package).

Installed on first use when root on Debian; with CI=true a missing browser fails the test
instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import host_apt
import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def find() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def ensure() -> str:
    exe = find()
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        host_apt.install("chromium")
        exe = find()
    if exe is None:
        reason = "no chromium (install Debian's chromium package, or run the tests as root on Debian)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return exe


def run(exe: str, url: str, *extra: str, budget_ms: int = 3000, timeout: float = 60) -> str:
    """Load ``url`` with JavaScript running, return the DOM afterwards."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url],
            capture_output=True, text=True, timeout=timeout,
        )
    return proc.stdout


def dom(exe: str, url: str) -> str:
    return run(exe, url, "--dump-dom")


def screenshot(exe: str, url: str, path: str, size: str = "1280,1000") -> None:
    run(exe, url, f"--screenshot={path}", f"--window-size={size}")
