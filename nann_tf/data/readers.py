"""Readers for behaviour logs: UserBehavior CSV, MovieLens (RecBole atomic files), plain CSV.

All readers return a :class:`BehaviorLog` of row-aligned NumPy columns in file order.

Parsing is vectorised. A file is read in blocks of whole lines; per block, the separator
positions are located with NumPy and checked (every line must have exactly the expected number
of non-empty fields), the columns not parsed as numbers are overwritten with ``0``, and the
block is converted in one ``np.fromstring`` call per dtype. Only when that fast path cannot
vouch for a block (blank lines, spaces, CRLF leftovers, very long fields, or an actual error)
is the block re-read line by line in Python: that slow path accepts exactly the same inputs and
is the one that reports the file, line and column of a bad value.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from pathlib import Path

import numpy as np

from nann_tf.data.dataset import DataError

__all__ = [
    "BehaviorLog",
    "INPUT_FORMATS",
    "USERBEHAVIOR_COLUMNS",
    "read_log",
    "read_userbehavior",
    "read_movielens",
    "read_movielens_items",
    "read_csv_log",
    "find_movielens_files",
]

log = logging.getLogger(__name__)

INPUT_FORMATS = ("userbehavior", "movielens", "csv", "table")
USERBEHAVIOR_COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
CSV_COLUMNS = ("user", "item", "rating", "timestamp")
NO_CATEGORY_NAME = "(none)"

_INT_RE = re.compile(rb"[+-]?[0-9]+")
_FLOAT_RE = re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_WHITESPACE = (b" ", b"\t", b"\r", b"\x0b", b"\x0c")
_MAX_FAST_FIELD = 18  # longest field the fast path takes: 18 chars never overflow int64
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclasses.dataclass
class BehaviorLog:
    """Row-aligned columns of a behaviour log, in file order.

    Attributes:
      user: int64 raw user ids.
      item: int64 raw item ids.
      timestamp: int64 or float64 timestamps.
      category: int64 raw category ids, or None when the input has no per-row category.
      rating: float64 ratings, or None.
      rows: data rows read (header and blank lines not counted).
      source: the input file (absolute path), for meta.json.
      item_source: the item table file (absolute path) where one was read, else "".
      input_format: one of :data:`INPUT_FORMATS`.
      item_category: for inputs with a separate item table (MovieLens): (raw item ids, raw
        category ids) of that table, else None.
      category_names: raw category id -> name where the input has names, else None.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    category: np.ndarray | None = None
    rating: np.ndarray | None = None
    rows: int = 0
    source: str = ""
    item_source: str = ""
    input_format: str = ""
    item_category: tuple[np.ndarray, np.ndarray] | None = None
    category_names: dict[int, str] | None = None


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "int", "float" or "skip"


def _decode(tok: bytes, limit: int = 40) -> str:
    s = tok.decode("utf-8", errors="replace")
    return s if len(s) <= limit else s[:limit] + "..."


def _parse_block_slow(data: bytes, delim: bytes, cols: list[Column], first_line: int,
                      src: str) -> tuple[dict[str, np.ndarray], int]:
    """Line-by-line parse of a block: the reference for what is valid, and the error reporter."""
    names = ",".join(c.name for c in cols)
    out: dict[str, list] = {c.name: [] for c in cols if c.kind != "skip"}
    rows = 0
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for i, line in enumerate(lines):
        lineno = first_line + i
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            continue
        fields = line.split(delim)
        if len(fields) != len(cols):
            raise DataError(f"{src} line {lineno}: expected {len(cols)} columns ({names}), "
                            f"got {len(fields)}")
        for j, c in enumerate(cols):
            if c.kind == "skip":
                continue
            tok = fields[j].strip()
            where = f"{src} line {lineno} column {j + 1} ({c.name})"
            if c.kind == "int":
                if not _INT_RE.fullmatch(tok):
                    raise DataError(f"{where}: expected an integer, got {_decode(tok)!r}")
                v = int(tok)
                if not _INT64_MIN <= v <= _INT64_MAX:
                    raise DataError(f"{where}: integer {_decode(tok)} does not fit in int64")
            else:
                v = float(tok) if _FLOAT_RE.fullmatch(tok) else math.nan
                if not math.isfinite(v):
                    raise DataError(f"{where}: expected a number, got {_decode(tok)!r}")
            out[c.name].append(v)
        rows += 1
    return ({c.name: np.array(out[c.name], dtype=np.int64 if c.kind == "int" else np.float64)
             for c in cols if c.kind != "skip"}, rows)


