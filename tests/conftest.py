"""Shared fixtures: one small generated dataset and trained models, built once per session.

The CI-sized pipeline (synth -> prepare -> train) runs through the real CLI; later tests (index,
search, export, serving) reuse its artefacts instead of training again.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nann_tf.cli import main as cli_main  # noqa: E402

CI_CONFIG = "ci-synth"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def run_cli(*args: str) -> int:
    return cli_main([str(a) for a in args])


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
def ci_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ci-pipeline")


@pytest.fixture(scope="session")
def ci_dataset(ci_workdir) -> Path:
    """The CI-sized synthetic dataset directory."""
    from nann_tf.config import load_config

    dc = load_config(CI_CONFIG).data
    log = ci_workdir / "log.csv"
    assert run_cli("synth", "--users", dc.synth_users, "--items", dc.synth_items,
                   "--categories", dc.synth_categories, "--events-per-user",
                   dc.synth_events_per_user, "--seed", dc.synth_seed, "--output", log) == 0
    out = ci_workdir / "data"
    assert run_cli("prepare", "--format", "userbehavior", "--config", CI_CONFIG, "--input", log,
                   "--output", out) == 0
    return out


def _train(ci_workdir: Path, ci_dataset: Path, variant: str) -> Path:
    out = ci_workdir / f"model-{variant}"
    assert run_cli("train", "--config", CI_CONFIG, "--data", ci_dataset, "--output", out,
                   "--set", f"model.variant={variant}") == 0
    return out


@pytest.fixture(scope="session")
def attention_model_dir(ci_workdir, ci_dataset) -> Path:
    """The NANN (attention) model trained with FGSM on the CI dataset."""
    return _train(ci_workdir, ci_dataset, "attention")


@pytest.fixture(scope="session")
def two_tower_model_dir(ci_workdir, ci_dataset) -> Path:
    return _train(ci_workdir, ci_dataset, "two_tower")


@pytest.fixture(scope="session")
def ci_index_dir(ci_workdir, ci_dataset, attention_model_dir) -> Path:
    """The HNSW index of the attention model's item embeddings (built through the CLI)."""
    out = ci_workdir / "index-attention"
    assert run_cli("build-index", "--model", attention_model_dir, "--data", ci_dataset,
                   "--output", out) == 0
    return out
