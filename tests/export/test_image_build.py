"""The TF Serving image's build-stage checks (serving/docker/check_build.py) and the one list of
op sources that setup.py, cc_ops/BUILD and the Dockerfile must agree on.

Docker cannot run here, so the checks are run on stand-ins: source trees with version.h files,
a stand-in server binary, and the real op library the package builds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "serving" / "docker" / "check_build.py"
OPS = ["NannFilterUnvisited", "NannGatherPassingNeighbors", "NannGatherRows",
       "NannGatherUnvisitedNeighbors", "NannMergeResults", "NannSparseAdam"]


def _check(*args):
    return subprocess.run([sys.executable, str(CHECK), *map(str, args)], capture_output=True,
                          text=True)


def _trees(tmp_path, tf=(2, 21, 0), serving=(2, 21)):
    tf_src, sv_src = tmp_path / "org_tensorflow", tmp_path / "tensorflow-serving"
    h = tf_src / "tensorflow" / "core" / "public" / "version.h"
    h.parent.mkdir(parents=True)
    h.write_text(f"#define TF_MAJOR_VERSION {tf[0]}\n#define TF_MINOR_VERSION {tf[1]}\n"
                 f"#define TF_PATCH_VERSION {tf[2]}\n#define TF_VERSION_SUFFIX \"\"\n")
    s = sv_src / "tensorflow_serving" / "model_servers" / "version.h"
    s.parent.mkdir(parents=True)
    s.write_text(f"#define TF_MODELSERVER_MAJOR_VERSION {serving[0]}\n"
                 f"#define TF_MODELSERVER_MINOR_VERSION {serving[1]}\n"
                 "#define TF_MODELSERVER_PATCH_VERSION 0\n")
    return sv_src, tf_src


def test_versions_check_accepts_the_release_and_refuses_other_source(tmp_path):
    sv, tf = _trees(tmp_path / "good")
    ok = _check("versions", sv, tf, "2.21.0")
    assert ok.returncode == 0, ok.stderr
    assert "TensorFlow source 2.21.0" in ok.stdout
    sv, tf = _trees(tmp_path / "unstamped", serving=(0, 0))  # a tarball build says 0.0.0
    ok = _check("versions", sv, tf, "2.21.0")
    assert ok.returncode == 0 and "unstamped, not checked" in ok.stdout, ok.stderr
    # A -devel image built from master: TF 2.22 underneath. The message names the file and
    # the expected version, and says what to do.
    sv, tf = _trees(tmp_path / "master", tf=(2, 22, 0), serving=(0, 0))
    bad = _check("versions", sv, tf, "2.21.0")
    assert bad.returncode == 1
    assert "org_tensorflow/tensorflow/core/public/version.h" in bad.stderr
    assert "TensorFlow 2.22.0, expected 2.21" in bad.stderr and "release commit" in bad.stderr
    sv, tf = _trees(tmp_path / "old-serving", serving=(2, 20))
    bad = _check("versions", sv, tf, "2.21.0")
    assert bad.returncode == 1 and "model_servers/version.h" in bad.stderr
    assert "Serving source is 2.20, expected 2.21" in bad.stderr
    shutil.rmtree(tf)  # `bazel build --nobuild` did not fetch TensorFlow
    bad = _check("versions", sv, tf, "2.21.0")
    assert bad.returncode == 1 and "cannot read" in bad.stderr and str(tf) in bad.stderr


def _stand_in_server(path: Path, tf_version: str, ops) -> Path:
    """An executable that answers --version like tensorflow_model_server and holds the given
    op names as NUL-terminated strings (as a linked registration leaves them)."""
    path.write_bytes(b"#!/bin/sh\necho 'TensorFlow ModelServer: 0.0.0+dev.sha.abc'\n"
                     + f"echo 'TensorFlow Library: {tf_version}'\nexit 0\n".encode()
                     + b"".join(op.encode() + b"\0" for op in ops))
    path.chmod(0o755)
    return path


def test_server_check_needs_every_registered_op_and_the_tf_version(tmp_path):
    ops_src = REPO / "cc_ops" / "ops"
    good = _stand_in_server(tmp_path / "good", "2.21.0", OPS)
    ok = _check("server", good, ops_src, "2.21.0")
    assert ok.returncode == 0, ok.stderr
    assert ", ".join(OPS) in ok.stdout
    # The library was not linked in (no alwayslink, or not in SUPPORTED_TENSORFLOW_OPS).
    stock = _stand_in_server(tmp_path / "stock", "2.21.0", [])
    bad = _check("server", stock, ops_src, "2.21.0")
    assert bad.returncode == 1 and ", ".join(OPS) in bad.stderr and "alwayslink" in bad.stderr
    half = _stand_in_server(tmp_path / "half", "2.21.0", OPS[:1])
    bad = _check("server", half, ops_src, "2.21.0")
    assert bad.returncode == 1 and f"ops {', '.join(OPS[1:])} are not" in bad.stderr
    # A prefix of an op name is not the op.
    prefix = _stand_in_server(tmp_path / "prefix", "2.21.0", ["NannFilter", OPS[1]])
    assert _check("server", prefix, ops_src, "2.21.0").returncode == 1
    other_tf = _stand_in_server(tmp_path / "tf220", "2.20.1", OPS)
    bad = _check("server", other_tf, ops_src, "2.21.0")
    assert bad.returncode == 1 and "built with TensorFlow 2.20.1, expected 2.21" in bad.stderr
    assert _check("server").returncode == 2


def test_the_real_op_library_holds_its_ops_by_name(tmp_path):
    """The string check on a real linked binary: the op library this package builds."""
    from nann_tf import ops

    lib = Path(ops.__file__).with_name("_nann_ops.so")
    if not lib.is_file():
        pytest.skip("the op library is not built")
    sys.path.insert(0, str(CHECK.parent))
    try:
        import check_build
    finally:
        sys.path.pop(0)
    assert check_build.registered_ops(str(REPO / "cc_ops" / "ops")) == OPS
    check_build.check_ops_in_binary(str(lib), OPS)  # raises if missing
    data = lib.read_bytes().replace(b"NannGatherUnvisitedNeighbors\0",
                                    b"NannGatherUnvisitedNeighborX\0")
    (tmp_path / "lib.so").write_bytes(data)
    with pytest.raises(check_build.CheckError, match="NannGatherUnvisitedNeighbors"):
        check_build.check_ops_in_binary(str(tmp_path / "lib.so"), OPS)


def _bazel_list(rule_text: str, attr: str) -> list[str]:
    m = re.search(rf"{attr}\s*=\s*\[(.*?)\]", rule_text, re.S)
    return re.findall(r'"([^"]+)"', m.group(1)) if m else []


def _cc_rule(build: str, name: str) -> str:
    m = re.search(r"cc_library\(\s*name\s*=\s*\"" + name + r"\"(.*?)\n\)", build, re.S)
    assert m, f"cc_library {name} not in cc_ops/BUILD"
    return m.group(1)


def test_op_sources_agree_between_setup_py_bazel_and_the_dockerfile():
    """One op library, three build descriptions: the pip build (setup.py), Bazel
    (cc_ops/BUILD, what TF Serving links) and the Dockerfile (target, checked op sources)."""
    build = (REPO / "cc_ops" / "BUILD").read_text()
    ops_rule, core_rule = _cc_rule(build, "nann_ops"), _cc_rule(build, "nann_core")
    setup = (REPO / "setup.py").read_text()
    ext = {}
    for name in ("OPS_EXTENSION", "CORE_EXTENSION"):
        m = re.search(name + r",\s*sources=\[(.*?)\]", setup, re.S)
        assert m, name
        ext[name] = sorted(s.replace("{CC_OPS}/", "") for s in re.findall(r'f?"([^"]+)"',
                                                                         m.group(1)))
    assert ext["OPS_EXTENSION"] == sorted(_bazel_list(ops_rule, "srcs"))
    assert set(_bazel_list(core_rule, "srcs")) <= set(ext["CORE_EXTENSION"])
    for f in _bazel_list(ops_rule, "srcs") + _bazel_list(core_rule, "srcs") + \
            _bazel_list(core_rule, "hdrs"):
        assert (REPO / "cc_ops" / f).is_file(), f
    # Every file that registers an op is compiled into the linked library.
    registering = sorted(str(p.relative_to(REPO / "cc_ops"))
                         for p in (REPO / "cc_ops").rglob("*.cc")
                         if "REGISTER_OP(" in p.read_text())
    assert registering and set(registering) <= set(_bazel_list(ops_rule, "srcs"))
    assert all(r.startswith("ops/") for r in registering), \
        "the Dockerfile checks the ops registered under cc_ops/ops"
    docker = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    assert "ARG NANN_OPS_TARGET=//cc_ops:nann_ops" in docker
    assert re.search(r"COPY [^\n]*serving/docker/check_build.py", docker)
    assert re.search(r'check_build.py versions /tensorflow-serving\s+'
                     r'"\$\(bazel info output_base\)/external/org_tensorflow"', docker)
    assert re.search(r"check_build.py server /usr/local/bin/tensorflow_model_server_nann\s+"
                     r"/tensorflow-serving/cc_ops/ops", docker)
    # The version check runs between fetching (--nobuild) and compiling.
    nobuild = docker.index("--nobuild")
    versions = docker.index("check_build.py versions")
    compile_ = docker.index("bazel build ${bazel_flags} tensorflow_serving")
    server = docker.index("check_build.py server")
    assert nobuild < versions < compile_ < server
    # The include paths the comments promise are those the sources use.
    for src in ("kernels/visited_kernels.cc", "python/nann_core_module.cc"):
        for inc in re.findall(r'#include "(lib/[^"]+)"', (REPO / "cc_ops" / src).read_text()):
            assert (REPO / "cc_ops" / inc).is_file(), inc
    assert 'includes = ["."]' in core_rule


def test_the_models_volume_claim_is_defined_and_shared_read_only():
    k8s = REPO / "serving" / "k8s"
    docs = "\n---\n".join(p.read_text() for p in sorted(k8s.glob("*.yaml")))
    claims = re.findall(r"claimName:\s*(\S+)", docs)
    assert claims == ["nann-models"]
    pvc = [d for d in docs.split("\n---\n") if re.search(r"^kind:\s*PersistentVolumeClaim", d,
                                                        re.M)]
    assert len(pvc) == 1
    assert re.search(r"^  name:\s*nann-models\s*$", pvc[0], re.M)
    assert re.search(r"accessModes:\s*\n\s*-\s*ReadOnlyMany", pvc[0])
    assert re.search(r"storage:\s*\d+Gi", pvc[0])
    # The pods mount it read-only.
    deployment = (k8s / "deployment.yaml").read_text()
    vol = deployment[deployment.index("persistentVolumeClaim:"):]
    assert re.search(r"claimName: nann-models\s*\n\s*readOnly: true", vol)
    assert os.path.basename("models-pvc.yaml") in (REPO / "serving" / "README.md").read_text()


def test_the_c_loader_uses_the_images_session_config():
    """`validate --loader cc` loads with the session options the image passes to
    tensorflow_model_server (serving/session_config.pbtxt)."""
    import tensorflow as tf
    from google.protobuf import text_format

    from nann_tf.export.cc_loader import session_config

    want = text_format.Parse((REPO / "serving" / "session_config.pbtxt").read_text(),
                             tf.compat.v1.ConfigProto())
    assert session_config() == want and want.allow_soft_placement
