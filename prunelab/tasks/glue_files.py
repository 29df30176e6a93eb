"""Read GLUE tsv files in the layout GLUE's download script produced (``glue/MRPC/train.tsv``).

Plain ``csv`` with no quote handling: MRPC and others contain stray ``"`` characters, and MRPC's
header starts with a UTF-8 BOM (hence ``utf-8-sig``).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from prunelab.errors import ConfigError

# GLUE sentences can exceed csv's default 128 KiB field limit (QNLI paragraphs).
csv.field_size_limit(sys.maxsize)


def read_glue_tsv(
    path: Path, columns: dict[str, str | int], header: bool
) -> tuple[dict[str, list[str]], int]:
    """Columns of ``path`` renamed to the hub's field names, and the number of malformed rows skipped.

    columns: hub field name -> tsv header name (``header=True``) or 0-based column index.
    """
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        first = next(rows) if header else None
        positions = {field: _position(source, first, path) for field, source in columns.items()}
        needed = max(positions.values()) + 1
        out: dict[str, list[str]] = {field: [] for field in columns}
        skipped = 0
        for row in rows:
            # A few GLUE rows (QQP) are cut short; the hub's loader drops them too.
            if len(row) < needed:
                skipped += 1
                continue
            for field, position in positions.items():
                out[field].append(row[position])
    return out, skipped


def _position(source: str | int, header_row: list[str] | None, path: Path) -> int:
    if isinstance(source, int):
        return source
    if header_row is None:
        raise ConfigError(f"task.local.columns: '{source}' is a header name but {path} is read without a header")
    if source not in header_row:
        raise ConfigError(f"task.local.columns: column '{source}' not in {path}; columns there: {header_row}")
    return header_row.index(source)
