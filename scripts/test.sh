#!/usr/bin/env bash
# The test command: installs everything into .venv (Python 3.11, gcc/g++ and pip are all a fresh
# machine needs), builds the op library, and runs the test suite.
#
#   bash scripts/test.sh            the whole suite (CI)
#   bash scripts/test.sh --fast     the unit tier: tests not marked `integration` (nothing
#                                   trains, exports or serves); skips the install when .venv
#                                   already has nann-tf (run the full command after C++ changes)
# Other arguments go to pytest (e.g. -k NAME, tests/search/test_beam.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
FAST=0
ARGS=()
for a in "$@"; do
  if [ "$a" = "--fast" ]; then FAST=1; ARGS+=(-m "not integration"); else ARGS+=("$a"); fi
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
if [ "$FAST" = 0 ] || [ ! -x .venv/bin/nann-tf ]; then
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  # TensorFlow first: the op library build (setup.py) reads tf.sysconfig, so the project is
  # installed without build isolation.
  .venv/bin/python -m pip install -q "tensorflow==2.21.*" "tensorflow-serving-api==2.21.*" pybind11 numpy tensorboard
  .venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
fi
# Two workers (the CI machine has 2 cores; much of a test's time is tracing, XLA compiles and
# subprocesses): NANN_TEST_WORKERS=0 runs in this process.
WORKERS=${NANN_TEST_WORKERS:-2}
XDIST=()
if [ "$WORKERS" != "0" ] && [[ " $* " != *" --collect-only "* ]]; then
  XDIST=(-n "$WORKERS" --dist loadgroup)
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=20 "${XDIST[@]}" "$@" tests