def _parse_block_fast(data: bytes, delim: bytes, cols: list[Column]
                      ) -> dict[str, np.ndarray] | None:
    """Vectorised parse of a block of whole lines, or None where it cannot vouch for it."""
    ncol = len(cols)
    buf = np.frombuffer(data, dtype=np.uint8)
    d, nl = delim[0], ord("\n")
    seppos = np.flatnonzero((buf == d) | (buf == nl))
    if len(seppos) == 0 or len(seppos) % ncol:
        return None
    kinds = buf[seppos].reshape(-1, ncol)
    if (kinds[:, :-1] != d).any() or (kinds[:, -1] != nl).any():
        return None
    lens = np.diff(seppos, prepend=-1).reshape(-1, ncol) - 1
    if lens.min() < 1:  # an empty field or a blank line
        return None
    n = len(lens)
    for j, c in enumerate(cols):
        if c.kind != "skip" and lens[:, j].max() > _MAX_FAST_FIELD:
            return None

    out: dict[str, np.ndarray] = {}
    for kind, dtype in (("int", np.int64), ("float", np.float64)):
        wanted = [j for j, c in enumerate(cols) if c.kind == kind]
        if not wanted:
            continue
        arr = np.frombuffer(bytearray(data), dtype=np.uint8)
        # Fields of the other columns become "0...0" (parsed as numbers, then dropped): the
        # block is exactly the sequence of (field, separator) segments, so a per-byte mask is
        # one np.repeat of a per-field flag.
        other = np.array([c.kind != kind for c in cols])
        if other.any():
            arr[np.repeat(np.tile(other, n), (lens + 1).ravel())] = ord("0")
        arr[seppos] = ord(",")
        text = arr.tobytes()
        if any(ws in text for ws in _WHITESPACE):
            return None
        try:
            values = np.fromstring(text, dtype=dtype, sep=",")
        except ValueError:
            return None
        if len(values) != n * ncol:
            return None
        values = values.reshape(n, ncol)
        if kind == "float" and not np.isfinite(values[:, wanted]).all():
            return None
        for j in wanted:
            out[cols[j].name] = values[:, j].copy()
    return out


def read_delimited(path: Path, cols: list[Column], delim: bytes, skip_lines: int = 0,
                    chunk_bytes: int = 32 << 20) -> tuple[dict[str, np.ndarray], int]:
    """Parses a delimited file (after ``skip_lines`` header lines) into columns."""
    src = str(path)
    parts: dict[str, list[np.ndarray]] = {c.name: [] for c in cols if c.kind != "skip"}
    rows = 0
    t0 = last_report = time.perf_counter()
    with open(path, "rb") as f:
        for _ in range(skip_lines):
            f.readline()
        next_line = skip_lines + 1
        carry = b""
        while True:
            block = f.read(chunk_bytes)
            if block:
                data = carry + block
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                carry, data = data[cut + 1:], data[:cut + 1]
            else:
                if not carry:
                    break
                data, carry = carry + b"\n", b""
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n")
            parsed = _parse_block_fast(data, delim, cols)
            if parsed is None:
                parsed, n = _parse_block_slow(data, delim, cols, next_line, src)
            else:
                n = len(next(iter(parsed.values())))
            for name, values in parsed.items():
                parts[name].append(values)
            rows += n
            next_line += data.count(b"\n")
            if not block:
                break
            now = time.perf_counter()
            if now - last_report >= 5.0:
                last_report = now
                log.info("%s: %d rows read (%.0f rows/s)", src, rows, rows / (now - t0))
    if rows == 0:
        raise DataError(f"{src}: empty file (no data rows)")
    out = {}
    for c in cols:
        if c.kind != "skip":
            dtype = np.int64 if c.kind == "int" else np.float64
            out[c.name] = np.concatenate(parts[c.name]) if parts[c.name] else \
                np.zeros(0, dtype)
    return out, rows


def _check_input_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    if not path.is_file():
        raise DataError(f"{path}: {what} is not a file")
    return path


