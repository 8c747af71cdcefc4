"""Load YAML with line numbers, so every validation error can name the file and line.

Shared by the jobspec (intent) and the site description (governance); it sits below
both planes and does only the file read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from slurmgov.errors import InputError

Loc = tuple  # a path into the document: ("steps", 3, "resources", "gpus")


class Located:
    """A parsed YAML document plus the line of every mapping key and list item."""

    def __init__(self, path: str, data: Any, lines: dict[Loc, int]):
        self.path = path
        self.data = data
        self._lines = lines

    def line(self, loc: Loc) -> int | None:
        """Line of the deepest known prefix of ``loc`` (pydantic locs may go deeper)."""
        loc = tuple(loc)
        while loc:
            if loc in self._lines:
                return self._lines[loc]
            loc = loc[:-1]
        return self._lines.get((), None)

    def where(self, loc: Loc) -> str:
        line = self.line(loc)
        return f"{self.path}:{line}" if line else self.path


MAX_DEPTH = 64  # no jobspec or site file nests deeper; deeper input is refused, not recursed into


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: str, above: frozenset = frozenset()) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if id(node) in above:  # an alias pointing at one of its own parents
        raise InputError(f"{path}:{node.start_mark.line + 1}: recursive YAML alias")
    if len(loc) > MAX_DEPTH:
        raise InputError(f"{path}:{node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
    above = above | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise InputError(f"{path}:{key_node.start_mark.line + 1}: duplicate key '{key}'")
            seen.add(key)
            lines[loc + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, loc + (key,), lines, path, above)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[loc + (i,)] = item.start_mark.line + 1
            _walk(item, loc + (i,), lines, path, above)


def load_text(text: str, path: str = "<string>") -> Located:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise InputError(f"{path}: YAML nested too deeply") from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _walk(node, (), lines, path)
    return Located(path, data, lines)


def load(path: str | Path) -> Located:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read: {exc}") from None
    return load_text(text, str(p))


def first_error(err, doc: Located, describe=None) -> InputError:
    """Turn a pydantic ValidationError into one line: ``file:line: step 'x': field: problem``.

    ``describe(loc, data)`` may name the object a loc points into and return
    ``(name, rest_of_loc)``, e.g. ``("step 'fetch'", ("resources", "gpus"))``.
    """
    e = err.errors()[0]
    loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "required field is missing"
    name, rest = describe(loc, doc.data) if describe else (None, loc)
    parts = [doc.where(loc)]
    if name:
        parts.append(name)
    if rest:
        parts.append(".".join(str(x) for x in rest))
    return InputError(": ".join(parts) + f": {msg}")
