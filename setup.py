"""nann-tf: retrieval under a neural similarity metric, served by TensorFlow Serving."""

import os
import sys
from importlib import metadata

from setuptools import Extension, find_namespace_packages, setup
from setuptools.command.build_ext import build_ext

TF_REQUIREMENT = "tensorflow==2.21.*"  # keep equal to pyproject.toml's [build-system] pin


def _runtime_tensorflow_requirement():
    """The op library only loads into the TensorFlow it was compiled against (nann_tf/ops.py
    compares versions exactly), so a wheel requires exactly the build environment's TensorFlow
    when that is a 2.21 release; otherwise (no TensorFlow yet, e.g. an sdist) the minor pin."""
    try:
        version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        return TF_REQUIREMENT
    return f"tensorflow=={version}" if version.startswith("2.21.") else TF_REQUIREMENT


INSTALL_REQUIRES = [
    # The full `tensorflow` package (not tensorflow-cpu) so tensorflow-serving-api, which
    # requires `tensorflow`, adds no second TF.
    _runtime_tensorflow_requirement(),
    "tensorflow-serving-api==2.21.*",
    "numpy",
    "hnswlib",
    "pyarrow",  # the table input format (CSV/TSV/Parquet with a column mapping)
    "tensorboard",
    "matplotlib",
    "optuna>=4",  # nann-tf search-config: the model search, with its own resumable storage
]

# ---------------------------------------------------------------------------------------------
# Native build: the TensorFlow op library (nann_tf/_nann_ops.so, loaded by nann_tf/ops.py with
# tf.load_op_library) and the pybind11 module nann_tf._nann_core, both over the TF-free core in
# cc_ops/lib/. Both need TensorFlow's headers and ABI flags and pybind11's headers at build time:
# `pip install .` gets them through build isolation (pyproject.toml's [build-system] requires
# pins tensorflow==2.21.* and pybind11); a developer checkout uses the environment's own
# TensorFlow with `pip install --no-build-isolation -e .` (after installing tensorflow==2.21.*,
# pybind11, setuptools and wheel, as scripts/test.sh does).
# ---------------------------------------------------------------------------------------------
CC_OPS = "cc_ops"
OPS_EXTENSION = "nann_tf._nann_ops"
CORE_EXTENSION = "nann_tf._nann_core"
CC_LOADER = "nann-tf-cc-loader"  # nann_tf/bin/: the C API loader (BuildNannExtensions)
REBUILD_HINT = ("`pip install .` brings TensorFlow 2.21 and pybind11 through build isolation; "
                "for `pip install --no-build-isolation -e .` install tensorflow==2.21.* and "
                "pybind11 into the environment first")
# -g0 overrides the interpreter's -g: debug info triples the build time of the TF headers.
COMMON_FLAGS = ["-std=c++17", "-O3", "-g0", "-fvisibility=hidden", "-Wno-deprecated-declarations"]