def read_userbehavior(path: str | Path) -> BehaviorLog:
    """Reads a UserBehavior CSV: ``user_id,item_id,category_id,behavior_type,timestamp``.

    No header; ids and timestamps are integers; the behaviour type is not used.

    Args:
      path: the CSV file.

    Returns:
      The log (``category`` set, no ``rating``).

    Raises:
      DataError: missing/empty file, a wrong number of columns, or a non-integer id or
        timestamp (the message names the file, line and column).
    """
    path = _check_input_file(path, "UserBehavior log")
    cols = [Column("user_id", "int"), Column("item_id", "int"),
            Column("category_id", "int"), Column("behavior_type", "skip"),
            Column("timestamp", "int")]
    data, rows = read_delimited(path, cols, b",")
    return BehaviorLog(user=data["user_id"], item=data["item_id"],
                       timestamp=data["timestamp"], category=data["category_id"], rows=rows,
                       source=str(path.resolve()), input_format="userbehavior")


def _first_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.readline().rstrip(b"\r\n")


def read_csv_log(path: str | Path) -> BehaviorLog:
    """Reads a plain ``user,item,rating,timestamp`` CSV (header line optional).

    The first line is a header when one of its fields is not a number. The log has no category
    (every item gets the same one).

    Args:
      path: the CSV file.

    Returns:
      The log (``rating`` set, no ``category``).

    Raises:
      DataError: as :func:`read_userbehavior`.
    """
    path = _check_input_file(path, "CSV log")
    # A header has no number in it; a first line with a bad value is data (and an error).
    first = [t.strip() for t in _first_line(path).split(b",")]
    header = not any(_FLOAT_RE.fullmatch(t) for t in first)
    cols = [Column("user", "int"), Column("item", "int"), Column("rating", "float"),
            Column("timestamp", "float")]
    data, rows = read_delimited(path, cols, b",", skip_lines=int(header))
    return BehaviorLog(user=data["user"], item=data["item"], timestamp=data["timestamp"],
                       rating=data["rating"], rows=rows, source=str(path.resolve()),
                       input_format="csv")


def find_movielens_files(directory: str | Path) -> tuple[Path, Path | None]:
    """The ``*.inter`` file (exactly one) and the ``*.item`` file (at most one) of a directory.

    Raises:
      DataError: no or several ``.inter`` files, or several ``.item`` files.
    """
    directory = Path(directory)
    inter = sorted(directory.glob("*.inter"))
    items = sorted(directory.glob("*.item"))
    if len(inter) != 1:
        raise DataError(f"{directory}: expected exactly one *.inter file, found "
                        f"{len(inter)}{': ' + ', '.join(p.name for p in inter) if inter else ''}")
    if len(items) > 1:
        raise DataError(f"{directory}: several *.item files ({', '.join(p.name for p in items)}); "
                        f"name one with --item-file")
    return inter[0], (items[0] if items else None)


def _header_names(path: Path) -> list[str]:
    line = _first_line(path)
    if not line.strip():
        raise DataError(f"{path}: empty file (expected a header line such as "
                        f"'user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float')")
    return [t.decode("utf-8", errors="replace").strip().split(":")[0]
            for t in line.split(b"\t")]


