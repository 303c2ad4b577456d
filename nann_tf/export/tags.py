"""Item tags for filters, from an item table given at export (``--item-tags FILE --tag-columns
item=COL,tags=COL``).

The table is CSV or TSV (delimiter sniffed, or ``delimiter``) with a header when the columns are
named, or Parquet; a column is a header name or a 1-based position. ``tags`` holds integer tag
ids, several separated by ``sep`` (default ``|``; empty = no tags); an item may appear on
several rows (its tags are the union). Every item must be in the catalogue; a bad row is an
error naming the file, the line (CSV) or row group and row (Parquet), the column and the value,
and nothing is exported.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from nann_tf.errors import UserError, arg

__all__ = ["TagsError", "read_item_tags", "parse_tag_columns", "parse_columns", "raw_id_lookup",
           "table_rows"]


class TagsError(UserError, ValueError):
    """A bad item-tags file or column mapping."""


def parse_columns(text: str, roles: tuple[str, ...], flag: str, error=None
                  ) -> dict[str, str | int]:
    """``"item=sku,tags=flags"`` -> ``{"item": "sku", "tags": "flags"}`` (1-based positions as
    ints): every one of ``roles`` given once, nothing else. ``flag`` names the mapping in
    errors; ``error`` is the exception class raised (default :class:`TagsError`)."""
    error = error or TagsError
    out: dict[str, str | int] = {}
    for part in str(text).split(","):
        role, sep, col = (x.strip() for x in part.partition("="))
        if not sep or role not in roles or not col or role in out:
            raise error(f"{flag} {text!r}: expected "
                        f"{','.join(f'{r}=COLUMN' for r in roles)} (a header name or a "
                        "1-based position each)")
        out[role] = int(col) if col.isdigit() else col
    if set(out) != set(roles):
        raise error(f"{flag} {text!r}: {'both' if len(roles) == 2 else 'all of'} "
                    f"{' and '.join(f'{r}=' for r in roles)} are needed")
    return out


def parse_tag_columns(text: str) -> dict[str, str | int]:
    """``"item=sku,tags=flags"`` -> ``{"item": "sku", "tags": "flags"}`` (1-based positions as
    ints)."""
    return parse_columns(text, ("item", "tags"), arg("tag_columns"))


def raw_id_lookup(raw_item_id: np.ndarray, raw_item_key: np.ndarray | None = None) -> dict:
    """Raw item id (int, or str for string ids) -> dense id, over a catalogue's vocabulary."""
    if raw_item_key is not None:
        return {str(k): i for i, k in enumerate(raw_item_key) if i}
    return {int(r): i for i, r in enumerate(raw_item_id) if i}


def table_rows(path: Path, columns: dict, delimiter: str | None = None, error=None,
               flag: str | None = None):
    """Yields ``(where, {role: value})`` for each row of an item table (CSV/TSV with a header
    when ``columns`` names columns, or Parquet); ``columns`` maps each role to a header name or
    a 1-based position. ``where`` names the line (CSV) or row group and row (Parquet) for error
    messages; ``error`` is the exception class raised (default :class:`TagsError`)."""
    error = error or TagsError
    flag = flag or arg("tag_columns")
    by_position = all(isinstance(c, int) for c in columns.values())
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        f = pq.ParquetFile(path)
        names = f.schema_arrow.names
        cols = {}
        for role, c in columns.items():
            if isinstance(c, int):
                if not 1 <= c <= len(names):
                    raise error(f"{path}: {flag} {role}={c}: the file has {len(names)} columns")
                c = names[c - 1]
            elif c not in names:
                raise error(f"{path}: no column {c!r} (columns: {', '.join(names)})")
            cols[role] = c
        for g in range(f.num_row_groups):
            t = f.read_row_group(g, columns=list(dict.fromkeys(cols.values()))).to_pydict()
            n = len(next(iter(t.values()))) if t else 0
            for i in range(n):
                yield f"row group {g}, row {i}", {r: t[c][i] for r, c in cols.items()}
        return
    with open(path, newline="", encoding="utf-8") as fh:
        head = fh.read(8192)
        fh.seek(0)
        if delimiter is None:
            delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else \
                max(",\t;", key=head.count)
        reader = csv.reader(fh, delimiter=delimiter)
        index = {}
        line = 0
        if not by_position:
            header = next(reader, None)
            line = 1
            if header is None:
                raise error(f"{path}: empty file")
            header = [h.strip() for h in header]
            for role, c in columns.items():
                if isinstance(c, int):
                    index[role] = c - 1
                elif c in header:
                    index[role] = header.index(c)
                else:
                    raise error(f"{path}: line 1: no column {c!r} in the header "
                                f"({', '.join(header)})")
        else:
            index = {role: c - 1 for role, c in columns.items()}
        for fields in reader:
            line += 1
            if not fields or all(not f.strip() for f in fields):
                continue
            need = max(index.values()) + 1
            if len(fields) < need:
                raise error(f"{path}: line {line}: {len(fields)} fields, the mapping needs "
                            f"{need}")
            yield f"line {line}", {role: fields[i] for role, i in index.items()}


