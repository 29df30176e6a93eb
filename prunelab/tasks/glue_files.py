"""Read GLUE tsv files in the layout GLUE's download script produced (``glue/MRPC/train.tsv``).

Plain ``csv`` with no quote handling: MRPC and others contain stray ``"`` characters, and MRPC's
header starts with a UTF-8 BOM (hence ``utf-8-sig``).

A bad file raises ``ConfigError`` with one line that starts ``<path>:<line>:`` (lines 1-based and
counted as an editor counts them, the header included) and says what is wrong.
"""
from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from prunelab.errors import ConfigError

# GLUE sentences can exceed csv's default 128 KiB field limit (QNLI paragraphs).
csv.field_size_limit(sys.maxsize)

_BOM = b"\xef\xbb\xbf"


@dataclass
class GlueTable:
    """The columns read from one tsv file, and where its rows came from.

    columns: hub field name -> one string per kept row. skipped_lines: 1-based lines of the rows
    skipped for having too few columns. first_line: the line of the first row after the header.
    """

    path: Path
    columns: dict[str, list[str]]
    skipped_lines: list[int] = field(default_factory=list)
    first_line: int = 1

    def line_of(self, index: int) -> int:
        """The 1-based file line of kept row ``index`` (0-based). With ``QUOTE_NONE`` every row
        is one line, so only the skipped lines before it shift it."""
        line = self.first_line + index
        for skipped in self.skipped_lines:  # sorted
            if skipped > line:
                break
            line += 1
        return line


def read_glue_tsv(
    path: Path, columns: dict[str, str | int], header: bool
) -> tuple[dict[str, list[str]], int]:
    """Columns of ``path`` renamed to the hub's field names, and the number of malformed rows skipped.

    columns: hub field name -> tsv header name (``header=True``) or 0-based column index.
    """
    table = read_glue_table(path, columns, header)
    return table.columns, len(table.skipped_lines)


def read_glue_table(path: Path, columns: dict[str, str | int], header: bool) -> GlueTable:
    """``read_glue_tsv`` with the line bookkeeping that error messages need (see ``GlueTable``)."""
    try:
        return _read(path, columns, header)
    except UnicodeDecodeError:
        raise ConfigError(_decode_error(path)) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the file ({error.strerror or error})") from None


def _read(path: Path, columns: dict[str, str | int], header: bool) -> GlueTable:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            first = next(rows, None) if header else None
            if header and first is None:
                names = ", ".join(repr(s) for s in columns.values() if isinstance(s, str))
                raise ConfigError(f"{path}: file is empty (expected a header line with the columns {names})")
            if header and not first:
                names = ", ".join(repr(s) for s in columns.values() if isinstance(s, str))
                raise ConfigError(f"{path}:1: the header line is blank (expected the columns {names})")
            positions = {name: _position(source, first, path) for name, source in columns.items()}
            needed = max(positions.values()) + 1
            out: dict[str, list[str]] = {name: [] for name in columns}
            appends = [(out[name].append, position) for name, position in positions.items()]
            skipped: list[int] = []
            for row in rows:
                # A few GLUE rows (QQP) are cut short; the hub's loader drops them too.
                if len(row) < needed:
                    skipped.append(rows.line_num)
                    continue
                for append, position in appends:
                    append(row[position])
        except csv.Error as error:
            raise ConfigError(f"{path}:{rows.line_num}: {error}") from None
    table = GlueTable(path=path, columns=out, skipped_lines=skipped, first_line=2 if header else 1)
    if not next(iter(out.values())):
        raise ConfigError(_no_rows(table, needed, header))
    return table


def _position(source: str | int, header_row: list[str] | None, path: Path) -> int:
    if isinstance(source, int):
        return source
    if header_row is None:
        raise ConfigError(f"task.local.columns: '{source}' is a header name but {path} is read without a header")
    if source not in header_row:
        raise ConfigError(
            f"{path}:1: no column '{source}' in the header line (its columns: "
            f"{', '.join(repr(c) for c in header_row)}); task.local.columns names the columns to read"
        )
    return header_row.index(source)


