"""nann-tf's native code: the TensorFlow op library and the NumPy core module.

The op library ``nann_tf/_nann_ops.so`` (sources in ``cc_ops/``) is compiled by setup.py against
the installed TensorFlow; an op library only works with the TensorFlow it was built for, so the
build records ``tf.__version__`` inside the file and :func:`load_library` compares it with the
running TensorFlow *before* loading (loading a mismatched library can crash the process). The
library is loaded once per process, on first use.

Search code should not call these ops directly but go through
:mod:`nann_tf.search.visited`, which validates static shapes and can swap in the pure-TF twin.
A process that loads a SavedModel using these ops must call :func:`load_library` first (TF
Serving instead links the ops into the server binary, see ``cc_ops/BUILD``).

``NANN_TF_OPS_LIBRARY=/path/to/_nann_ops.so`` loads another build of the library (e.g. the
Bazel target ``//cc_ops:_nann_ops.so``).
"""

from __future__ import annotations

import os
import re
import threading
from types import ModuleType

import tensorflow as tf

from nann_tf.errors import UserError

__all__ = [
    "REBUILD_COMMAND",
    "DEVELOP_COMMAND",
    "LIBRARY_ENV",
    "OpLibraryError",
    "library_path",
    "built_tf_version",
    "check_library",
    "load_library",
    "filter_unvisited",
    "gather_unvisited_neighbors",
    "sparse_adam",
    "numpy_core",
]

# Installing compiles the native code: `pip install .` in the source directory builds against the
# TensorFlow pinned by pyproject.toml (build isolation) and installs that same TensorFlow; an
# editable development checkout builds against the environment's own TensorFlow instead.
REBUILD_COMMAND = "pip install ."
DEVELOP_COMMAND = "pip install --no-build-isolation -e ."
LIBRARY_ENV = "NANN_TF_OPS_LIBRARY"
_BUILD_INFO = re.compile(rb"NANN_BUILD_INFO\{tf_version=([^;}]*);\}")

_lock = threading.Lock()
_library: ModuleType | None = None


class OpLibraryError(UserError, ImportError):
    """The op library (or the NumPy core) is missing or was built for another TensorFlow."""


def _rebuild_hint() -> str:
    return (f"reinstall nann-tf with `{REBUILD_COMMAND}` in the nann-tf source directory (it "
            f"compiles against and installs TensorFlow 2.21); in a development checkout run "
            f"`{DEVELOP_COMMAND}` with tensorflow==2.21.* and pybind11 installed")


def library_path() -> str:
    """Returns the op library's path: ``$NANN_TF_OPS_LIBRARY`` or ``nann_tf/_nann_ops.so``."""
    return os.environ.get(LIBRARY_ENV) or os.path.join(os.path.dirname(__file__), "_nann_ops.so")


def built_tf_version(path: str) -> str | None:
    """Returns the TensorFlow version recorded in an op library at build time.

    Args:
        path: the library file.

    Returns:
        The version string, or None when the file carries no build record.
    """
    with open(path, "rb") as f:
        match = _BUILD_INFO.search(f.read())
    return match.group(1).decode("ascii", "replace") if match else None


def check_library(path: str, tf_version: str | None = None) -> None:
    """Checks that ``path`` is an op library built for ``tf_version`` without loading it.

    Args:
        path: the library file.
        tf_version: the TensorFlow it must match; defaults to the running one.

    Raises:
        OpLibraryError: the file is missing, carries no build record, or was built for another
            TensorFlow version. The message says how to rebuild.
    """
    tf_version = tf_version or tf.__version__
    if not os.path.isfile(path):
        raise OpLibraryError(
            f"nann-tf op library not found at {path}: it is compiled when the package is "
            f"installed; {_rebuild_hint()}")
    built = built_tf_version(path)
    if built is None:
        raise OpLibraryError(
            f"{path} is not a nann-tf op library (no build record); {_rebuild_hint()}")
    if built != tf_version:
        raise OpLibraryError(
            f"nann-tf op library {path} was built against TensorFlow {built} but TensorFlow "
            f"{tf_version} is installed; custom ops only work with the TensorFlow they were "
            f"compiled for: {_rebuild_hint()}")


def load_library() -> ModuleType:
    """Loads the op library once per process and returns its generated op module.

    Returns:
        The module returned by ``tf.load_op_library`` (ops ``nann_filter_unvisited`` and
        ``nann_gather_unvisited_neighbors``).

    Raises:
        OpLibraryError: see :func:`check_library`, or TensorFlow refused the library.
    """
    global _library
    with _lock:
        if _library is None:
            path = library_path()
            check_library(path)
            try:
                _library = tf.load_op_library(path)
            except (tf.errors.NotFoundError, tf.errors.AlreadyExistsError, OSError) as error:
                raise OpLibraryError(
                    f"TensorFlow could not load the nann-tf op library {path} ({error}); "
                    f"{_rebuild_hint()}") from error
        return _library


