#!/usr/bin/env bash
# Packaging smoke test (CI runs it after the tests): the package as a user gets it, not the
# editable development install the tests use.
#
#   1. sdist of the work tree (must carry cc_ops/ sources and the named configs, MANIFEST.in);
#   2. wheel from that sdist with build isolation, i.e. what `pip install .` does: a clean
#      compile against pyproject.toml's pinned TensorFlow and pybind11, no .venv involved;
#   3. a fresh venv with only that wheel (and its dependencies) installed;
#   4. FROM THE REPOSITORY ROOT (a fresh copy of it, whose nann_tf/ source directory has no
#      compiled .so files): `nann-tf --help` must list every subcommand, the installed package must
#      be the one imported (also by `python -P -m` subprocesses such as the export validation),
#      the README's quick start must run as written (synth, prepare, train, build-index, export
#      with validation, serve, a gRPC query; scripts/readme_quickstart.py), examples/movielens.py
#      must run (the Python API, in process and over gRPC), and `validate --loader cc` must
#      accept the example's version. `nann-tf demo` itself is tested by the suite (tests/cli/test_e2e.py).
#
# Any failure exits non-zero. The work directory is removed on success and kept on failure
# (KEEP_SMOKE_DIR=1 keeps it always). Usage: bash scripts/wheel-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
SUBCOMMANDS=(synth prepare train build-index update-index evaluate tune export serve query validate demo)
DEMO_TIMEOUT_S=${DEMO_TIMEOUT_S:-900}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nann-wheel-smoke.XXXXXX")
VENV=$WORK/venv
T0=$(date +%s.%N)
TIMES=()
STEP=""
STEP_T0=""

