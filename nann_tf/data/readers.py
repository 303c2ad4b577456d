"""The behaviour-log formats: presets of the one table reader (:mod:`nann_tf.data.table`).

``userbehavior``, ``movielens`` and ``csv`` are fixed layouts; each is a
:class:`~nann_tf.data.table.TableSpec` (column mapping, delimiter, header rule) given to
:func:`~nann_tf.data.table.read_table`, so every format is parsed, checked and reported by the same
code (errors name the file, line and column). ``table`` is that reader with the user's mapping.
All readers return a :class:`BehaviorLog` of row-aligned NumPy columns in file order.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from nann_tf.data.dataset import DataError
from nann_tf.errors import arg
from nann_tf.data.table import TableSpec, read_table

__all__ = [
    "BehaviorLog",
    "INPUT_FORMATS",
    "USERBEHAVIOR_COLUMNS",
    "read_log",
    "read_userbehavior",
    "read_movielens",
    "read_csv_log",
    "find_movielens_files",
]

log = logging.getLogger(__name__)

INPUT_FORMATS = ("userbehavior", "movielens", "csv", "table")
USERBEHAVIOR_COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
CSV_COLUMNS = ("user", "item", "rating", "timestamp")


@dataclasses.dataclass
class BehaviorLog:
    """Row-aligned columns of a behaviour log, in file order.

    Attributes:
      user: int64 raw user ids (string user ids: each row's index into ``user_keys``).
      item: int64 raw item ids (string item ids: each row's index into ``item_keys``).
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
      user_keys / item_keys: for a column of string ids (the ``table`` format), its distinct
        ids in ascending order (a pyarrow string array), else None; ``item_category``'s items
        are then indices into ``item_keys`` too (negative: not an item of the log).
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
    user_keys: Any = None
    item_keys: Any = None



def _check_input_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    if not path.is_file():
        raise DataError(f"{path}: {what} is not a file")
    return path


def _preset(data: BehaviorLog, input_format: str) -> BehaviorLog:
    return dataclasses.replace(data, input_format=input_format)


def read_userbehavior(path: str | Path, progress=None) -> BehaviorLog:
    """Reads a UserBehavior CSV: ``user_id,item_id,category_id,behavior_type,timestamp``.

    No header; ids, category ids and timestamps are integers; the behaviour type is not used.

    Raises:
      DataError: missing/empty file, a wrong number of columns, or a non-integer id, category or
        timestamp (the message names the file, line and column).
    """
    path = _check_input_file(path, "UserBehavior log")
    spec = TableSpec("user=user_id,item=item_id,category=category_id,time=timestamp",
                     file_format="csv", delimiter=",", header=False,
                     names=USERBEHAVIOR_COLUMNS, quoting=False, category_sep="",
                     integer_roles=("user", "item", "time", "category"))
    return _preset(read_table(path, spec, progress=progress), "userbehavior")


def _first_line(path: Path) -> str:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        return f.readline().rstrip("\r\n")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_csv_log(path: str | Path, progress=None) -> BehaviorLog:
    """Reads a plain ``user,item,rating,timestamp`` CSV (header line optional).

    The first line is a header when none of its fields is a number. The log has no category
    (every item gets the same one).

    Raises:
      DataError: as :func:`read_userbehavior`.
    """
    path = _check_input_file(path, "CSV log")
    # A header has no number in it; a first line with a bad value is data (and an error).
    header = not any(_is_number(t.strip()) for t in _first_line(path).split(","))
    spec = TableSpec("user=1,item=2,rating=3,time=4", file_format="csv", delimiter=",",
                     header=header, names=None if header else CSV_COLUMNS, quoting=False,
                     integer_roles=("user", "item"))
    return _preset(read_table(path, spec, progress=progress), "csv")


def _typed_header(path: Path) -> dict[str, str]:
    """A RecBole header's ``name:type`` fields by name."""
    line = _first_line(path)
    if not line.strip():
        raise DataError(f"{path}: empty file (expected a header line such as "
                        f"'user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float')")
    return {field.strip().split(":")[0]: field.strip() for field in line.split("\t")}


def read_movielens(inter_path: str | Path, item_path: str | Path | None = None,
                   progress=None) -> BehaviorLog:
    """Reads a RecBole ``.inter`` file (and optionally its ``.item`` file for categories).

    Args:
      inter_path: tab-separated, header naming ``user_id``, ``item_id``, ``timestamp`` and
        optionally ``rating`` (``name:type``); other columns are ignored. A directory is
        searched for ``*.inter`` / ``*.item``.
      item_path: the ``.item`` file (header naming ``item_id`` and ``class``, ``genre`` or
        ``genres``; an item's category is its first genre); None: the one beside a directory
        input, if any.

    Raises:
      DataError: missing files or header columns, or bad values (file, line and column).
    """
    inter_path = Path(inter_path)
    if inter_path.is_dir():
        inter_path, found_item = find_movielens_files(inter_path)
        item_path = item_path if item_path is not None else found_item
    inter_path = _check_input_file(inter_path, "MovieLens .inter file")
    names = _typed_header(inter_path)
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in names]
    if missing:
        raise DataError(f"{inter_path} line 1: header has no {', '.join(missing)} column "
                        f"(got {', '.join(names)})")
    mapping = {"user": names["user_id"], "item": names["item_id"], "time": names["timestamp"]}
    if "rating" in names:
        mapping["rating"] = names["rating"]
    item_columns = None
    if item_path is not None:
        item_path = _check_input_file(item_path, "MovieLens item file")
        item_names = _typed_header(item_path)
        genre = next((c for c in ("class", "genre", "genres") if c in item_names), None)
        if "item_id" not in item_names or genre is None:
            raise DataError(f"{item_path} line 1: header has no "
                            f"{'item_id' if 'item_id' not in item_names else 'class/genre'} "
                            f"column (got {', '.join(item_names)})")
        item_columns = f"item={item_names['item_id']},category={item_names[genre]}"
    else:
        log.warning("%s: no .item file; every item gets one category", inter_path)
    spec = TableSpec(",".join(f"{r}={c}" for r, c in mapping.items()), file_format="tsv",
                     delimiter="\t", header=True, quoting=False, item_columns=item_columns,
                     item_delimiter="\t", category_sep=" ", integer_roles=("user", "item"))
    return _preset(read_table(inter_path, spec, item_path, progress=progress), "movielens")


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
                        f"name one with {arg('item_file')}")
    return inter[0], (items[0] if items else None)


