"""Atomic replacement of a directory artefact (datasets, indexes)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

__all__ = ["replace_dir"]


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
