"""Load YAML with line numbers, so every validation error can name the file and line.

Shared by the jobspec (intent) and the site description (governance); it sits below
both planes and does only the file read.

One parse per file: LibYAML (PyYAML's C loader, where it was built with it) composes the
node tree once, and one walk over it builds the data and records the line of every key and
list item. A 10,000-step jobspec loads in well under a second this way; PyYAML's pure-Python
loader, parsing twice, took 11 s.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from slurmgov.errors import InputError

Loc = tuple  # a path into the document: ("steps", 3, "resources", "gpus")

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


class _CachedResolve(yaml.resolver.Resolver):
    """The safe loader, with the tag of each plain scalar resolved once per distinct text.

    PyYAML matches every plain scalar against its implicit-type regexps in Python; in a big
    jobspec most scalars repeat (keys, `true`, small numbers). A mixin put before a safe
    loader class; its Resolver base (which both loaders have) leaves their MRO as it was."""

    def __init__(self, stream):
        super().__init__(stream)
        self._plain_tags: dict[str, str] = {}

    def resolve(self, kind, value, implicit):
        if kind is not ScalarNode or self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        if not implicit[0]:  # quoted: a string
            return self.DEFAULT_SCALAR_TAG
        tag = self._plain_tags.get(value)
        if tag is None:
            tag = self._plain_tags[value] = super().resolve(kind, value, implicit)
        return tag


class PurePythonLoader(_CachedResolve, yaml.SafeLoader):
    pass


LIBYAML = bool(getattr(yaml, "__with_libyaml__", False))
if LIBYAML:
    class LibYAMLLoader(_CachedResolve, yaml.CSafeLoader):
        pass

    LOADER: type = LibYAMLLoader
else:  # PyYAML built without LibYAML: about 10x slower, same results
    LOADER = PurePythonLoader


class Located:
    """A parsed YAML document plus the line of every mapping key and list item, and its size:
    ``values``, every key, item and scalar counted each place it appears once aliases are
    expanded (what writing the data out produces), and ``written``, the nodes the text itself
    holds (an alias's target counted once)."""

    def __init__(self, path: str, data: Any, lines: dict[Loc, int], values: int = 0, written: int = 0):
        self.path = path
        self.data = data
        self._lines = lines
        self.values = values
        self.written = written

    @property
    def alias_values(self) -> int:
        """The values aliases add to the document: 0 without aliases, 10**9 for a few hundred
        bytes of billion laughs."""
        return max(0, self.values - self.written)

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


class _Builder:
    """One walk over the composed nodes: the Python data (as safe_load builds it) and the line
    of every mapping key and list item.

    An alias is built once and shared, as safe_load shares it (errors inside it name the
    anchor's lines), so a billion-laughs document costs one walk of each anchor."""

    def __init__(self, loader, path: str):
        self.loader = loader
        self.path = path
        self.lines: dict[Loc, int] = {}
        self.built: dict[int, Any] = {}  # id(node) -> its data, for aliases
        self.open: set[int] = set()  # ids of the collections being built: an alias to one is a cycle
        self.scalars: dict[tuple[str, str], Any] = {}  # (tag, text) -> value; scalar values are immutable
        self.sizes: dict[int, int] = {}  # id(node) -> values in it, aliases expanded
        self.size = 0  # the size of the node just built
        self.written = 0  # distinct nodes built

    def where(self, node) -> str:
        return f"{self.path}:{node.start_mark.line + 1}"

    def build(self, node, loc: Loc) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, ScalarNode):
            self.size = 1
            self.written += 1
            return self.scalar(node)
        key = id(node)
        if key in self.built:
            self.size = self.sizes[key]
            return self.built[key]
        if key in self.open:
            raise InputError(f"{self.where(node)}: recursive YAML alias")
        if len(loc) > MAX_DEPTH:
            raise InputError(f"{self.where(node)}: nested more than {MAX_DEPTH} levels deep")
        self.open.add(key)
        self.written += 1
        size = 1
        if isinstance(node, MappingNode) and node.tag == _MAP:
            data: Any = self.mapping(node, loc)
            size = self.size
        elif isinstance(node, SequenceNode) and node.tag == _SEQ:
            data = []
            for i, item in enumerate(node.value):
                data.append(self.build(item, loc + (i,)))
                size += self.size
        else:  # an explicitly tagged collection (!!set, !!omap, an unknown tag): PyYAML's rules
            data = self.loader.construct_object(node, deep=True)
            size = self.tagged_size(node)
        self.open.discard(key)
        self.built[key] = data
        self.sizes[key] = self.size = size
        return data

    def scalar(self, node: ScalarNode) -> Any:
        if node.tag == _STR:
            return node.value
        k = (node.tag, node.value)
        if k not in self.scalars:
            self.scalars[k] = self.loader.construct_object(node)
        return self.scalars[k]

    def mapping(self, node: MappingNode, loc: Loc) -> dict:
        seen: set = set()
        for key_node, _ in node.value:  # duplicates among the keys written here; merged ones may be overridden
            if key_node.tag == _MERGE:
                continue
            key = self.key(key_node)
            if key in seen:
                raise InputError(f"{self.where(key_node)}: duplicate key '{key}'")
            seen.add(key)
            self.lines[loc + (key,)] = key_node.start_mark.line + 1
        if any(k.tag == _MERGE for k, _ in node.value):
            self.loader.flatten_mapping(node)  # `<<: *defaults` first, the keys written here after
        data: dict = {}
        size = 1
        for key_node, value_node in node.value:
            key = self.key(key_node)
            self.lines.setdefault(loc + (key,), key_node.start_mark.line + 1)
            self.written += 1  # the key
            data[key] = self.build(value_node, loc + (key,))
            size += 1 + self.size
        self.size = size  # a merged key counts where it is merged, as writing it out repeats it
        return data

    def tagged_size(self, node) -> int:
        """The values in a collection PyYAML builds (a tagged one), from its nodes: an alias's
        target is written once and counted each place it is used."""
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        if isinstance(node, ScalarNode):
            self.written += 1
            return 1
        self.written += 1
        self.sizes[key] = 1  # a recursive alias: PyYAML has built it already; count the loop once
        if isinstance(node, MappingNode):
            size = 1 + sum(self.tagged_size(k) + self.tagged_size(v) for k, v in node.value)
        else:
            size = 1 + sum(self.tagged_size(v) for v in node.value)
        self.sizes[key] = size
        return size

    def key(self, node) -> Any:
        if not isinstance(node, ScalarNode):
            raise InputError(f"{self.where(node)}: a mapping key must be a plain value, not a {node.id}")
        return self.scalar(node)


@contextmanager
def _no_cycle_collection():
    """Pause the cyclic garbage collector while a document is built. Each collection re-scans
    every node made so far, which made composing a 10,000-step jobspec 5x slower; a parse
    makes no cyclic garbage worth collecting early."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def load_text(text: str, path: str = "<string>") -> Located:
    loader = None
    try:
        with _no_cycle_collection():
            loader = LOADER(text)  # the pure-Python reader checks the text here
            builder = _Builder(loader, path)
            node = loader.get_single_node()
            data = None if node is None else builder.build(node, ())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise InputError(f"{path}: YAML nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    return Located(path, data, builder.lines, builder.size if node is not None else 0, builder.written)


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