def _estimated_rows(path: Path) -> int | None:
    """Rows of a text log estimated from its size and its first lines (None: unknown)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return None
    lines = head.count(b"\n")
    if lines < 2 or path.suffix.lower() in (".parquet", ".pq"):
        return None
    return max(1, int(size / (len(head[:head.rfind(b"\n") + 1]) / lines)))


def _read_progress(path: Path):
    """A :class:`~nann_tf.progress.Progress` of rows read (the total is estimated from the file
    size)."""
    from nann_tf.progress import Progress

    total = _estimated_rows(path) if path.is_file() else None
    return Progress(total, f"prepare: reading {path.name}", "rows")


def _release_arrow_memory() -> None:
    """Returns the Arrow memory pool's cached blocks to the system: the columns are NumPy
    arrays by now, and at 100M rows the pool would keep gigabytes that the build needs."""
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except (ImportError, AttributeError):
        pass


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
        raise DataError(f"the table format needs a column mapping ({arg('columns')}), and only it "
                        "takes one")
    t0 = time.perf_counter()
    with _read_progress(Path(path)) as bar:
        if input_format == "table":
            from nann_tf.data.table import read_table

            out = read_table(path, table, item_file, progress=bar.update)
        elif input_format == "userbehavior":
            out = read_userbehavior(path, progress=bar.update)
        elif input_format == "movielens":
            out = read_movielens(path, item_file, progress=bar.update)
        else:
            out = read_csv_log(path, progress=bar.update)
        bar.total = None if bar.total is None else max(bar.total, bar.count)
    _release_arrow_memory()
    dt = time.perf_counter() - t0
    log.info("read %d rows from %s in %.2fs (%.0f rows/s)", out.rows, path, dt,
             out.rows / max(dt, 1e-9))
    return out
