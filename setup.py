"""nann-tf: retrieval under a neural similarity metric, served by TensorFlow Serving."""

import os

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

INSTALL_REQUIRES = [
    # The op library is compiled against one TensorFlow minor version; the full
    # `tensorflow` package (not tensorflow-cpu) so tensorflow-serving-api adds no second TF.
    "tensorflow==2.21.*",
    "tensorflow-serving-api==2.21.*",
    "numpy",
    "hnswlib",
    "tensorboard",
    "matplotlib",
]

# ---------------------------------------------------------------------------------------------
# Native build: the TensorFlow op library (nann_tf/_nann_ops.so, loaded by nann_tf/ops.py with
# tf.load_op_library) and the pybind11 module nann_tf._nann_core, both over the TF-free core in
# cc_ops/lib/. Both need the build environment's packages (TensorFlow headers and ABI flags,
# pybind11 headers), hence `pip install --no-build-isolation -e .`.
# ---------------------------------------------------------------------------------------------
CC_OPS = "cc_ops"
OPS_EXTENSION = "nann_tf._nann_ops"
CORE_EXTENSION = "nann_tf._nann_core"
REBUILD_HINT = "pip install --no-build-isolation -e ."
# -g0 overrides the interpreter's -g: debug info triples the build time of the TF headers.
COMMON_FLAGS = ["-std=c++17", "-O3", "-g0", "-fvisibility=hidden", "-Wno-deprecated-declarations"]


class BuildNannExtensions(build_ext):
    """Adds TensorFlow's and pybind11's flags at build time (they need both imported)."""

    def build_extensions(self):
        try:
            import tensorflow as tf
        except ImportError as error:
            raise SystemExit(
                f"nann-tf compiles a TensorFlow op library and needs TensorFlow installed in the "
                f"build environment: install tensorflow==2.21.* first, then `{REBUILD_HINT}` "
                f"({error})"
            ) from error
        try:
            import pybind11
        except ImportError as error:
            raise SystemExit(
                f"nann-tf's NumPy module needs pybind11 at build time: `pip install pybind11`, "
                f"then `{REBUILD_HINT}` ({error})"
            ) from error
        for ext in self.extensions:
            if ext.name == OPS_EXTENSION:
                # The op library must keep TF's symbols visible: drop -fvisibility=hidden.
                flags = [f for f in COMMON_FLAGS if f != "-fvisibility=hidden"]
                ext.extra_compile_args = tf.sysconfig.get_compile_flags() + flags
                ext.extra_link_args = tf.sysconfig.get_link_flags()
                ext.define_macros.append(("NANN_TF_VERSION", f'"{tf.__version__}"'))
            elif ext.name == CORE_EXTENSION:
                ext.include_dirs.append(pybind11.get_include())
                ext.extra_compile_args = list(COMMON_FLAGS)
        super().build_extensions()

    def get_ext_filename(self, fullname):
        # A TF op library is not a Python module: a fixed name, no ABI tag. distutils asks both
        # with the full dotted name and with the last component only.
        if fullname.split(".")[-1] == OPS_EXTENSION.split(".")[-1]:
            return os.path.join(*fullname.split(".")) + ".so"
        return super().get_ext_filename(fullname)


EXT_MODULES = [
    Extension(
        OPS_EXTENSION,
        sources=[f"{CC_OPS}/ops/visited_ops.cc", f"{CC_OPS}/kernels/visited_kernels.cc"],
        include_dirs=[CC_OPS],
        depends=[f"{CC_OPS}/lib/visited_bitmap.h"],
        language="c++",
    ),
    Extension(
        CORE_EXTENSION,
        sources=[f"{CC_OPS}/python/nann_core_module.cc", f"{CC_OPS}/lib/beam_replay.cc"],
        include_dirs=[CC_OPS],
        depends=[f"{CC_OPS}/lib/visited_bitmap.h", f"{CC_OPS}/lib/beam_replay.h"],
        language="c++",
    ),
]

setup(
    name="nann-tf",
    version="0.1.0",
    description="NANN retrieval (HNSW + neural score, beam search) exported as one TF Serving SavedModel",
    python_requires=">=3.10",
    packages=find_packages(include=["nann_tf", "nann_tf.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest", "hypothesis", "pytest-timeout"]},
    entry_points={"console_scripts": ["nann-tf=nann_tf.cli:main"]},
    ext_modules=EXT_MODULES,
    cmdclass={"build_ext": BuildNannExtensions},
    zip_safe=False,
)