@tf.autograph.experimental.do_not_convert
def filter_unvisited(ids, row_ids, bitmap, name=None):
    """The raw ``NannFilterUnvisited`` op; see :func:`nann_tf.search.visited.filter_unvisited`.

    Returns:
        ``(kept_ids, kept_row_ids, new_bitmap)``.
    """
    return load_library().nann_filter_unvisited(ids, row_ids, bitmap, name=name)


@tf.autograph.experimental.do_not_convert
def gather_unvisited_neighbors(frontier_ids, frontier_row_ids, neighbor_values,
                               neighbor_row_splits, bitmap, name=None):
    """The raw ``NannGatherUnvisitedNeighbors`` op; see
    :func:`nann_tf.search.visited.gather_unvisited_neighbors`.

    Returns:
        ``(kept_ids, kept_row_ids, new_bitmap)``.
    """
    return load_library().nann_gather_unvisited_neighbors(
        frontier_ids, frontier_row_ids, neighbor_values, neighbor_row_splits, bitmap, name=name)


def gather_passing_neighbors(frontier_ids, frontier_row_ids, neighbor_values, neighbor_row_splits,
                             bitmap, item_category, item_tags, label_state, has_include,
                             held_keys, tag_offset, max_candidates, name=None):
    """The raw ``NannGatherPassingNeighbors`` op: a filtered walk's two-hop expansion, fused
    (see :class:`nann_tf.search.filters.LabelFilter` and the op's documentation in
    ``cc_ops/ops/visited_ops.cc``).

    Returns:
        ``(kept_ids int32, kept_row_ids int32, new_bitmap)``.
    """
    return load_library().nann_gather_passing_neighbors(
        frontier_ids, frontier_row_ids, neighbor_values, neighbor_row_splits, bitmap,
        item_category, item_tags, label_state, has_include, held_keys, tag_offset,
        max_candidates, name=name)


def gather_rows(table, indices, name=None):
    """``tf.gather(table, indices)`` of a resource variable ``[N, D]`` (float32, float16 or
    bfloat16) by the ``NannGatherRows`` op: the same rows, bit for bit, fetched ahead of their
    copy so that the random reads of a table of gigabytes overlap (see the op's documentation
    in ``cc_ops/ops/rows_ops.cc``). The variable is read in place and left out of
    copy-on-read mode. An index outside ``[0, N)`` raises InvalidArgumentError naming it.

    Returns:
        ``indices.shape + [D]`` of the table's dtype.
    """
    if not isinstance(table, tf.Variable):
        raise TypeError(f"gather_rows reads a tf.Variable, got {type(table).__name__}")
    return load_library().nann_gather_rows(table.handle, indices, dtype=table.dtype,
                                            name=name)


def sparse_adam(var, m, v, indices, grad, alpha, beta1, beta2, epsilon, decay, name=None):
    """The raw ``NannSparseAdam`` op: Adam's update of the rows ``indices`` [n] of the float32
    table variable ``var`` [N, D] and its moments ``m``, ``v`` (resource variables of var's
    shape), with gradients ``grad`` [n, D] summed per distinct row, in place and in one pass;
    see :class:`nann_tf.train.optim.LazyAdam` (its stock-ops twin) and the op's documentation
    in ``cc_ops/ops/rows_ops.cc``. An index outside ``[0, N)`` raises InvalidArgumentError
    naming it; nothing is written then."""
    return load_library().nann_sparse_adam(var.handle, m.handle, v.handle, indices, grad,
                                            alpha, beta1, beta2, epsilon, decay, name=name)


def merge_results(result_ids, result_scores, new_ids, new_row_ids, new_scores, width,
                  name=None):
    """The raw ``NannMergeResults`` op: each query's top ``width`` of its results ``[B, W]``
    and its new items (rows ascending), by score then smaller id; see
    :func:`nann_tf.search.beam.merge_results` (its stock-ops twin) and the op's documentation
    in ``cc_ops/ops/rows_ops.cc``.

    Returns:
        ``(ids int32 [B, width], scores float32 [B, width], entered bool [B, width])``.
    """
    return load_library().nann_merge_results(result_ids, result_scores, new_ids, new_row_ids,
                                              new_scores, width, name=name)


def numpy_core() -> ModuleType:
    """Returns the pybind11 module ``nann_tf._nann_core`` (NumPy filter + beam-search replay).

    Raises:
        OpLibraryError: the module was not built.
    """
    try:
        from nann_tf import _nann_core
    except ImportError as error:
        raise OpLibraryError(
            f"nann-tf's NumPy core (nann_tf._nann_core) is not built ({error}); "
            f"{_rebuild_hint()}") from error
    return _nann_core