def read_movielens_items(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Reads a RecBole ``.item`` file: the category of an item is the first genre of ``class``.

    Args:
      path: tab-separated file with a header naming ``item_id`` and ``class`` (or ``genre``).

    Returns:
      ``(raw_item_id int64, raw_category_id int64, names)``: the category ids number the
      distinct first genres in sorted order from 1 (``"(none)"`` for an item without one);
      ``names`` maps them back.

    Raises:
      DataError: missing header columns, a wrong number of columns, or a non-integer item id
        (naming the file, line and column).
    """
    path = _check_input_file(path, "MovieLens item file")
    names = _header_names(path)
    src = str(path)
    if "item_id" not in names:
        raise DataError(f"{src} line 1: header has no item_id column (got {', '.join(names)})")
    genre_col = next((c for c in ("class", "genre", "genres") if c in names), None)
    if genre_col is None:
        raise DataError(f"{src} line 1: header has no class/genre column "
                        f"(got {', '.join(names)})")
    ci, gi = names.index("item_id"), names.index(genre_col)
    # Item tables are small (one row per item): NumPy string ops, a regex check of the ids.
    lines = np.array(path.read_bytes().replace(b"\r\n", b"\n").split(b"\n")[1:] or [b""])
    keep = np.strings.strip(lines) != b""
    arr, lineno = lines[keep], np.arange(2, len(lines) + 2)[keep]
    if len(arr) == 0:
        raise DataError(f"{src}: no item rows after the header")
    ntabs = np.strings.count(arr, b"\t")
    bad = np.flatnonzero(ntabs != len(names) - 1)
    if len(bad):
        raise DataError(f"{src} line {lineno[bad[0]]}: expected {len(names)} columns "
                        f"({','.join(names)}), got {ntabs[bad[0]] + 1}")
    fields, rest = [], arr
    for _ in range(max(ci, gi) + 1):
        head, _, rest = np.strings.partition(rest, b"\t")
        fields.append(head)
    ids = np.strings.strip(fields[ci])
    ok = np.array([bool(_INT_RE.fullmatch(t)) for t in ids.tolist()], dtype=bool)
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise DataError(f"{src} line {lineno[k]} column {ci + 1} (item_id): expected an "
                        f"integer, got {_decode(ids[k])!r}")
    raw_item = ids.astype(np.int64)
    genre = np.strings.partition(np.strings.strip(fields[gi]), b" ")[0]
    genre = np.where(genre == b"", NO_CATEGORY_NAME.encode(), genre)
    uniq, inv = np.unique(genre, return_inverse=True)
    cat_names = {i + 1: g.decode("utf-8", errors="replace") for i, g in enumerate(uniq.tolist())}
    return raw_item, (inv + 1).astype(np.int64), cat_names


def read_movielens(inter_path: str | Path, item_path: str | Path | None = None) -> BehaviorLog:
    """Reads a RecBole ``.inter`` file (and optionally its ``.item`` file for categories).

    Args:
      inter_path: tab-separated, header naming ``user_id``, ``item_id``, ``timestamp`` and
        optionally ``rating`` (``name:type``); other columns are ignored. A directory is
        searched for ``*.inter`` / ``*.item``.
      item_path: the ``.item`` file; None: the one beside a directory input, if any.

    Returns:
      The log (``rating`` if the file has one; ``item_category`` from the item file).

    Raises:
      DataError: missing files or header columns, or bad values (file, line and column).
    """
    inter_path = Path(inter_path)
    if inter_path.is_dir():
        inter_path, found_item = find_movielens_files(inter_path)
        item_path = item_path if item_path is not None else found_item
    inter_path = _check_input_file(inter_path, "MovieLens .inter file")
    names = _header_names(inter_path)
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in names]
    if missing:
        raise DataError(f"{inter_path} line 1: header has no {', '.join(missing)} column "
                        f"(got {', '.join(names)})")
    kinds = {"user_id": "int", "item_id": "int", "rating": "float", "timestamp": "float"}
    cols = [Column(nm, kinds.get(nm, "skip")) for nm in names]
    data, rows = read_delimited(inter_path, cols, b"\t", skip_lines=1)
    item_category, cat_names, item_src = None, None, ""
    if item_path is not None:
        raw_item, raw_cat, cat_names = read_movielens_items(item_path)
        item_category = (raw_item, raw_cat)
        item_src = str(Path(item_path).resolve())
    else:
        log.warning("%s: no .item file; every item gets one category", inter_path)
    return BehaviorLog(user=data["user_id"], item=data["item_id"],
                       timestamp=data["timestamp"], rating=data.get("rating"), rows=rows,
                       source=str(inter_path.resolve()), item_source=item_src,
                       input_format="movielens", item_category=item_category,
                       category_names=cat_names)


def read_log(input_format: str, path: str | Path,
             item_file: str | Path | None = None, table=None) -> BehaviorLog:
    """Reads a log in one of :data:`INPUT_FORMATS`.

    Args:
      table: a :class:`nann_tf.data.table.TableSpec` (the column mapping), for ``table``.

    Raises:
      DataError: unknown format, or any error of the format's reader.
    """
    if input_format not in INPUT_FORMATS:
        raise DataError(f"unknown input format {input_format!r} (expected one of "
                        f"{', '.join(INPUT_FORMATS)})")
    if item_file is not None and input_format not in ("movielens", "table"):
        raise DataError(f"an item file is only read with the movielens and table formats, not "
                        f"{input_format!r}")
    if (table is None) != (input_format != "table"):
        raise DataError("the table format needs a column mapping (--columns), and only it "
                        "takes one")
    t0 = time.perf_counter()
    if input_format == "table":
        from nann_tf.data.table import read_table

        out = read_table(path, table, item_file)
    elif input_format == "userbehavior":
        out = read_userbehavior(path)
    elif input_format == "movielens":
        out = read_movielens(path, item_file)
    else:
        out = read_csv_log(path)
    dt = time.perf_counter() - t0
    log.info("read %d rows from %s in %.2fs (%.0f rows/s)", out.rows, path, dt,
             out.rows / max(dt, 1e-9))
    return out
