"""The ``table`` input format: a behaviour log as it comes (CSV, TSV or Parquet), with a mapping.

    nann-tf prepare --format table --input ratings.csv \\
        --columns user=userId,item=movieId,time=timestamp,rating=rating \\
        --item-file movies.csv --item-columns item=movieId,category=genres --min-rating 3.5

Roles: ``user`` and ``item`` (ids, required), ``time`` (integers, decimals or ISO 8601
strings such as ``2017-11-25T10:00:00`` / ``2017-11-25``; optional: file order otherwise),
``category`` (a label, possibly multi-valued like ``Animation|Children|Drama``) and ``rating``
(alias ``weight``; a number, for ``--min-rating``). A column is named as in the header, or given
by its 1-based position (``item=2``), the only way when the file has no header.

- Format: from ``file_format`` or the file name (``.parquet``/``.pq``, ``.tsv``/``.tab``, else
  CSV). The delimiter is sniffed from the first lines unless given. The header is assumed when
  the mapping names columns and not when it gives positions, unless ``header`` says otherwise.
- Streaming: CSV is read by Arrow's streaming reader in blocks, Parquet one row group at a time;
  only the mapped columns are decoded, and every block is converted to NumPy before the next is
  read, so the file is never held in memory in several copies.
- Categories: a multi-valued field is split on ``category_sep`` and reduced per
  ``category_rule``: ``first`` (each row's first value), or ``most-frequent`` (per item, the
  value given most often over all its rows; ties go to the value that is more frequent over the
  whole file, then to the smaller name). Labels are numbered 1..C in sorted order and their names
  kept; labels that are all integers (category ids) keep their values. From an item table (``item_file`` + ``item_columns`` with ``item`` and ``category``) the
  same rules apply to each item's row(s).
- Ids: a ``user`` or ``item`` column whose values are all integers is read as integer ids
  (exactly as the presets read them). One value that is not an integer (a SKU, a UUID, a hex
  customer id) makes it a **string id** column: every value is then an id as written, stripped
  of surrounding whitespace (so ``0012`` and ``12`` are two ids). A string id may not be empty,
  longer than :data:`~nann_tf.data.dataset.MAX_ID_BYTES` UTF-8 bytes or hold a control
  character. A column found to hold strings only in a later block is read again from the start
  (the integers read before are not the text they were written as). The presets
  (``TableSpec.integer_roles``) keep integer ids only. With ``item_file``, the item table's ids
  are matched as the log's are: as integers, or as strings (as written, stripped).
- Errors name the file, the line (CSV) or row group and row (Parquet), the column and what was
  expected: a mapped column missing from the header, a role mapped twice, an empty or too long
  id, an unreadable time, a row with the wrong number of fields, an empty file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from nann_tf.data.dataset import MAX_ID_BYTES, DataError
from nann_tf.errors import arg

__all__ = ["ROLES", "CATEGORY_RULES", "ColumnMapping", "TableSpec", "read_table"]

log = logging.getLogger(__name__)

ROLES = ("user", "item", "time", "category", "rating")
_ALIASES = {"weight": "rating", "timestamp": "time"}
CATEGORY_RULES = ("first", "most-frequent")
_DELIMITERS = ",\t;|"
_INT_RE = r"^\s*[+-]?[0-9]+\s*$"
_BLOCK_SIZE = 16 << 20
NO_CATEGORY_NAME = "(none)"  # the label of an empty category field


@dataclasses.dataclass(frozen=True)
class ColumnMapping:
    """``role -> column``: a header name (str) or a 1-based position (int)."""

    columns: Mapping[str, str | int]

    @classmethod
    def parse(cls, text: str, name: str | None = None,
              required: tuple[str, ...] = ("user", "item")) -> "ColumnMapping":
        """``"user=userId,item=2"`` -> the mapping.

        Raises:
          DataError: not ``ROLE=COLUMN`` pairs, an unknown role, a role mapped twice, or a
            required role missing (naming ``name``).
        """
        name = name or arg("columns")
        out: dict[str, str | int] = {}
        for part in str(text).split(","):
            role, sep, column = part.strip().partition("=")
            role, column = _ALIASES.get(role.strip(), role.strip()), column.strip()
            if not sep or not role or not column:
                raise DataError(f"{name} {text!r}: expected ROLE=COLUMN pairs such as "
                                f"user=userId,item=movieId,time=timestamp (roles: "
                                f"{', '.join(ROLES)}; a column is a header name or a 1-based "
                                "position)")
            if role not in ROLES:
                raise DataError(f"{name} {text!r}: unknown role {role!r} (roles: "
                                f"{', '.join(ROLES)}, weight = rating)")
            if role in out:
                raise DataError(f"{name} {text!r}: role {role} is mapped twice")
            if column.isdigit():
                if int(column) < 1:
                    raise DataError(f"{name} {text!r}: column positions start at 1, got "
                                    f"{role}={column}")
                out[role] = int(column)
            else:
                out[role] = column
        missing = [r for r in required if r not in out]
        if missing:
            raise DataError(f"{name} {text!r}: no {' or '.join(missing)} column (required "
                            f"roles: {', '.join(required)})")
        return cls(out)

    @property
    def by_position(self) -> bool:
        return all(isinstance(c, int) for c in self.columns.values())


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """How to read a ``table`` log (see the module docstring)."""

    columns: str
    file_format: str | None = None  # csv, tsv, parquet; None: from the file name
    delimiter: str | None = None
    header: bool | None = None
    item_columns: str | None = None
    item_delimiter: str | None = None  # the item file's; None: sniffed
    category_sep: str = "|"
    category_rule: str = "first"
    block_size: int = _BLOCK_SIZE
    # For the presets of fixed layouts (nann_tf.data.readers):
    names: tuple[str, ...] | None = None  # the columns of a headerless file (fixes its width)
    quoting: bool = True  # '"' quotes fields; off: every delimiter separates
    # Roles that must be integers: user/item here mean integer ids only (the presets; the table
    # format reads a column of non-integer ids as string ids).
    integer_roles: tuple[str, ...] = ()


# --------------------------------------------------------------------------------- sources
def _file_format(path: Path, given: str | None) -> str:
    if given:
        if given not in ("csv", "tsv", "parquet"):
            raise DataError(f"{path}: unknown table format {given!r} (expected csv, tsv or "
                            "parquet)")
        return given
    suffix = path.suffix.lower()
    return "parquet" if suffix in (".parquet", ".pq") else \
        "tsv" if suffix in (".tsv", ".tab") else "csv"


def _first_lines(path: Path, n: int = 20) -> list[str]:
    with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
        return [line for _, line in zip(range(n), f)]


def _sniff_delimiter(path: Path, lines: list[str]) -> str:
    sample = "".join(lines)
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        counts = {d: lines[0].count(d) for d in _DELIMITERS} if lines else {}
        best = max(counts, key=counts.get) if counts else ","
        return best if counts.get(best) else ","


class _Source:
    """One table file: its header names and mapped columns, read in blocks of strings or
    values, each block with the file position of its first row (for error messages)."""

    def __init__(self, path: Path, mapping: ColumnMapping, spec: TableSpec, flag: str):
        self.path, self.mapping, self.flag = path, mapping, flag
        self.format = _file_format(path, spec.file_format)
        self.block_size = spec.block_size
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if not path.is_file():
            raise DataError(f"{path}: not a file")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (expected rows with the columns of {flag})")
        if self.format == "parquet":
            import pyarrow.parquet as pq

            try:
                self._pq = pq.ParquetFile(path)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types
                raise DataError(f"{path}: not a readable Parquet file ({e})") from e
            self.names = list(self._pq.schema_arrow.names)
            self.header = self.named = True
        else:
            lines = _first_lines(path)
            if not any(line.strip() for line in lines):
                raise DataError(f"{path}: empty file (no rows)")
            self.delimiter = spec.delimiter or ("\t" if self.format == "tsv"
                                                else _sniff_delimiter(path, lines))
            self.header = (not mapping.by_position) if spec.header is None else spec.header
            self.quoting = spec.quoting
            first_line = next(line for line in lines if line.strip())
            first = next(csv.reader(io.StringIO(first_line), delimiter=self.delimiter,
                                    quoting=csv.QUOTE_MINIMAL if spec.quoting
                                    else csv.QUOTE_NONE))
            self.named = spec.names is not None and not self.header
            if self.named:
                self.names = list(spec.names)
                self.width = len(self.names)
            else:
                self.width = len(first)
                self.names = [c.strip() for c in first] if self.header else \
                    [f"column {i + 1}" for i in range(self.width)]
        if self.format != "parquet" and len(first) != self.width:
            raise DataError(f"{path} line 1: expected {self.width} columns "
                            f"({','.join(self.names)}), got {len(first)}")
        self.fields = {role: self._resolve(role, col) for role, col in mapping.columns.items()}

    def _resolve(self, role: str, column: str | int) -> str:
        if isinstance(column, int):
            if column > len(self.names):
                raise DataError(f"{self.flag} {role}={column}: {self.path} has "
                                f"{len(self.names)} columns")
            return self.names[column - 1]
        if not self.header and not self.named:
            raise DataError(f"{self.flag} {role}={column}: {self.path} is read without a "
                            "header, so columns are given by 1-based position")
        if column not in self.names:
            raise DataError(f"{self.flag} {role}={column}: no column {column!r} in the header "
                            f"of {self.path} (columns: {', '.join(self.names)})")
        return column

    def where(self, row: int, group: int | None) -> str:
        """The place of data row ``row`` (0-based, counting from the start of the file or of
        its Parquet row group)."""
        if self.format == "parquet":
            return f"{self.path} row group {group} row {row + 1}"
        return f"{self.path} line {row + 1 + int(self.header)}"

    def blocks(self) -> Iterator[tuple[dict[str, Any], np.ndarray, int | None]]:
        """``({role: pyarrow array}, rows, row group)`` per block; ``rows`` holds each row's
        0-based position in the file (or its row group), for error messages. Blank CSV lines
        (every mapped field empty) are dropped but keep their place in the numbering."""
        import pyarrow as pa

        fields = sorted(set(self.fields.values()))
        if self.format == "parquet":
            for g in range(self._pq.num_row_groups):
                table = self._pq.read_row_group(g, columns=fields)
                yield ({r: table.column(f).combine_chunks() for r, f in self.fields.items()},
                       np.arange(table.num_rows), g)
            return
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv

        names = self.names if self.header else [f"f{i}" for i in range(self.width)]
        index = {n: names[self.names.index(n)] for n in fields}
        read = pacsv.ReadOptions(block_size=self.block_size, column_names=names,
                                 skip_rows=int(self.header))

        def invalid_row(row):  # a line of only spaces is blank; any other bad row is an error
            return "skip" if not row.text.strip() else "error"

        # Empty lines are kept as rows of empty fields, so that line numbers stay exact; they are
        # dropped below.
        parse = pacsv.ParseOptions(delimiter=self.delimiter,
                                   quote_char='"' if self.quoting else False,
                                   invalid_row_handler=invalid_row, ignore_empty_lines=False)
        convert = pacsv.ConvertOptions(include_columns=[index[f] for f in fields],
                                       column_types={index[f]: pa.string() for f in fields},
                                       strings_can_be_null=False)
        row = 0
        try:
            reader = pacsv.open_csv(self.path, read, parse, convert)
            for batch in reader:
                cols = {r: batch.column(index[f]) for r, f in self.fields.items()}
                rows = np.arange(row, row + batch.num_rows)
                row += batch.num_rows
                # Blank: every field empty. Test one column on all rows, the rest only where
                # it is empty (almost never).
                first, *rest = cols.values()
                blank = np.asarray(pc.equal(pc.utf8_length(first), 0), bool)
                if blank.any():
                    at = np.flatnonzero(blank)
                    for arr in rest:
                        blank[at] &= np.asarray(
                            pc.equal(pc.utf8_length(arr.take(pa.array(at))), 0), bool)
                if blank.any():
                    keep = pa.array(~blank)
                    cols = {r: arr.filter(keep) for r, arr in cols.items()}
                    rows = rows[~blank]
                if len(rows):
                    yield cols, rows, None
        except pa.ArrowInvalid as e:
            raise DataError(self._parse_error(str(e))) from None

    def _parse_error(self, message: str) -> str:
        """Arrow's parse error, with the line found by a line-by-line scan."""
        quoting = csv.QUOTE_MINIMAL if self.quoting else csv.QUOTE_NONE
        named = f" ({','.join(self.names)})" if self.header or self.named \
            else f" ({self.delimiter!r}-separated, as on the first line)"
        with open(self.path, "r", encoding="utf-8", errors="replace", newline="") as f:
            for lineno, fields in enumerate(csv.reader(f, delimiter=self.delimiter,
                                                       quoting=quoting), start=1):
                if any(x.strip() for x in fields) and len(fields) != self.width:
                    return (f"{self.path} line {lineno}: expected {self.width} columns{named}, "
                            f"got {len(fields)}")
        return f"{self.path}: {message.splitlines()[0]}"


