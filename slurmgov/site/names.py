"""The one spelling of a name slurmgov takes: accounts, partitions, blocks, switches, sites,
workflows, steps and tags. Slurm's own names allow it, and it is safe in a snapshot or journal
line, a Lua pattern, a shell word, SQL, a URL and a file name.

Check with :func:`is_name`, never ``re.match(PATTERN, s)``: Python's ``$`` also matches before a
trailing newline, and an account ``"physics\\n"`` would split a snapshot line in two.
"""

from __future__ import annotations

import re
from typing import TypeGuard

# As JSON Schema and pydantic spell it (their ``$`` is the end of the text); shown in messages.
PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def is_name(value: object) -> TypeGuard[str]:
    """``value`` is a str that is a name, whole."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


# A Unix user or group name (it may start with ``_``; it never reaches a snapshot line by name).
USER_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def is_user_name(value: object) -> TypeGuard[str]:
    """``value`` is a str that is a user (or group) name, whole."""
    return isinstance(value, str) and _USER.fullmatch(value) is not None