def _rows(path: Path, columns: dict, delimiter: str | None):
    """Yields ``(where, item text, tags text)``."""
    for where, row in table_rows(path, columns, delimiter):
        yield where, row["item"], row["tags"]


def read_item_tags(path, columns: str | dict, raw_item_id: np.ndarray,
                   raw_item_key: np.ndarray | None = None, sep: str = "|",
                   delimiter: str | None = None, max_tags: int = 16) -> list[tuple]:
    """Tags of every item of the catalogue, from an item table.

    Args:
      path: the table (CSV, TSV or Parquet).
      columns: ``"item=COL,tags=COL"`` or its parsed mapping.
      raw_item_id / raw_item_key: the catalogue (dense id -> raw id; string ids when
        ``raw_item_key`` is given).
      sep: the separator of several tags in one field.
      max_tags: the most tags an item may have.

    Returns:
      ``N + 1`` tuples of raw (int) tag ids, index = dense item id (0: empty).

    Raises:
      TagsError: a missing file or column, an item not in the catalogue, a tag that is not an
        integer > 0, more than ``max_tags`` tags for an item; naming file, line and column.
    """
    path = Path(path)
    cols = parse_tag_columns(columns) if isinstance(columns, str) else dict(columns)
    if not path.is_file():
        raise TagsError(f"{arg('item_tags')} {path}: no such file")
    n = len(raw_item_id) - 1
    lookup = raw_id_lookup(raw_item_id, raw_item_key)
    tags: list[set] = [set() for _ in range(n + 1)]
    seen = 0
    for where, item, field in _rows(path, cols, delimiter):
        seen += 1
        text = "" if item is None else str(item).strip()
        try:
            key = text if raw_item_key is not None else int(text)
        except ValueError:
            raise TagsError(f"{path}: {where}: column {cols['item']!r}: item id {text!r} is not "
                            "an integer (the catalogue's ids are integers)") from None
        dense = lookup.get(key)
        if dense is None:
            raise TagsError(f"{path}: {where}: column {cols['item']!r}: item {text!r} is not in "
                            "the catalogue (the model's items)")
        values = [] if field is None else (
            field if isinstance(field, list) else str(field).split(sep) if sep else [field])
        for v in values:
            v = str(v).strip()
            if not v:
                continue
            try:
                t = int(v)
            except ValueError:
                t = -1
            if t <= 0:
                raise TagsError(f"{path}: {where}: column {cols['tags']!r}: tag {v!r} is not an "
                                "integer > 0")
            tags[dense].add(t)
        if len(tags[dense]) > max_tags:
            raise TagsError(f"{path}: {where}: item {text!r} has more than {max_tags} tags")
    if not seen:
        raise TagsError(f"{path}: no rows")
    return [tuple(sorted(t)) for t in tags]