elapsed() { echo "$(date +%s.%N) $1" | awk '{printf "%.1f", $1 - $2}'; }
step() {  # step NAME: ends the previous step (recording its time) and starts NAME
  if [ -n "$STEP" ]; then TIMES+=("$(printf '%-28s %7s s' "$STEP" "$(elapsed "$STEP_T0")")"); fi
  STEP=$1
  STEP_T0=$(date +%s.%N)
  [ -z "$STEP" ] || echo "== wheel-smoke: $STEP" >&2
}
EXAMPLE_PID=""
finish() {
  local rc=$?
  local failed=$STEP
  if [ -n "$EXAMPLE_PID" ]; then kill -- "$EXAMPLE_PID" 2>/dev/null || true; fi
  step ""
  echo "== wheel-smoke times:" >&2
  printf '   %s\n' "${TIMES[@]}" >&2
  printf '   %-28s %7s s\n' "total" "$(elapsed "$T0")" >&2
  if [ "$rc" -eq 0 ] && [ "${KEEP_SMOKE_DIR:-0}" != 1 ]; then
    rm -rf "$WORK"
    echo "== wheel-smoke: OK" >&2
  elif [ "$rc" -eq 0 ]; then
    echo "== wheel-smoke: OK (kept $WORK)" >&2
  else
    echo "== wheel-smoke: FAILED in step '$failed' (exit $rc); files kept in $WORK" >&2
  fi
  exit "$rc"
}
quiet() {  # quiet LOG CMD...: CMD's output goes to LOG, whose end is shown if CMD fails
  local log=$1
  shift
  "$@" >"$log" 2>&1 || { local rc=$?; tail -n 60 "$log" >&2; return "$rc"; }
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A user's shell: nothing of the work tree on the module path, the venv's commands first.
unset PYTHONPATH PYTHONHOME PYTHONSAFEPATH NANN_TF_OPS_LIBRARY

step "venv + build tools"
"$PY" -m venv "$VENV"
# build, setuptools and wheel only make the sdist (setup.py needs no TensorFlow for that); the
# wheel build below is isolated and gets its own setuptools/pybind11/TensorFlow (pyproject.toml).
quiet "$WORK/venv.log" "$VENV/bin/python" -m pip install --upgrade pip build "setuptools>=68" wheel

step "sdist"
# From a copy of the files git would commit (tracked and untracked, minus .gitignore'd: no
# .venv, build/ or compiled .so), so that the build writes nothing into the work tree; without
# git, from the work tree itself.
SRC=$WORK/src
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  "$VENV/bin/python" - "$ROOT" "$SRC" <<'EOF'
import os, shutil, subprocess, sys
root, dst = sys.argv[1:]
listed = subprocess.run(["git", "-C", root, "ls-files", "-z", "-co", "--exclude-standard"],
                        capture_output=True, check=True).stdout.decode()
for rel in filter(None, listed.split("\0")):
    if os.path.isfile(os.path.join(root, rel)):  # not a deletion that is not staged yet
        os.makedirs(os.path.dirname(os.path.join(dst, rel)) or dst, exist_ok=True)
        shutil.copy2(os.path.join(root, rel), os.path.join(dst, rel))
EOF
else
  SRC=$ROOT
fi
quiet "$WORK/sdist.log" "$VENV/bin/python" -m build --sdist --no-isolation \
  --skip-dependency-check --outdir "$WORK/dist" "$SRC"
SDIST=$(ls "$WORK"/dist/nann_tf-*.tar.gz)
"$VENV/bin/python" - "$SDIST" <<'EOF'
import sys, tarfile
names = {n.split("/", 1)[1] for n in tarfile.open(sys.argv[1]).getnames() if "/" in n}
need = ["pyproject.toml", "setup.py", "cc_ops/ops/visited_ops.cc",
        "cc_ops/kernels/visited_kernels.cc", "cc_ops/lib/visited_bitmap.h",
        "cc_ops/lib/beam_replay.cc", "cc_ops/lib/beam_replay.h",
        "cc_ops/python/nann_core_module.cc", "cc_ops/loader/nann_cc_loader.c",
        "cc_ops/BUILD", "cc_ops/bazel/tf_pip.bzl",
        "nann_tf/configs/ci-synth.toml", "nann_tf/configs/smoke.toml", "tests/conftest.py"]
missing = [n for n in need if n not in names]
stray = sorted(n for n in names if n.endswith((".so", ".o", ".pyc")) or "nann_tf/bin/" in n)
if missing or stray:
    sys.exit(f"sdist {sys.argv[1]}: missing {missing}, build outputs {stray}")
print(f"sdist ok: {len(names)} files", file=sys.stderr)
EOF

step "wheel (build isolation)"
# From the sdist, so the compile starts clean (no build/ directory of the work tree reused).
quiet "$WORK/wheel.log" "$VENV/bin/python" -m pip wheel --no-deps -w "$WORK/wheels" "$SDIST"
WHEEL=$(ls "$WORK"/wheels/nann_tf-*.whl)
"$VENV/bin/python" - "$WHEEL" "$SRC" <<'EOF'
import os, sys, zipfile
wheel, root = sys.argv[1], sys.argv[2]
names = set(zipfile.ZipFile(wheel).namelist())
# Every Python file and named config of the source tree ships (a subpackage missing from
# setup.py's package list shows up here), plus both native modules.
need = []
for d, dirs, files in os.walk(os.path.join(root, "nann_tf")):
    dirs[:] = [x for x in dirs if x != "__pycache__"]
    rel = os.path.relpath(d, root)
    need += [f"{rel}/{f}" for f in files if f.endswith((".py", ".toml"))]
missing = sorted(n for n in need if n not in names)
if "nann_tf/_nann_ops.so" not in names:
    missing.append("nann_tf/_nann_ops.so")
if not any(n.startswith("nann_tf/_nann_core.") and n.endswith(".so") for n in names):
    missing.append("nann_tf/_nann_core.*.so")
if missing:
    sys.exit(f"wheel {os.path.basename(wheel)} lacks: {', '.join(missing)}")
print(f"wheel ok: {os.path.basename(wheel)}, {len(names)} files", file=sys.stderr)
EOF

step "install wheel into venv"
quiet "$WORK/install.log" "$VENV/bin/python" -m pip install "$WHEEL"
export PATH="$VENV/bin:$PATH"

# Everything below runs in the repository root on purpose (see the header): in the copy made for
# the sdist, a fresh checkout's root, because scripts/test.sh's editable install has compiled
# the .so files into the work tree's nann_tf/, where a `python -m nann_tf...` subprocess that
# picks up the source directory instead of the installed package would then go unnoticed.
cd "$SRC"
if compgen -G "nann_tf/*.so" >/dev/null; then
  echo "note: $SRC/nann_tf/ holds compiled modules (no git to copy the tree without them): an" \
       "import of the source directory instead of the wheel would go unnoticed here" >&2
fi
step "import + native modules"
"$VENV/bin/python" -P - "$VENV" <<'EOF'
import os, sys
import nann_tf, nann_tf.ops as ops
venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(nann_tf.__file__)
if not where.startswith(venv + os.sep):
    sys.exit(f"imported nann_tf from {where}, not from the installed wheel in {venv}")
ops.load_library()
ops.numpy_core()
print(f"nann_tf from {os.path.dirname(where)}; op library built for TF "
      f"{ops.built_tf_version(ops.library_path())}", file=sys.stderr)
EOF

step "nann-tf --help"
HELP=$(nann-tf --help)
missing=()
for c in "${SUBCOMMANDS[@]}"; do
  grep -Eq "^[[:space:]]+$c([[:space:]]|\$)" <<<"$HELP" || missing+=("$c")
done
if [ "${#missing[@]}" -ne 0 ]; then
  echo "$HELP" >&2
  echo "nann-tf --help lists no subcommand: ${missing[*]}" >&2
  exit 1
fi

# The README's quick start and examples/movielens.py (then the C API loader on the example's
# version: the quick start is the longer chain) are independent, and each is a chain of
# processes that mostly keeps one core busy: they run side by side (the example in the
# background, its output in a log shown when it fails).
step "README quick start (smoke config) beside examples/movielens.py + validate --loader cc"
EXAMPLE_T0=$(date +%s.%N)
(  # stopped (TERM from finish() below) -> stops the example too
  run() {
    "$@" &
    child=$!
    wait "$child"
  }
  trap 'kill "$child" 2>/dev/null; exit 143' TERM
  rc=0
  run timeout --kill-after=30 "$DEMO_TIMEOUT_S" \
    "$VENV/bin/python" -P examples/movielens.py --workdir "$WORK/example" --epochs 1 || rc=$?
  date +%s.%N >"$WORK/example.end"
  # the wheel's C API loader (rpath to the installed TensorFlow) on the example's version
  if [ "$rc" -eq 0 ]; then
    run nann-tf validate "$WORK/example/models/nann/1" --loader cc || rc=$?
  fi
  date +%s.%N >"$WORK/validate.end"
  exit "$rc"
) >"$WORK/example.log" 2>&1 &
EXAMPLE_PID=$!
timeout --kill-after=30 "$DEMO_TIMEOUT_S" \
  "$VENV/bin/python" -P scripts/readme_quickstart.py --workdir "$WORK/quickstart"
TIMES+=("$(printf '%-28s %7s s' "  quick start" "$(elapsed "$STEP_T0")")")
echo "== wheel-smoke: waiting for examples/movielens.py (Python API; a generated stand-in in" \
     "the MovieLens layout), then validate --loader cc on its version" >&2
rc=0
wait "$EXAMPLE_PID" || rc=$?
EXAMPLE_PID=""
for end in example validate; do
  if [ -f "$WORK/$end.end" ]; then
    TIMES+=("$(printf '%-28s %7s s' "  $([ $end = example ] && echo examples/movielens.py ||
      echo "  + validate cc")" \
      "$(echo "$(cat "$WORK/$end.end") $EXAMPLE_T0" | awk '{printf "%.1f", $1 - $2}')")")
  fi
done
if [ "$rc" -ne 0 ]; then
  tail -n 60 "$WORK/example.log" >&2
  echo "examples/movielens.py or validate --loader cc on its version failed (exit $rc); the" \
       "output: $WORK/example.log" >&2
  exit "$rc"
fi
tail -n 4 "$WORK/example.log" >&2
step ""
