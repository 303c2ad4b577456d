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


# With pytest-xdist (scripts/test.sh runs two workers, --dist loadgroup), the tests that use the
# session's exported versions (v_tf, v_xla below) run on one worker, so each version is
# exported once; every other test goes to whichever worker is free.
EXPORT_MODULES = {"test_export.py", "test_filters.py", "test_e2e.py"}


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the group markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.name in EXPORT_MODULES and not item.name.startswith(
                ("test_demo_", "test_stage_keys_")) or fixtures & {"v_tf", "v_xla"}:
            item.add_marker(pytest.mark.xdist_group("exports"))
            # The first of them exports both versions in its setup: 9 minutes measured on 2
            # shared cores (pytest.ini's 600 s would cut a slower machine short).
            item.add_marker(pytest.mark.timeout(1800))


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


# ------------------------------------------------------------------ exported versions (shared)
# Exporting the CI model costs 1.5-3.5 minutes on 2 cores (tracing, saving, a validation
# process replaying the warm-up), so the two versions below are exported once per session and
# shared: test_export checks them, test_filters queries version 1's filters, test_e2e serves a
# copy of version 2. Tests that need another export option export their own.

TAGS_EXACT_MAX = 100  # --exact-max-items of version 1 (see test_filters)


@pytest.fixture(scope="session")
def ci_item_tags(tmp_path_factory, ci_dataset) -> Path:
    """An item table with tags: tag 5 on every 7th item, tag 6 on every 23rd (by dense id)."""
    from nann_tf.data.dataset import Dataset

    ds = Dataset.load(ci_dataset)
    rows = ["sku,flags"]
    for dense in range(1, ds.num_items + 1):
        tags = [t for t, every in ((5, 7), (6, 23)) if dense % every == 0]
        rows.append(f"{ds.raw_item_id[dense]},{'|'.join(map(str, tags))}")
    path = tmp_path_factory.mktemp("item-tags") / "tags.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def export_base(tmp_path_factory):
    return tmp_path_factory.mktemp("models") / "nann"


@pytest.fixture(scope="session")
def leftovers(export_base):
    """Temporary export directories found in the base path before the first export: one of an
    export whose process is gone, one of an export still running in another process."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    export_base.mkdir(parents=True)
    paths = {"dead": export_base / f".tmp-7-{dead.pid}",
             "live": export_base / f".tmp-8-{live.pid}"}
    for p in paths.values():
        p.mkdir()
        (p / "saved_model.pb").write_bytes(b"partial")
    yield paths
    live.kill()
    live.wait()


@pytest.fixture(scope="session")
def v_tf(export_base, leftovers, attention_model_dir, ci_index_dir, ci_item_tags):
    """Version 1: stock ops only, no XLA, item tags from a table, narrow filters (<= 100
    items) scored exactly; validated by the C API loader too."""
    assert run_cli("export", "--model", attention_model_dir, "--index", ci_index_dir,
                   "--output", export_base, "--visited", "tf", "--no-xla",
                   "--item-tags", ci_item_tags, "--tag-columns", "item=sku,tags=flags",
                   "--exact-max-items", str(TAGS_EXACT_MAX),
                   "--validate-loader", "cc") == 0
    return export_base / "1"


@pytest.fixture(scope="session")
def v_xla(export_base, v_tf, attention_model_dir, ci_index_dir):
    """Version 2: the C++ bitmap op with XLA scoring over the shape grid (the CLI's default
    export, model name "nann"); validated by the C API loader too."""
    assert run_cli("export", "--model", attention_model_dir, "--index", ci_index_dir,
                   "--output", export_base, "--visited", "bitmap", "--xla",
                   "--embedding-dtype", "float32", "--validate-loader", "cc") == 0
    return export_base / "2"
