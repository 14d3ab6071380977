"""The one table renderer: rows shown as GitHub markdown in a notebook or report, aligned text elsewhere, or HTML."""

from __future__ import annotations

import html
import math

ALIGNS = ("left", "right")
MISSING = "–"  # the one mark for a value that is not there (not run, not recorded, NaN), in every table and report
_HTML_CELL = "padding:2px 10px;text-align:{align}"


class Table:
    """Rows (dicts keyed by column, or lists in column order) shown as a markdown table in a notebook, as text elsewhere.

    align gives each column "left" or "right" (a list in column order, or a dict by column name). Without it,
    markdown right-aligns the columns whose first value is a number and text aligns every column left.
    """

    def __init__(self, rows: list, columns: list[str] | None = None, note: str = "", *, align=None):
        self.rows = rows
        self.columns = list(columns) if columns is not None else (list(rows[0]) if rows else [])
        self.note = note
        self.align = align

    def _values(self) -> list[list]:
        """Return the rows as lists of values in column order."""
        return [list(row) if not isinstance(row, dict) else [row.get(c) for c in self.columns] for row in self.rows]

    def _cells(self) -> list[list[str]]:
        return [[format_cell(v) for v in row] for row in self._values()]

    def _alignment(self, infer: bool) -> list[str]:
        """Return "left" or "right" for every column: as given, else inferred from the first row (or all left)."""
        if isinstance(self.align, dict):
            return [self.align.get(c, "left") for c in self.columns]
        if self.align is not None:
            return list(self.align)
        first = self._values()[0] if self.rows else [None] * len(self.columns)
        return ["right" if infer and isinstance(v, (int, float)) else "left" for v in first]

    def to_markdown(self) -> str:
        """Return the table as GitHub markdown (followed by its note)."""
        rule = ["---:" if a == "right" else "---" for a in self._alignment(infer=True)]
        lines = ["| " + " | ".join(map(_markdown_cell, self.columns)) + " |", "|" + "|".join(rule) + "|"]
        lines += ["| " + " | ".join(map(_markdown_cell, row)) + " |" for row in self._cells()]
        return "\n".join(lines) + (f"\n\n{self.note}" if self.note else "") + "\n"

    def to_text(self) -> str:
        """Return the table as aligned plain text (followed by its note)."""
        body = self._cells()
        widths = [max(len(r[j]) for r in [self.columns, *body]) for j in range(len(self.columns))]
        aligns = self._alignment(infer=False)

        def line(r):
            return "  ".join(c.rjust(w) if a == "right" else c.ljust(w) for c, w, a in zip(r, widths, aligns)).rstrip()

        return "\n".join([line(self.columns), line(["-" * w for w in widths]), *map(line, body)]
                         + ([self.note] if self.note else []))

    def to_html(self, caption: str = "", bold_rows=(), font_size: str = "13px") -> str:
        """Return the table as HTML with inline styles; caption is HTML, the rows at indices bold_rows are bold."""
        aligns = self._alignment(infer=True)
        head = "".join(f'<th style="{_HTML_CELL.format(align=a)};border-bottom:1px solid #bbb">{html.escape(c)}</th>'
                       for c, a in zip(self.columns, aligns))
        rows = []
        for i, row in enumerate(self._cells()):
            weight = "font-weight:bold;" if i in bold_rows else ""
            rows.append("<tr>" + "".join(f'<td style="{weight}{_HTML_CELL.format(align=a)}">{html.escape(c)}</td>'
                                         for c, a in zip(row, aligns)) + "</tr>")
        top = f"<caption style='text-align:left'>{caption}</caption>" if caption else ""
        return (f'<table style="border-collapse:collapse;font-size:{font_size}">{top}<thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(rows)}</tbody></table>")

    def __repr__(self) -> str:
        return self.to_text()

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def format_cell(value) -> str:
    """Return a table cell: floats with 4 decimals, ints with thousands separators, None and NaN as MISSING."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _markdown_cell(text: str) -> str:
    """Return text safe inside a markdown table cell: pipes escaped, line breaks as spaces."""
    return str(text).replace("|", "\\|").replace("\n", " ")