# ------------------------------------------------------------------------------ conversion
def _fail(source: _Source, role: str, values, ok, rows: np.ndarray, group, expected: str):
    """Raises the DataError for the first value of ``values`` that ``ok`` marks bad (``rows``:
    each value's row position, from :meth:`_Source.blocks`)."""
    bad = int(np.flatnonzero(~np.asarray(ok, dtype=bool))[0])
    value = values[bad].as_py()
    column = source.fields[role]
    raise DataError(f"{source.where(int(rows[bad]), group)}, column {column} ({role}): "
                    f"expected {expected}, got {value!r}") from None


def _ints(source: _Source, role: str, arr, rows: np.ndarray, group) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_integer(arr.type):
        if arr.null_count:
            _fail(source, role, arr, pc.is_valid(arr), rows, group, "an integer")
        return arr.to_numpy().astype(np.int64, copy=False)
    try:  # clean text: no trimming pass
        return pc.cast(arr, pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
    try:
        return pc.cast(text, pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok = pc.fill_null(pc.match_substring_regex(text, _INT_RE), False)
        if pc.all(ok).as_py():  # digits, but a value out of the int64 range
            big = [not -(2**63) <= int(v) < 2**63 for v in text.to_pylist()]
            k = big.index(True)
            raise DataError(f"{source.where(int(rows[k]), group)}, column "
                            f"{source.fields[role]} ({role}): integer {text[k].as_py()} does not "
                            "fit in int64") from None
        _fail(source, role, text, ok, rows, group, "an integer")


_ID_ROLES = ("user", "item")
_CONTROL_RE = r"\p{Cc}"  # C0/C1 control characters (newline, tab, carriage return, NUL, ...)


class _NotIntegers(Exception):
    """An id column holds a value that is not an integer: it is a string id column."""

    def __init__(self, role: str, value, where: str):
        super().__init__(f"{where}: {role} {value!r}")
        self.role, self.value, self.where = role, value, where


def _short(value: str, n: int = 40) -> str:
    return value if len(value) <= n else value[:n] + "..."


def _id_text(source: _Source, role: str, arr, rows: np.ndarray, group):
    """A block of an id column as text stripped of surrounding whitespace; an empty (or null)
    value is an error naming its place."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
    empty = pc.fill_null(pc.equal(pc.utf8_length(text), 0), True)
    if pc.any(empty).as_py():
        k = int(np.flatnonzero(np.asarray(empty, bool))[0])
        raise DataError(f"{source.where(int(rows[k]), group)}, column {source.fields[role]} "
                        f"({role}): empty {role} id (every row needs one)") from None
    return text


def _int_ids(source: _Source, role: str, arr, rows: np.ndarray, group) -> np.ndarray:
    """A block of an id column as int64 (:func:`_ints`, its fast paths first); raises
    :class:`_NotIntegers` at a value that is not an integer, a DataError at an empty one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_integer(arr.type) and not arr.null_count:
        return _ints(source, role, arr, rows, group)
    if not pa.types.is_integer(arr.type):
        try:  # clean text: today's fast path
            return pc.cast(arr, pa.int64()).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    text = _id_text(source, role, arr, rows, group)
    ok = np.asarray(pc.fill_null(pc.match_substring_regex(text, _INT_RE), False), bool)
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise _NotIntegers(role, text[k].as_py(), source.where(int(rows[k]), group))
    return _ints(source, role, text, rows, group)


def _string_ids(source: _Source, role: str, arr, rows: np.ndarray, group):
    """A block of a string id column: stripped text, each id non-empty, at most
    :data:`MAX_ID_BYTES` UTF-8 bytes and free of control characters (else a DataError naming
    the place and the id)."""
    import pyarrow.compute as pc

    text = _id_text(source, role, arr, rows, group)
    column = source.fields[role]
    too_long = np.asarray(pc.greater(pc.binary_length(text), MAX_ID_BYTES), bool)
    if too_long.any():
        k = int(np.flatnonzero(too_long)[0])
        value = text[k].as_py()
        raise DataError(f"{source.where(int(rows[k]), group)}, column {column} ({role}): id "
                        f"{_short(value)!r} is {len(value.encode())} bytes long; string ids are "
                        f"at most {MAX_ID_BYTES} UTF-8 bytes") from None
    control = np.asarray(pc.match_substring_regex(text, _CONTROL_RE), bool)
    if control.any():
        k = int(np.flatnonzero(control)[0])
        value = text[k].as_py()
        char = next(c for c in value if re.match(r"[\x00-\x1f\x7f-\x9f]", c))
        raise DataError(f"{source.where(int(rows[k]), group)}, column {column} ({role}): id "
                        f"{_short(value)!r} holds the control character {char!r}; ids may not "
                        "(the model's vocabulary is a text file, one id per line)") from None
    return text


@dataclasses.dataclass
class _Coded:
    """A block of string ids: indices into the distinct values of block ``block`` of a
    :class:`_Keys` (row-aligned, like the int64 blocks of an integer id column)."""

    block: int
    local: np.ndarray

    def __getitem__(self, rows) -> "_Coded":
        return _Coded(self.block, self.local[rows])

    def __len__(self) -> int:
        return len(self.local)


class _Keys:
    """The string ids of a column: each block dictionary-encoded as it is read (a hash table,
    no sort); :meth:`finish` sorts the distinct ids once and gives every id its rank."""

    def __init__(self):
        self.dicts: list = []
        self.maps: list[np.ndarray] = []
        self.keys = None

    def add(self, text) -> _Coded:
        import pyarrow.compute as pc

        enc = pc.dictionary_encode(text)
        self.dicts.append(enc.dictionary)
        return _Coded(len(self.dicts) - 1,
                      enc.indices.to_numpy(zero_copy_only=False).astype(np.int64))

    def finish(self):
        """Returns the distinct ids in ascending (code point) order, a pyarrow string array."""
        import pyarrow as pa
        import pyarrow.compute as pc

        enc = pc.dictionary_encode(pa.concat_arrays(self.dicts) if self.dicts
                                   else pa.array([], pa.string()))
        order = pc.array_sort_indices(enc.dictionary).to_numpy()
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        glob = rank[enc.indices.to_numpy(zero_copy_only=False)]
        ends = np.cumsum([len(d) for d in self.dicts])
        self.maps = np.split(glob, ends[:-1]) if len(ends) else []
        self.keys = enc.dictionary.take(pa.array(order))
        return self.keys

    def codes(self, blocks: list[_Coded]) -> np.ndarray:
        """int64 rank of every id of ``blocks`` (after :meth:`finish`)."""
        return np.concatenate([self.maps[b.block][b.local] for b in blocks]) if blocks \
            else np.zeros(0, np.int64)


def _ids(source: _Source, spec: TableSpec, role: str, arr, rows, group, string_roles: set,
         keys: "_Keys", first: bool):
    """One block of the user or item column: int64 ids, or a :class:`_Coded` block of string
    ids once the column is known to hold strings (``string_roles``). A non-integer value in
    the column's first block makes it a string column at once; in a later block it raises
    :class:`_NotIntegers` (the file is read again)."""
    if role in spec.integer_roles:
        return _ints(source, role, arr, rows, group)
    if role not in string_roles:
        try:
            return _int_ids(source, role, arr, rows, group)
        except _NotIntegers:
            if not first:
                raise
            string_roles.add(role)
    return keys.add(_string_ids(source, role, arr, rows, group))


def _numbers(source: _Source, role: str, arr, rows: np.ndarray, group) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return arr.to_numpy(zero_copy_only=False).astype(np.float64)
    text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
    try:
        out = pc.cast(text, pa.float64()).to_numpy()
    except pa.ArrowInvalid:
        ok = [_is_float(v) for v in text.to_pylist()]
        _fail(source, role, text, ok, rows, group, "a number")
    _finite(source, role, text, out, rows, group)
    return out


def _finite(source, role, values, out: np.ndarray, rows: np.ndarray, group) -> None:
    if not np.isfinite(out).all():
        _fail(source, role, values, np.isfinite(out), rows, group, "a finite number")


def _is_float(v) -> bool:
    try:
        return np.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _times(source: _Source, arr, rows: np.ndarray, group, kind: str = "any") -> np.ndarray:
    """int64 (integers, or ISO 8601 strings as seconds since the epoch) or float64;
    ``kind="int"``: integers only."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "int":
        return _ints(source, "time", arr, rows, group)
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        return pc.cast(arr.cast(pa.timestamp("s")), pa.int64()).to_numpy()
    if pa.types.is_integer(arr.type):
        return arr.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_floating(arr.type):
        return arr.to_numpy().astype(np.float64, copy=False)
    text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
    try:
        return pc.cast(text, pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        pass
    try:
        out = pc.cast(text, pa.float64()).to_numpy()
        _finite(source, "time", text, out, rows, group)
        return out
    except pa.ArrowInvalid:
        pass
    try:
        return pc.cast(pc.cast(text, pa.timestamp("s")), pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        ok = []
        for v in text.to_pylist():
            try:
                pc.cast(pa.array([v]), pa.timestamp("s"))
                ok.append(True)
            except pa.ArrowInvalid:
                ok.append(_is_float(v))
        _fail(source, "time", text, ok, rows, group,
              "a number or an ISO 8601 time such as 2017-11-25T10:00:00")


class _Labels:
    """Category labels -> provisional codes (first appearance), renumbered in sorted order."""

    def __init__(self):
        self.codes: dict[str, int] = {}

    def encode(self, arr) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        if pa.types.is_integer(arr.type) and not arr.null_count:  # category ids as they are
            enc = pc.dictionary_encode(arr)  # a hash table: O(n), no sort
            lut = np.array([self.codes.setdefault(str(int(u)), len(self.codes))
                            for u in enc.dictionary.to_numpy()] or [0], np.int64)
            return lut[enc.indices.to_numpy(zero_copy_only=False)]
        enc = pc.dictionary_encode(pc.utf8_trim_whitespace(arr.cast(pa.string())))
        lut = np.array([self.codes.setdefault(s or NO_CATEGORY_NAME, len(self.codes))
                        for s in enc.dictionary.to_pylist()] or [0], np.int64)
        return lut[enc.indices.to_numpy(zero_copy_only=False)]

    def finish(self) -> tuple[np.ndarray, dict[int, str] | None]:
        """``(provisional code -> raw id, {raw id: name})``: labels that are all integers keep
        their value as the raw id (and have no names), others are numbered 1..C in sorted
        order."""
        if all(re.fullmatch(r"[+-]?[0-9]{1,18}", name) for name in self.codes):
            raw, names = {name: int(name) for name in self.codes}, None
        else:
            names = {i + 1: name for i, name in enumerate(sorted(self.codes))}
            raw = {name: i for i, name in names.items()}
        remap = np.zeros(max(len(self.codes), 1), np.int64)
        for name, code in self.codes.items():
            remap[code] = raw[name]
        return remap, names


def _category_pairs(arr, sep: str, rule: str, labels: _Labels):
    """Per row: its first label code (``first``), or (row index, code) of every value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if sep and not pa.types.is_integer(arr.type):
        text = arr.cast(pa.string())
        lists = pc.split_pattern(text, sep)
        if rule == "first":
            return labels.encode(pc.list_element(lists, 0)), None
        flat = pc.list_flatten(lists)
        return labels.encode(flat), pc.list_parent_indices(lists).to_numpy()
    codes = labels.encode(arr)
    return codes, (None if rule == "first" else np.arange(len(codes)))


def _most_frequent(items: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct item: the code given most often; ties -> more frequent overall, then the
    smaller code (codes are in sorted name order)."""
    overall = np.bincount(codes)
    pairs, counts = np.unique(np.stack([items, codes], axis=1), axis=0, return_counts=True)
    # Sort by item, then count desc, overall frequency desc, code asc; keep each item's first.
    order = np.lexsort((pairs[:, 1], -overall[pairs[:, 1]], -counts, pairs[:, 0]))
    pairs = pairs[order]
    first = np.concatenate([[True], pairs[1:, 0] != pairs[:-1, 0]])
    return pairs[first, 0], pairs[first, 1]


# ---------------------------------------------------------------------------------- reader
@dataclasses.dataclass
class _ItemTable:
    """An item table's rows (one per category value): its item ids as integers (None with the
    error that kept them from being integers) and as stripped text (None with its error, or
    when only integers are accepted), and each row's category code."""

    ints: np.ndarray | None
    int_error: DataError | None
    text: Any
    text_error: DataError | None
    codes: np.ndarray

    def integer_ids(self) -> np.ndarray:
        if self.ints is None:
            raise self.int_error
        return self.ints

    def string_ids(self, keys) -> np.ndarray:
        """Each row's rank in ``keys`` (the log's sorted string item ids); an item the log does
        not have gets a negative code of its own (it still counts in the category ties)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.text is None:
            raise self.text_error
        pos = pc.fill_null(pc.index_in(self.text, value_set=keys), -1).to_numpy()
        own = pc.dictionary_encode(self.text).indices.to_numpy(zero_copy_only=False)
        return np.where(pos >= 0, pos, -1 - own.astype(np.int64)).astype(np.int64)


def _read_item_table(path: Path, spec: TableSpec, labels: _Labels) -> _ItemTable:
    import pyarrow as pa

    mapping = ColumnMapping.parse(spec.item_columns or "", arg("item_columns"),
                                  required=("item", "category"))
    extra = sorted(set(mapping.columns) - {"item", "category"})
    if extra:
        raise DataError(f"{arg('item_columns')} {spec.item_columns!r}: only item and category are "
                        f"read from the item file, not {', '.join(extra)}")
    src = _Source(path, mapping, dataclasses.replace(spec, file_format=None,
                                                     delimiter=spec.item_delimiter, header=None,
                                                     names=None), arg("item_columns"))
    integer_only = "item" in spec.integer_roles
    items, texts, codes = [], [], []
    int_error = text_error = None
    for cols, at, group in src.blocks():
        c, parent = _category_pairs(cols["category"], spec.category_sep, spec.category_rule,
                                    labels)
        codes.append(c)
        if integer_only:  # the presets: integer ids, a bad one fails at once
            ids = _ints(src, "item", cols["item"], at, group)
            items.append(ids if parent is None else ids[parent])
            continue
        # Whether the log's item ids are integers or strings is known only once it is read:
        # keep both readings of this (small) table, and the first error of each.
        if int_error is None:
            try:
                ids = _ints(src, "item", cols["item"], at, group)
                items.append(ids if parent is None else ids[parent])
            except DataError as e:
                int_error = e
        if text_error is None:
            try:
                text = _string_ids(src, "item", cols["item"], at, group)
                texts.append(text if parent is None else text.take(pa.array(parent)))
            except DataError as e:
                text_error = e
    if not codes:
        raise DataError(f"{path}: no item rows")
    return _ItemTable(
        ints=None if int_error else np.concatenate(items), int_error=int_error,
        text=None if integer_only or text_error else pa.concat_arrays(texts),
        text_error=text_error, codes=np.concatenate(codes))


def read_table(path: str | Path, spec: TableSpec, item_file: str | Path | None = None,
               progress: Callable[[int], Any] | None = None):
    """Reads a ``table`` log; returns a :class:`~nann_tf.data.readers.BehaviorLog`.

    ``progress``, if given, is called with the number of rows of each block as it is read.

    Raises:
      DataError: see the module docstring.
    """
    path = Path(path)
    if spec.category_rule not in CATEGORY_RULES:
        raise DataError(f"{arg('category_rule')} {spec.category_rule!r}: expected one of "
                        f"{', '.join(CATEGORY_RULES)}")
    mapping = ColumnMapping.parse(spec.columns)
    if item_file is not None and "category" in mapping.columns:
        raise DataError(f"{arg('columns')} maps category and {arg('item_file')} {item_file} "
                        "gives categories too: take them from one of the two")
    if item_file is None and spec.item_columns:
        raise DataError(f"{arg('item_columns')} needs {arg('item_file')} (the item table to "
                        "read them from)")
    src = _Source(path, mapping, spec, arg("columns"))
    string_roles: set[str] = set()
    while True:
        try:
            return _read(path, src, spec, item_file, progress, string_roles)
        except _NotIntegers as e:  # strings found after blocks read as integers: again
            log.info("%s, column %s (%s): %r is not an integer, so the %s ids are strings; "
                     "reading %s again", e.where, src.fields[e.role], e.role, e.value, e.role,
                     path)
            string_roles.add(e.role)


def _read(path: Path, src: _Source, spec: TableSpec, item_file, progress, string_roles: set):
    """One pass of :func:`read_table` (``string_roles``: the id columns known to hold strings;
    a column found to hold them in its first block is added at once)."""
    from nann_tf.data.readers import BehaviorLog

    import pyarrow as pa

    labels = _Labels()
    cols: dict[str, list] = {r: [] for r in ("user", "item", "time", "rating", "category")}
    keys = {r: _Keys() for r in _ID_ROLES}
    pair_items, pair_codes = [], []
    item_table = None
    item_src = ""
    if item_file is not None:  # small: read first, so that a bad item file fails at once
        item_table = _read_item_table(Path(item_file), spec, labels)
        item_src = str(Path(item_file).resolve())
    n_rows = 0
    for block, at, group in src.blocks():
        n_rows += len(block["user"])
        if progress is not None:
            progress(len(block["user"]))
        user, item = (_ids(src, spec, r, block[r], at, group, string_roles, keys[r],
                           first=not cols[r]) for r in _ID_ROLES)
        cols["user"].append(user)
        cols["item"].append(item)
        if "time" in block:
            cols["time"].append(_times(src, block["time"], at, group,
                                       "int" if "time" in spec.integer_roles else "any"))
        if "rating" in block:
            cols["rating"].append(_numbers(src, "rating", block["rating"], at, group))
        if "category" in block:
            arr = block["category"]
            if "category" in spec.integer_roles:
                arr = pa.array(_ints(src, "category", arr, at, group))
            codes, parent = _category_pairs(arr, spec.category_sep, spec.category_rule, labels)
            if parent is None:
                cols["category"].append(codes)
            else:
                pair_items.append(item[parent])
                pair_codes.append(codes)
    if n_rows == 0:
        raise DataError(f"{path}: no rows{' after the header' if src.header else ''}")
    id_keys = {}
    for r in _ID_ROLES:  # string ids: each row's rank among the column's distinct ids
        if r in string_roles:
            id_keys[r] = keys[r].finish()
            cols[r] = [keys[r].codes(cols[r])]
    if "item" in string_roles and pair_items:
        pair_items = [keys["item"].codes(pair_items)]
    if item_table is not None:
        pair_codes = [item_table.codes]
        pair_items = [item_table.string_ids(id_keys["item"]) if "item" in string_roles
                      else item_table.integer_ids()]
    user, item = np.concatenate(cols["user"]), np.concatenate(cols["item"])
    if cols["time"]:
        kinds = {c.dtype.kind for c in cols["time"]}
        ts = np.concatenate([c.astype(np.float64) if "f" in kinds else c for c in cols["time"]])
    else:
        ts = np.arange(n_rows, dtype=np.int64)  # file order
    rating = np.concatenate(cols["rating"]) if cols["rating"] else None
    category = item_category = names = None
    if labels.codes:
        remap, names = labels.finish()
        if cols["category"]:
            category = remap[np.concatenate(cols["category"])]
        if pair_items:
            if spec.category_rule == "first":
                tab_items = np.concatenate(pair_items)
                first = np.sort(np.unique(tab_items, return_index=True)[1])
                item_category = (tab_items[first], remap[np.concatenate(pair_codes)][first])
            else:
                it, code = _most_frequent(np.concatenate(pair_items),
                                          remap[np.concatenate(pair_codes)])
                item_category = (it, code)
    return BehaviorLog(user=user, item=item, timestamp=ts, category=category, rating=rating,
                       rows=n_rows, source=str(path.resolve()), item_source=item_src,
                       input_format="table", item_category=item_category,
                       category_names=names, user_keys=id_keys.get("user"),
                       item_keys=id_keys.get("item"))
