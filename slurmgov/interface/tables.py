"""The one way every `slurmgov` table is printed, so that no table ever loses a value.

Rich, left to itself, shrinks a table to the terminal (80 columns when piped) by cutting cells
(`chem-…`) or folding them mid-token (`--time=00:5` / `0:00`). Here instead:

- not a terminal (a pipe, a file): every cell whole, each row on one line, as wide as it needs
  (`slurmgov budget show | grep chem-ai` finds the row);
- a terminal: a line per row if that fits (boxed, else without the box: two spaces between
  columns); else cells wrap between tokens, each column at least as wide as its longest token;
  when even that is wider than the terminal, each row is shown as a block of `column  value`
  lines;
- `--format tsv`: a header line and one tab-separated line per row, nothing else.

Cells are plain text (never Rich markup: a `[tag]` in a reason is shown as typed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich import box
from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.table import Table as RichTable
from rich.text import Text

FORMATS = ("table", "tsv")


@dataclass(frozen=True)
class _Layout:
    """How a rich table is drawn, and the width that costs on top of the cells'."""

    boxed: bool

    def overhead(self, columns: int) -> int:
        if self.boxed:  # rich's default: a border left of each column and one at the end, a space each side
            return 3 * columns + 1
        return 2 * max(columns - 1, 0)  # no box, no padding at the edges: two spaces between columns


_BOXED, _BARE = _Layout(boxed=True), _Layout(boxed=False)


@dataclass
class Column:
    header: str
    justify: JustifyMethod = "left"


@dataclass
class _Row:
    cells: list[str]
    style: str | None


@dataclass
class Table:
    """Rows of plain strings under headed columns (the subset of rich's Table the CLI uses)."""

    title: str | None = None
    caption: str | None = None
    columns: list[Column] = field(default_factory=list)
    rows: list[_Row] = field(default_factory=list)

    def add_column(self, header: str, justify: JustifyMethod = "left", **_ignored) -> None:
        """`overflow=` and the like are accepted and ignored: `show` decides how cells wrap."""
        self.columns.append(Column(header, justify))

    def add_row(self, *cells, style: str | None = None) -> None:
        if len(cells) > len(self.columns):
            raise ValueError(f"table {self.title!r}: {len(cells)} cells for {len(self.columns)} columns")
        cells += ("",) * (len(self.columns) - len(cells))  # as rich does: missing cells are empty
        self.rows.append(_Row(["" if c is None else str(c) for c in cells], style))


def show(table: Table, console: Console, fmt: str = "table") -> None:
    """Print ``table`` on ``console`` as ``fmt`` ("table" or "tsv"), never cutting a value."""
    if fmt == "tsv":
        console.file.write(tsv(table))
        console.file.flush()
    elif not console.is_terminal:
        widths = [_natural(table, i) for i in range(len(table.columns))]
        total = max(sum(widths) + _BOXED.overhead(len(widths)),
                    *(cell_len(s) for s in (table.title, table.caption) if s), 1)
        # A console of its own, as wide as the table: console.print never renders wider than its console.
        wide = Console(file=console.file, width=total, color_system=None, highlight=False, emoji=False)
        wide.print(_rich(table, widths, _BOXED, min_width=total), crop=False)
    else:
        console.print(_for_terminal(table, console.width))


def tsv(table: Table) -> str:
    """A header line, then one line per row; tabs and line breaks inside a cell become spaces."""
    def line(cells):
        return "\t".join(" ".join(c.split("\t")).replace("\r", " ").replace("\n", " ") for c in cells) + "\n"
    return line(c.header for c in table.columns) + "".join(line(r.cells) for r in table.rows)


def fit(table: Table, width: int, layout: _Layout = _BOXED, wrap: bool = True) -> list[int] | None:
    """Content widths that fit ``width`` drawn as ``layout`` with every token whole (and, unless
    ``wrap``, every cell on one line), or None.

    Each column starts at its longest token; what is left over goes to the columns that would
    wrap, in proportion to how much wider they would like to be."""
    n = len(table.columns)
    most = [_natural(table, i) for i in range(n)]
    least = [_longest_token(table, i) for i in range(n)] if wrap else most
    spare = width - sum(least) - layout.overhead(n)
    if spare < 0:
        return None
    widths = list(least)
    wants = [m - w for m, w in zip(most, least)]
    total_want = sum(wants)
    if total_want <= spare:
        return most
    for i in range(n):
        widths[i] += wants[i] * spare // total_want
    left = spare - (sum(widths) - sum(least))
    for i in sorted(range(n), key=lambda i: most[i] - widths[i], reverse=True)[:left]:
        widths[i] += 1
    return widths


def _cells(table: Table, i: int) -> list[str]:
    return [table.columns[i].header] + [r.cells[i] for r in table.rows]


def _natural(table: Table, i: int) -> int:
    return max((cell_len(line) for cell in _cells(table, i) for line in cell.splitlines()), default=0) or 1


def _longest_token(table: Table, i: int) -> int:
    return max((cell_len(tok) for cell in _cells(table, i) for tok in cell.split()), default=0) or 1


def _for_terminal(table: Table, width: int) -> RichTable:
    """The first that fits with every token whole: the table boxed, then bare, each first with a
    line per row, then with cells wrapped; then as records (boxed, then bare); else records with
    the values folded (a token wider than the terminal, which the terminal would fold anyway)."""
    for wrap in (False, True):
        for layout in (_BOXED, _BARE):
            widths = fit(table, width, layout, wrap)
            if widths is not None:
                return _rich(table, widths, layout)
    records = _records(table)
    for layout in (_BOXED, _BARE):
        widths = fit(records, width, layout)
        if widths is not None:
            return _rich(records, widths, layout, record=len(table.columns))
    label = min(_longest_token(records, 0), width // 3)
    return _rich(records, [label, max(width - label - _BARE.overhead(2), 1)], _BARE, record=len(table.columns))


def _records(table: Table) -> Table:
    """Each row as a block of `column  value` lines, for tables too wide for the terminal even with
    every cell wrapped down to its longest token."""
    t = Table(title=table.title, caption=table.caption)
    t.add_column("")
    t.add_column("")
    for row in table.rows:
        for col, cell in zip(table.columns, row.cells):
            t.add_row(col.header, cell, style=row.style)
    return t


def _rich(table: Table, widths: list[int], layout: _Layout, min_width: int | None = None,
          record: int = 0) -> RichTable:
    """``record``: rows come in blocks of this many (records, shown headless and set apart)."""
    t = RichTable(title=_plain(table.title), caption=_plain(table.caption), min_width=min_width,
                  show_header=not record, box=box.SQUARE if record else box.HEAVY_HEAD)
    if not layout.boxed:
        t.box, t.pad_edge = None, False
    for col, w in zip(table.columns, widths):
        t.add_column(Text(col.header), justify=col.justify, width=w, overflow="fold")
    for n, row in enumerate(table.rows, 1):
        last_of_record = bool(record) and n % record == 0 and n < len(table.rows)
        t.add_row(*map(Text, row.cells), style=row.style, end_section=last_of_record)
        if last_of_record and not layout.boxed:
            t.add_row()  # no box to draw a line between records: a blank line
    return t


def _plain(text: str | None) -> Text | None:
    return None if text is None else Text(text)
