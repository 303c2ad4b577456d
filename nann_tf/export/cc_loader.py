"""``nann-tf validate VERSION_DIR --loader {python,cc}``: load an exported version the way TF
Serving does and check every signature's answers.

TF Serving loads a version with the C++ ``LoadSavedModel`` (tag ``serve``, its session config),
replays ``assets.extra/tf_serving_warmup_requests`` and answers ``Predict`` through
``Session::Run`` with the signature's tensor names. Two loaders do that here:

- ``cc``: ``nann_tf/bin/nann-tf-cc-loader`` (``cc_ops/loader/nann_cc_loader.c``), a C program
  over TensorFlow's C API with no Python in its process. It registers the op library as the
  Docker image would have it (``TF_LoadLibrary``; not at all for a ``--visited tf`` export),
  loads the version with the session options of ``serving/session_config.pbtxt``, replays the
  warm-up file, then runs the validation requests and writes every output.
- ``python``: the TF1 session loader in this process (:class:`~nann_tf.serving.loader.
  SessionModel`), the one ``nann-tf serve`` uses.

The validation requests are the version's own warm-up records (they call every signature:
``serving_default`` at every padded shape, ``retrieve``, ``brute_force``). Their answers through
the C loader must equal, bit for bit, the answers of the session loader in this process.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from nann_tf.errors import UserError, arg

__all__ = ["CcLoaderError", "LOADERS", "export_visited", "loader_path", "run_cc_loader",
           "session_config", "validate_version"]

LOADER_NAME = "nann-tf-cc-loader"
LOADERS = ("python", "cc")
# serving/session_config.pbtxt, which the Docker image passes to tensorflow_model_server
# (tests/export/test_image_build.py checks that this is what that file says).
SESSION_CONFIG_TEXT = "allow_soft_placement: true\n"


class CcLoaderError(UserError, RuntimeError):
    """The version does not load or answer through the C API loader, or the loader is missing."""


def loader_path() -> Path:
    """The installed C loader; :class:`CcLoaderError` naming the rebuild when it is missing."""
    from nann_tf import ops

    path = Path(ops.__file__).resolve().parent / "bin" / LOADER_NAME
    if not os.access(path, os.X_OK):
        raise CcLoaderError(f"{path}: the C API loader is not built; rebuild the package with "
                            f"`{ops.REBUILD_COMMAND}` (it compiles cc_ops/loader/"
                            f"nann_cc_loader.c against the installed TensorFlow)")
    return path


def session_config():
    """The ``ConfigProto`` of ``serving/session_config.pbtxt``."""
    import tensorflow as tf
    from google.protobuf import text_format

    return text_format.Parse(SESSION_CONFIG_TEXT, tf.compat.v1.ConfigProto())


def export_visited(version_dir: Path) -> str:
    from nann_tf.export.export import EXPORT_INFO

    try:
        return json.loads((version_dir / EXPORT_INFO).read_text()).get("visited", "bitmap")
    except (OSError, ValueError):
        return "bitmap"


_DTYPES = {1: np.float32, 3: np.int32, 9: np.int64, 10: np.bool_, 19: np.float16}
_DT_STRING = 7  # string item ids: an object array of bytes, as a session returns them


def _read_outputs(path: Path, count: int) -> list[dict[str, np.ndarray]]:
    data, pos, out = path.read_bytes(), 0, []

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return vals

    for _ in range(count):
        (n,) = take("<I")
        row = {}
        for _ in range(n):
            (length,) = take("<I")
            alias = data[pos:pos + length].decode()
            pos += length
            dtype, rank = take("<iI")
            dims = take(f"<{rank}q")
            (nbytes,) = take("<Q")
            if dtype == _DT_STRING:  # per element: u32 length, bytes
                end, values = pos + nbytes, []
                while pos < end:
                    (length,) = take("<I")
                    values.append(data[pos:pos + length])
                    pos += length
                arr = np.empty(len(values), dtype=object)
                arr[:] = values
                row[alias] = arr.reshape(dims)
                continue
            row[alias] = np.frombuffer(data[pos:pos + nbytes], _DTYPES[dtype]).reshape(dims)
            pos += nbytes
        out.append(row)
    return out


def run_cc_loader(version_dir, requests: list, *, op_library: bool = True,
                  warmup: bool = True, repeat: int = 0, model_name: str = "nann") -> dict:
    """Loads ``version_dir`` with the C loader and runs ``requests`` (``(signature, inputs)``
    pairs, written as a TFRecord of PredictionLog like a warm-up file).

    Returns:
      ``{"outputs": [dict per request], "latency_ms": {request index: [ms, ...]} (with
      repeat), "warmup_records": n, "load_ms": ms, "signatures": [...]}``.

    Raises:
      CcLoaderError: the loader is missing, or the version fails to load, warm up or answer
        (the message is the loader's, naming the file, record and signature).
    """
    import tensorflow as tf

    from nann_tf import ops
    from nann_tf.serving.warmup import write_warmup_requests

    exe = loader_path()
    version_dir = Path(version_dir)
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        (td / "session_config.bin").write_bytes(session_config().SerializeToString())
        cmd = [str(exe), str(version_dir), "--session-config", str(td / "session_config.bin")]
        if op_library:
            cmd += ["--op-library", str(ops.library_path())]
        if not warmup:
            cmd.append("--no-warmup")
        if requests:
            write_warmup_requests(td / "requests", model_name, "serving_default", requests)
            cmd += ["--requests", str(td / "requests"), "--outputs", str(td / "outputs")]
            if repeat:
                cmd += ["--repeat", str(int(repeat))]
        tf_dir = os.path.dirname(tf.__file__)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   LD_LIBRARY_PATH=os.pathsep.join(
                       p for p in (tf_dir, os.environ.get("LD_LIBRARY_PATH")) if p))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            msg = [ln for ln in proc.stderr.splitlines() if ln.startswith(LOADER_NAME)]
            raise CcLoaderError(msg[-1] if msg else
                                f"{LOADER_NAME} exited with {proc.returncode}: "
                                f"{proc.stderr[-2000:]}")
        report = {"outputs": _read_outputs(td / "outputs", len(requests)) if requests else [],
                  "latency_ms": {}, "signatures": [], "warmup_records": 0}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["latency_ms"]:
            report["latency_ms"].setdefault(int(parts[1]), []).append(float(parts[2]))
        elif parts[:1] == ["signature"]:
            report["signatures"].append(parts[1])
        elif parts[:1] == ["warmup_records"]:
            report["warmup_records"] = int(parts[1])
        elif parts[:1] == ["loaded"]:
            report["load_ms"] = float(parts[-4])
    return report


def validate_version(version_dir, loader: str = "cc", reference: list | None = None) -> dict:
    """Loads the version with ``loader``, replays its warm-up and runs every warm-up record;
    with ``cc``, every answer must equal the in-process session loader's bit for bit.

    ``reference``: the session loader's answers to the warm-up records, in order, when another
    process already computed them (the export's validation process replays the warm-up with
    the same session config and keeps its answers): the version is then not loaded here again.

    Returns a JSON-ready report; raises :class:`CcLoaderError` on any failure.
    """
    import tensorflow as tf

    from nann_tf.serving.loader import ModelLoadError, RequestError, SessionModel, replay_warmup
    from nann_tf.serving.warmup import WarmupError, read_warmup_requests, warmup_file_path

    if loader not in LOADERS:
        raise CcLoaderError(f"{arg('loader')} {loader!r}: expected one of {', '.join(LOADERS)}")
    version_dir = Path(version_dir)
    if not (version_dir / "saved_model.pb").is_file():
        raise CcLoaderError(f"{version_dir}: no saved_model.pb (not an exported version)")
    wpath = Path(warmup_file_path(version_dir))
    try:
        records = read_warmup_requests(wpath) if wpath.is_file() else []
    except WarmupError as e:
        raise CcLoaderError(f"{wpath}: {e}") from e
    requests = [(r.signature_name or "serving_default", r.inputs) for r in records]
    visited = export_visited(version_dir)
    report = {"version_dir": str(version_dir), "loader": loader, "visited": visited,
              "requests": len(requests)}
    # The C loader's process runs beside the session loader's answers (two cores: the two
    # loads and replays overlap); its errors are raised first, as the loader under test.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(run_cc_loader, version_dir, requests,
                              op_library=visited != "tf") if loader == "cc" else None
        session_error = None
        if reference is not None and loader == "cc":
            if len(reference) != len(requests):
                session_error = CcLoaderError(f"{len(reference)} reference answers for "
                                              f"{len(requests)} warm-up records")
            expected = reference
            report["reference"] = "the validation process's warm-up replay"
        else:
            t0 = time.perf_counter()
            try:
                with SessionModel(version_dir, load_ops=visited != "tf",
                                  session_config=session_config()) as model:
                    report["python_load_s"] = time.perf_counter() - t0
                    if loader == "python":
                        report["warmup_records"] = replay_warmup(model)
                    expected = [model.run(sig, inputs) for sig, inputs in requests]
            except (ModelLoadError, RequestError, tf.errors.OpError) as e:
                session_error = CcLoaderError(f"the session loader: {e}")
        if pending is not None:
            cc = pending.result()
            report.update(warmup_records=cc["warmup_records"], cc_load_ms=cc.get("load_ms"),
                          signatures=sorted(s for s in cc["signatures"]
                                            if not s.startswith("__")))
        if session_error is not None:
            raise session_error
    report["signatures_run"] = sorted({sig for sig, _ in requests})
    if loader == "python":
        return report
    for i, (want, got) in enumerate(zip(expected, cc["outputs"])):
        if sorted(want) != sorted(got):
            raise CcLoaderError(f"request {i} ({requests[i][0]}): the C loader returned outputs "
                                f"{sorted(got)}, the session loader {sorted(want)}")
        for alias in want:
            a, b = np.asarray(want[alias]), got[alias]
            if a.dtype == object:  # strings: compare the values (tobytes() is pointers)
                differ = a.dtype != b.dtype or a.shape != b.shape or a.tolist() != b.tolist()
            else:
                differ = a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes()
            if differ:
                raise CcLoaderError(f"request {i} ({requests[i][0]}), output {alias}: the C "
                                    f"loader's answer differs from the session loader's")
    report["bit_identical"] = True
    return report