class BuildNannExtensions(build_ext):
    """Adds TensorFlow's and pybind11's flags at build time (they need both imported)."""

    def build_extensions(self):
        try:
            import tensorflow as tf
        except ImportError as error:
            raise SystemExit(
                f"nann-tf compiles a TensorFlow op library and needs TensorFlow in the build "
                f"environment: {REBUILD_HINT} ({error})"
            ) from error
        try:
            import pybind11
        except ImportError as error:
            raise SystemExit(
                f"nann-tf's NumPy module needs pybind11 at build time: {REBUILD_HINT} "
                f"({error})"
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
        stamp = self._build_env_stamp(tf, pybind11)
        for ext in self.extensions:
            ext.depends = [*ext.depends, stamp]
        super().build_extensions()
        self._build_cc_loader(tf, stamp)

    def _cc_loader_files(self):
        """(built file in build_lib, its place in the source tree for in-place builds)."""
        build_py = self.get_finalized_command("build_py")
        regular = os.path.join(self.build_lib, "nann_tf", "bin", CC_LOADER)
        return regular, os.path.join(build_py.get_package_dir("nann_tf"), "bin", CC_LOADER)

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        regular, inplace = self._cc_loader_files()
        os.makedirs(os.path.dirname(inplace), exist_ok=True)
        self.copy_file(regular, inplace, level=self.verbose)

    def _get_output_mapping(self):
        yield from super()._get_output_mapping()
        if self.inplace:  # editable installs: the loader goes where the extensions go
            yield self._cc_loader_files()

    def get_outputs(self):
        outputs = super().get_outputs()
        return outputs if self.inplace else sorted(outputs + [self._cc_loader_files()[0]])

    def _build_cc_loader(self, tf, stamp):
        """nann_tf/bin/nann-tf-cc-loader: a C program over TensorFlow's C API (the wheel's
        libtensorflow_cc.so.2, headers in tensorflow/include/tensorflow/c), with no Python in
        its process; `nann-tf validate --loader cc` runs it. Found at run time through an rpath
        relative to the installed package (site-packages/tensorflow) and LD_LIBRARY_PATH."""
        tf_dir = os.path.dirname(tf.__file__)
        target = self._cc_loader_files()[0]
        out_dir = os.path.dirname(target)
        source = f"{CC_OPS}/loader/nann_cc_loader.c"
        if not self.force and os.path.exists(target) and all(
                os.path.getmtime(target) >= os.path.getmtime(p) for p in (source, stamp)):
            return
        os.makedirs(out_dir, exist_ok=True)
        objects = self.compiler.compile(
            [source], output_dir=self.build_temp,
            include_dirs=[os.path.join(tf_dir, "include")],
            extra_postargs=["-std=gnu11", "-O2", "-g0", "-Wall"])
        self.compiler.link_executable(
            objects, CC_LOADER, output_dir=out_dir, target_lang="c",
            extra_postargs=[f"-L{tf_dir}", "-l:libtensorflow_cc.so.2",
                            "-l:libtensorflow_framework.so.2",
                            "-Wl,-rpath,$ORIGIN/../../tensorflow", f"-Wl,-rpath,{tf_dir}"])

    def _build_env_stamp(self, tf, pybind11):
        """A file in build_temp naming what the binaries were compiled against, rewritten when
        that changes. Every extension depends on it, so a build/ directory left by a build with
        another TensorFlow, pybind11 or Python is recompiled instead of reused (distutils
        otherwise only compares the timestamps of the sources)."""
        flags = [f for f in tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()
                 if not f.startswith(("-I", "-L"))]  # paths differ per isolated build env
        text = "\n".join([f"tensorflow {tf.__version__}", f"pybind11 {pybind11.__version__}",
                          f"python {sys.version}", *flags, *COMMON_FLAGS]) + "\n"
        path = os.path.join(self.build_temp, "nann_tf_build_env.txt")
        os.makedirs(self.build_temp, exist_ok=True)
        try:
            with open(path) as f:
                unchanged = f.read() == text
        except OSError:
            unchanged = False
        if not unchanged:
            with open(path, "w") as f:
                f.write(text)
        return path

    def get_ext_filename(self, fullname):
        # A TF op library is not a Python module: a fixed name, no ABI tag. distutils asks both
        # with the full dotted name and with the last component only.
        if fullname.split(".")[-1] == OPS_EXTENSION.split(".")[-1]:
            return os.path.join(*fullname.split(".")) + ".so"
        return super().get_ext_filename(fullname)


EXT_MODULES = [
    Extension(
        OPS_EXTENSION,
        sources=[f"{CC_OPS}/ops/visited_ops.cc", f"{CC_OPS}/kernels/visited_kernels.cc",
                 f"{CC_OPS}/ops/rows_ops.cc", f"{CC_OPS}/kernels/rows_kernels.cc"],
        include_dirs=[CC_OPS],
        depends=[f"{CC_OPS}/lib/visited_bitmap.h", f"{CC_OPS}/kernels/huge_pages.h"],
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
    python_requires=">=3.11",
    # Namespace discovery so that a subpackage directory without __init__.py still ships
    # (nann_tf.configs holds only the named configs, shipped as package data).
    packages=find_namespace_packages(include=["nann_tf", "nann_tf.*"],
                                     exclude=["*.__pycache__", "*.__pycache__.*"]),
    package_data={"nann_tf.configs": ["*.toml"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest>=8,<9", "hypothesis", "pytest-timeout", "pytest-xdist"]},
    entry_points={"console_scripts": ["nann-tf=nann_tf.cli:main"]},
    ext_modules=EXT_MODULES,
    cmdclass={"build_ext": BuildNannExtensions},
    zip_safe=False,
)