def _no_rows(table: GlueTable, needed: int, header: bool) -> str:
    """The message for a file that gave no data rows: empty, or every row too short."""
    blank = set()
    first_short = None
    if table.skipped_lines:  # error path only: look at the skipped lines again
        wanted = set(table.skipped_lines)
        with open(table.path, encoding="utf-8-sig", newline="") as handle:
            rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in rows:
                if rows.line_num not in wanted:
                    continue
                if not "".join(row).strip():
                    blank.add(rows.line_num)
                elif first_short is None:
                    first_short = (rows.line_num, len(row))
    if first_short is None:
        if header:
            return f"{table.path}: no data rows after the header"
        return (
            f"{table.path}: file is empty (expected rows of at least {needed} tab-separated columns, no header line)"
        )
    line, count = first_short
    short = len(table.skipped_lines) - len(blank)
    return (
        f"{table.path}:{line}: row has {count} tab-separated column{'s' if count != 1 else ''}, at least {needed} "
        f"needed; all {short} data row{'s' if short != 1 else ''} {'are' if short != 1 else 'is'} this short, "
        f"so none is left (is the file tab-separated?)"
    )


def _decode_error(path: Path) -> str:
    """``<path>:<line>: not valid UTF-8`` for a file whose text decoding failed (error path only)."""
    raw = Path(path).read_bytes()
    body = raw[len(_BOM):] if raw.startswith(_BOM) else raw
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        line = body.count(b"\n", 0, error.start) + 1
        return f"{path}:{line}: not valid UTF-8 (byte 0x{body[error.start]:02x}: {error.reason}); save the file as UTF-8"
    return f"{path}: not valid UTF-8; save the file as UTF-8"


def parse_labels(table: GlueTable, num_labels: int, label_names: list[str] | None) -> list[int] | list[float]:
    """The ``label`` column of ``table`` as class ids (``label_names`` words or integers in
    ``[0, num_labels)``) or, with ``num_labels=1``, regression scores.

    One C-level ``map`` converts the column; only when it fails is the column walked again, to
    name the first bad line.
    """
    values = table.columns["label"]
    if num_labels == 1:
        try:
            scores = list(map(float, values))
            if all(map(math.isfinite, scores)):
                return scores
        except ValueError:
            pass
        index, value = next((i, v) for i, v in enumerate(values) if not _is_finite_number(v))
        raise ConfigError(
            f"{table.path}:{table.line_of(index)}: label {value!r} is not a number "
            f"(task.num_labels=1: a regression score is expected)"
        )
    if label_names:
        lookup = {word: i for i, word in enumerate(label_names)}
        try:
            return list(map(lookup.__getitem__, values))
        except KeyError:
            index, value = next((i, v) for i, v in enumerate(values) if v not in lookup)
            raise ConfigError(
                f"{table.path}:{table.line_of(index)}: label {value!r} is not one of the task's label words "
                f"{', '.join(label_names)}"
            ) from None
    expected = _class_ids(num_labels)
    try:
        labels = list(map(int, values))
    except ValueError:
        index, value = next((i, v) for i, v in enumerate(values) if not _is_int(v))
        raise ConfigError(
            f"{table.path}:{table.line_of(index)}: label {value!r} is not an integer (expected {expected})"
        ) from None
    if labels and (min(labels) < 0 or max(labels) >= num_labels):
        index = next(i for i, v in enumerate(labels) if not 0 <= v < num_labels)
        raise ConfigError(
            f"{table.path}:{table.line_of(index)}: label {values[index]!r} is out of range "
            f"(expected {expected}: task.num_labels={num_labels})"
        )
    return labels


def _class_ids(num_labels: int) -> str:
    ids = [str(i) for i in range(num_labels)]
    if num_labels > 5:
        return f"0 to {num_labels - 1}"
    return ids[0] if num_labels == 1 else f"{', '.join(ids[:-1])} or {ids[-1]}"


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _is_finite_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False
