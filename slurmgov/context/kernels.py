"""Where slurmgov's paged-KV kernels come from. Their source folder is ``triton_kernels/`` at the
top of the repository, but they install as ``slurmgov_kernels`` (setup.cfg ``package_dir``): a
top-level ``triton_kernels`` would shadow, or be shadowed by, the ``triton-kernels``
distribution that vLLM installs under that import name.

Run from a source tree (a checkout on ``PYTHONPATH``, or an editable install made before the
rename) the name ``slurmgov_kernels`` may be on no path, or lead to another tree, so the tree's
own folder is loaded under it; an installed slurmgov imports the installed package. A source tree
is the folder above slurmgov/ holding setup.cfg: installed, that folder is site-packages, whose
``triton_kernels`` (if any) is someone else's."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

NAME = "slurmgov_kernels"
SOURCE_TREE = Path(__file__).resolve().parents[2]
SOURCE_DIR = SOURCE_TREE / "triton_kernels"


def import_kernels() -> Any:  # a module whose names are torch's and triton's (untyped)
    """The kernels package (``slurmgov_kernels``): this source tree's ``triton_kernels/`` when
    slurmgov runs from one, else the installed package. ImportError when neither is there."""
    if NAME in sys.modules:
        return sys.modules[NAME]
    init = SOURCE_DIR / "__init__.py"
    if not (init.is_file() and (SOURCE_TREE / "setup.cfg").is_file()):
        return importlib.import_module(NAME)
    spec = importlib.util.spec_from_file_location(NAME, init, submodule_search_locations=[str(SOURCE_DIR)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(NAME, None)
        raise
    return module
