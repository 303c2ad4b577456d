"""Atomic writes: every artefact nann-tf saves appears whole or not at all.

* :func:`atomic_path` -- the one temp-file + rename pattern: yields a temporary path beside the
  target for any writer (``np.savez``, ``save_weights``, ``savefig``, a TFRecord writer), then
  renames it into place; on an error the temporary file is removed and the target is untouched.
* :func:`write_text_atomic` / :func:`write_json_atomic` -- the common cases on top of it.
* :func:`replace_dir` -- the same for a finished directory (datasets, indexes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic", "replace_dir"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None,
                mode: int | None = None) -> Iterator[Path]:
    """Yields a temporary path in ``path``'s directory; renames it to ``path`` on success.

    Args:
      path: the final file (its directory is created).
      suffix: the temporary file's suffix (default: ``path``'s own, for writers that pick the
        format from the name, such as Keras' ``.weights.h5`` or matplotlib's ``.png``).
      mode: permission bits of the final file (default: 0o666 minus the umask, as ``open``
        would give; ``mkstemp`` alone makes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> Path:
    """Writes ``obj`` as indented JSON (sorted keys unless told otherwise) atomically."""
    dump_kwargs.setdefault("indent", 2)
    dump_kwargs.setdefault("sort_keys", True)
    return write_text_atomic(path, json.dumps(obj, **dump_kwargs))


def replace_dir(tmp: Path, target: Path) -> None:
    """Renames the finished directory ``tmp`` to ``target``.

    An absent or empty ``target`` is replaced in one rename. A non-empty one is first moved
    aside, then deleted once ``tmp`` is in place; if that rename fails it is put back, so
    ``target`` always holds a complete artefact, old or new.
    """
    tmp, target = Path(tmp), Path(target)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
