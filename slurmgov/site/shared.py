"""Files slurmgov ships outside its package: the Lua hooks (plugins/) and the site files
(site_configs/). In a source tree (a checkout, an editable install) they are the tree's own;
a wheel or a distribution package installs them under <prefix>/share/slurmgov/ (setup.cfg's
data_files)."""

from __future__ import annotations

import sys
from pathlib import Path

SOURCE_TREE = Path(__file__).resolve().parents[2]


def shared_path(*parts: str) -> Path:
    """``parts`` in the source tree if it is there, else in the first <prefix>/share/slurmgov
    that has it; the source tree's path when none does (the caller says what is missing)."""
    tree = SOURCE_TREE.joinpath(*parts)
    if tree.exists():
        return tree
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix, "/usr/local", "/usr")):
        shared = Path(prefix, "share", "slurmgov", *parts)
        if shared.exists():
            return shared
    return tree
