"""Tests of how the native code is built and loaded: build record, clear errors, Bazel target."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from nann_tf import ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_installed_library_records_the_running_tensorflow():
    path = ops.library_path()
    assert ops.built_tf_version(path) == tf.__version__
    ops.check_library(path)
    library = ops.load_library()
    assert ops.load_library() is library  # loaded once
    assert hasattr(library, "nann_filter_unvisited")
    assert "first occurrences" in library.nann_filter_unvisited.__doc__  # docs from REGISTER_OP


def test_missing_library_says_how_to_rebuild(tmp_path):
    with pytest.raises(ops.OpLibraryError, match="not found") as info:
        ops.check_library(str(tmp_path / "_nann_ops.so"))
    assert ops.REBUILD_COMMAND in str(info.value)


def test_library_for_another_tensorflow_is_refused_before_loading(tmp_path):
    fake = tmp_path / "_nann_ops.so"
    fake.write_bytes(b"\x7fELF...NANN_BUILD_INFO{tf_version=2.15.1;}...")
    with pytest.raises(ops.OpLibraryError) as info:
        ops.check_library(str(fake), tf_version="2.21.0")
    message = str(info.value)
    assert "built against TensorFlow 2.15.1" in message and "2.21.0 is installed" in message
    assert ops.REBUILD_COMMAND in message
    fake.write_bytes(b"\x7fELF not ours")
    with pytest.raises(ops.OpLibraryError, match="no build record"):
        ops.check_library(str(fake))


def test_library_path_can_be_overridden(monkeypatch, tmp_path):
    monkeypatch.setenv(ops.LIBRARY_ENV, str(tmp_path / "other.so"))
    assert ops.library_path() == str(tmp_path / "other.so")
    monkeypatch.delenv(ops.LIBRARY_ENV)
    assert ops.library_path().endswith(os.path.join("nann_tf", "_nann_ops.so"))


def test_numpy_core_is_built():
    core = ops.numpy_core()
    assert core.new_visited(2, 65).shape == (2, 2)


def test_cpp_core_test_passes(tmp_path):
    """The C++ test of the TF-free core, compiled directly (Bazel runs it as a cc_test)."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    binary = str(tmp_path / "visited_core_test")
    subprocess.run([compiler, "-std=c++17", "-O1", "-Wall", "-Werror", "-pthread",
                    "-I", os.path.join(REPO, "cc_ops"),
                    os.path.join(REPO, "cc_ops", "tests", "visited_core_test.cc"),
                    os.path.join(REPO, "cc_ops", "lib", "beam_replay.cc"), "-o", binary],
                   check=True, timeout=300)
    run = subprocess.run([binary], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "all checks passed" in run.stdout


BAZEL = shutil.which("bazel")
# A Bazel server left running holds ~1 GB: let it exit soon after the test.
BAZEL_STARTUP = ["--max_idle_secs=120"]
# Loads the Bazel-built library in a fresh process (one process cannot register an op twice)
# and checks it computes what the setup.py build computes.
BAZEL_CHECK = """
import numpy as np, tensorflow as tf
from nann_tf import ops
from nann_tf.search import visited
lib = ops.load_library()
bitmap = visited.new_visited(2, 128)
kept, rows, bitmap = visited.filter_unvisited([5, 70, 5, 69], [0, 1, 0, 1], bitmap)
assert kept.numpy().tolist() == [5, 70, 69] and rows.numpy().tolist() == [0, 1, 1]
assert visited.num_visited(bitmap).numpy().tolist() == [1, 2]
print("BAZEL_OK", ops.library_path())
"""


def bazel(*args, env, timeout=900):
    return subprocess.run([BAZEL, *BAZEL_STARTUP, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(BAZEL is None, reason="bazel is not installed")
@pytest.mark.timeout(1200)
def test_bazel_builds_the_standalone_op_library_offline():
    env = dict(os.environ, PYTHON_BIN_PATH=sys.executable)
    build = bazel("build", "//cc_ops:_nann_ops.so", env=env)
    assert build.returncode == 0, build.stderr[-4000:]
    test = bazel("test", "//cc_ops:visited_core_test", env=env)
    assert test.returncode == 0, (test.stdout + test.stderr)[-4000:]
    info = bazel("info", "bazel-bin", env=env, timeout=300)
    assert info.returncode == 0, info.stderr[-2000:]
    library = os.path.join(info.stdout.strip(), "cc_ops", "_nann_ops.so")
    assert ops.built_tf_version(library) == tf.__version__
    run = subprocess.run([sys.executable, "-c", BAZEL_CHECK], env=dict(env, **{
        ops.LIBRARY_ENV: library}), capture_output=True, text=True, timeout=300)
    assert "BAZEL_OK" in run.stdout, run.stderr[-4000:]
