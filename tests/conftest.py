"""Shared fixtures: one small generated dataset and trained models, built once per session.

The CI-sized pipeline (synth -> prepare -> train -> build-index) runs once through
:class:`nann_tf.pipeline.Pipeline`; later tests (index, search, export, serving) reuse its
artefacts instead of training again.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from importlib.metadata import entry_points  # noqa: E402

# The installed `nann-tf` console script's function: tests drive the command line exactly as
# the entry point does, without importing the CLI package.
cli_main = entry_points(group="console_scripts")["nann-tf"].load()

CI_CONFIG = "ci-synth"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def run_cli(*args) -> int:
    return cli_main([str(a) for a in args])


def run_cli_output(*args) -> tuple[int, str]:
    """``run_cli`` with its standard output captured: ``(exit status, stdout)``."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run_cli(*args)
    return rc, buf.getvalue()


def bitmap_available() -> bool:
    """Whether the visited-bitmap op library is built (else its tests are skipped)."""
    from nann_tf import ops

    try:
        ops.load_library()
        return True
    except ops.OpLibraryError:
        return False


def core_available() -> bool:
    """Whether the pybind11 core (``nann_tf._nann_core``, the beam-search replay) is built."""
    from nann_tf import ops

    try:
        ops.numpy_core()
        return True
    except ops.OpLibraryError:
        return False


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A tiny prepared dataset (300 users, 200 items, L=10) for training tests."""
    from nann_tf.data.prepare import prepare_dataset
    from nann_tf.data.synth import generate_log, write_userbehavior_csv

    d = tmp_path_factory.mktemp("tiny")
    write_userbehavior_csv(generate_log(300, 200, 5, 20, 1), d / "log.csv")
    prepare_dataset(d / "log.csv", d / "data", "userbehavior", max_len=10, val_users=20,
                    test_users=20)
    return d / "data"


@pytest.fixture(scope="session")
def ci_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ci-pipeline")


@pytest.fixture(scope="session")
def ci_pipeline(ci_workdir):
    """synth -> prepare -> train -> build-index of the CI config, through the pipeline runner
    (the same one ``nann-tf demo`` and the bench scripts use; the CLI has its own tests)."""
    from nann_tf.pipeline import Pipeline

    pipeline = Pipeline(ci_workdir, CI_CONFIG)
    pipeline.run("build-index")
    return pipeline


@pytest.fixture(scope="session")
def ci_dataset(ci_pipeline) -> Path:
    """The CI-sized synthetic dataset directory."""
    return ci_pipeline.paths["data"]


@pytest.fixture(scope="session")
def attention_model_dir(ci_pipeline) -> Path:
    """The NANN (attention) model trained with FGSM on the CI dataset."""
    return ci_pipeline.paths["model"]


@pytest.fixture(scope="session")
def two_tower_model_dir(ci_workdir, ci_dataset) -> Path:
    """The two-tower model on the same dataset (trained through the CLI)."""
    out = ci_workdir / "model-two_tower"
    assert run_cli("train", "--config", CI_CONFIG, "--data", ci_dataset, "--output", out,
                   "--set", "model.variant=two_tower") == 0
    return out


@pytest.fixture(scope="session")
def ci_index_dir(ci_pipeline) -> Path:
    """The HNSW index of the attention model's item embeddings."""
    return ci_pipeline.paths["index"]
