#!/usr/bin/env bash
# The test command: installs everything into .venv (Python 3.11, gcc/g++ and pip are all a fresh
# machine needs), builds the op library, and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# TensorFlow first: the op library build (setup.py) reads tf.sysconfig, so the project is
# installed without build isolation.
.venv/bin/python -m pip install -q "tensorflow==2.21.*" "tensorflow-serving-api==2.21.*" pybind11 numpy tensorboard
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
# Two workers (the CI machine has 2 cores; much of a test's time is tracing, XLA compiles and
# subprocesses): NANN_TEST_WORKERS=0 runs in this process.
WORKERS=${NANN_TEST_WORKERS:-2}
XDIST=()
if [ "$WORKERS" != "0" ] && [[ " $* " != *" --collect-only "* ]]; then
  XDIST=(-n "$WORKERS" --dist loadgroup)
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=20 "${XDIST[@]}" "$@" tests
