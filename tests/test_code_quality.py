"""Checks on the code itself that the README test command runs: the linter (ruff) on the whole
repository and the type checker (mypy) on slurmgov/, both configured in pyproject.toml and run
from the repository root, as `python -m ruff check .` and `python -m mypy` would be by hand.

They fail the suite like any other test; under CI=true a missing tool is a failure, not a skip.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{module} is not installed (it is in the test extra: pip install -e '.[test]')")
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")


def test_ruff_is_clean():
    _tool("ruff")
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-2000:]


def test_mypy_is_clean_on_slurmgov():
    _tool("mypy")
    p = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       check=False)
    assert p.returncode == 0, f"mypy (exit {p.returncode}) on slurmgov/:\n{p.stdout[-5000:]}{p.stderr[-2000:]}"


# Which packages each package may import (README, "Layout"): imports point down, never up or
# sideways into a room above. ``errors`` and the version are shared by all.
ALLOWED = {
    "site": set(),
    "policy": set(),
    "ledger": set(),
    "context": set(),
    "slurm": {"site", "ledger"},
    "execution": {"site", "ledger", "slurm", "context"},
    "intent": {"site", "policy", "ledger", "slurm", "context", "execution"},
    "interface": {"site", "policy", "ledger", "slurm", "context", "execution", "intent"},
}


def _slurmgov_imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "slurmgov" and len(parts) > 1:
                found.add(parts[1])
    return found


# Third-party packages only some modules may import: the MCP SDK is an extra (slurmgov[mcp]), so
# only the server module imports it, and `slurmgov mcp` imports that module when it runs; so are
# PyJWT, Starlette and uvicorn (slurmgov[api]), which `slurmgov api` imports with api.py.
ONLY_IN = {"mcp": {"slurmgov/interface/mcp_server.py"}, "jwt": {"slurmgov/interface/api.py"},
           "starlette": {"slurmgov/interface/api.py"},
           "uvicorn": {"slurmgov/interface/api.py", "slurmgov/interface/mcp_server.py"}}


def _top_imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_optional_packages_are_imported_only_where_allowed():
    wrong = []
    for f in sorted((ROOT / "slurmgov").rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        for pkg in _top_imports(f) & set(ONLY_IN):
            if rel not in ONLY_IN[pkg]:
                wrong.append(f"{rel} imports {pkg}")
    assert not wrong, "optional packages imported outside their module:\n" + "\n".join(wrong)


def test_imports_point_down_the_layers():
    pkg = ROOT / "slurmgov"
    packages = {p.name for p in pkg.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), f"a package was added or removed; place it in ALLOWED: {packages ^ set(ALLOWED)}"
    wrong = []
    for room, allowed in ALLOWED.items():
        for f in sorted((pkg / room).rglob("*.py")):
            for used in _slurmgov_imports(f) & packages - allowed - {room}:
                wrong.append(f"{f.relative_to(ROOT)} imports slurmgov.{used}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)
