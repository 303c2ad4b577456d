"""Shared fixtures: one small generated dataset and trained models, built once per session.

The CI-sized pipeline (synth -> prepare -> train -> build-index) runs once through
:class:`nann_tf.pipeline.Pipeline`; later tests (index, search, export, serving) reuse its
artefacts instead of training again.
"""

from __future__ import annotations

import contextlib
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


# With pytest-xdist (scripts/test.sh runs two workers), what several tests share and costs
# minutes (the CI pipeline, the two-tower model, the two exported versions) is built once per
# run by whichever worker needs it first (`built_once`); a worker that needs it meanwhile waits.
# A module's tests stay on one worker (one xdist group per module: its module-scoped fixtures
# are built once), except the modules whose tests take most of the run: theirs go one by one
# to whichever worker is free.
SPLIT_MODULES = {"test_export.py", "test_filters.py"}
# Tests that use the shared versions: their first one may wait for both exports.
EXPORT_TIMEOUT_S = 1800


# The `integration` marker (`scripts/test.sh --fast` deselects it): every test that trains,
# exports or serves a model, i.e. uses one of the shared artefacts below, or sits in a module
# whose own fixtures do (INTEGRATION_MODULES), or is marked by hand.
SHARED_ARTEFACTS = {"ci_pipeline", "ci_dataset", "attention_model_dir", "two_tower_model_dir",
                    "ci_index_dir", "ci_item_tags", "export_base", "leftovers", "v_tf", "v_xla",
                    "tf_session", "xla_session"}
INTEGRATION_MODULES = {"test_export.py", "test_e2e.py", "test_string_ids.py", "test_train.py",
                       "test_multiworker.py", "test_model_search.py"}


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: trains, exports or serves a model "
                            "(deselected by scripts/test.sh --fast)")


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the group markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.path.name in INTEGRATION_MODULES
                or set(getattr(item, "fixturenames", ())) & SHARED_ARTEFACTS):
            item.add_marker(pytest.mark.integration)
        if item.path.name not in SPLIT_MODULES and not item.name.startswith(
                ("test_demo_", "test_stage_keys_")):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
        if set(getattr(item, "fixturenames", ())) & {"v_tf", "v_xla"}:
            item.add_marker(pytest.mark.timeout(EXPORT_TIMEOUT_S))


def _run_root(tmp_path_factory) -> Path:
    """The directory every xdist worker of this run shares (the session's own base temp
    without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def built_once(tmp_path_factory, name: str):
    """``with built_once(f, name) as (path, built):`` -- ``path`` is this run's shared
    directory for ``name``; build it there when ``built`` is False. Whichever worker enters
    first builds while the others wait on the lock; a build that raises is retried by the next
    worker that asks."""
    import fcntl

    root = _run_root(tmp_path_factory) / "shared"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / f"{name}.done"
        yield root / name, done.exists()
        done.touch()


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
def ci_pipeline(tmp_path_factory):
    """synth -> prepare -> train -> build-index of the CI config, through the pipeline runner
    (the same one ``nann-tf demo`` and the bench scripts use; the CLI has its own tests); once
    per run (a worker that comes later reuses the stages' outputs)."""
    from nann_tf.pipeline import Pipeline

    with built_once(tmp_path_factory, "ci-pipeline") as (workdir, _):
        pipeline = Pipeline(workdir, CI_CONFIG)
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
def two_tower_model_dir(tmp_path_factory, ci_dataset) -> Path:
    """The two-tower model on the same dataset (trained through the CLI)."""
    with built_once(tmp_path_factory, "model-two_tower") as (out, built):
        if not built:
            assert run_cli("train", "--config", CI_CONFIG, "--data", ci_dataset, "--output",
                           out, "--set", "model.variant=two_tower") == 0
    return out


@pytest.fixture(scope="session")
def ci_index_dir(ci_pipeline) -> Path:
    """The HNSW index of the attention model's item embeddings."""
    return ci_pipeline.paths["index"]


# ------------------------------------------------------------------ exported versions (shared)
# Exporting the CI model costs 1.5-2 minutes on 2 cores (tracing, saving, a validation
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
    """The base path of version 1 (``v_tf``), shared by the run's workers."""
    return _run_root(tmp_path_factory) / "shared" / "models" / "nann"


@pytest.fixture(scope="session")
def leftovers(tmp_path_factory, export_base):
    """Temporary export directories found in the base path before the first export: one of an
    export whose process is gone, one of an export still running in another process."""
    import json
    import subprocess
    import sys

    with built_once(tmp_path_factory, "leftovers") as (record, built):
        if not built:
            dead = subprocess.Popen([sys.executable, "-c", "pass"])
            dead.wait()
            # The run's main process (the xdist controller, this worker's parent; else this
            # process) stands in for an export still running: alive until the run ends.
            owner = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
            export_base.mkdir(parents=True)
            paths = {"dead": export_base / f".tmp-7-{dead.pid}",
                     "live": export_base / f".tmp-8-{owner}"}
            for p in paths.values():
                p.mkdir()
                (p / "saved_model.pb").write_bytes(b"partial")
            record.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return {k: Path(v) for k, v in json.loads(record.read_text()).items()}


@pytest.fixture(scope="session")
def v_tf(tmp_path_factory, export_base, leftovers, attention_model_dir, ci_index_dir,
         ci_item_tags):
    """Version 1: stock ops only, no XLA, item tags from a table, narrow filters (<= 100
    items) scored exactly; validated by the C API loader too."""
    with built_once(tmp_path_factory, "v_tf") as (_, built):
        if not built:
            assert run_cli("export", "--model", attention_model_dir, "--index", ci_index_dir,
                           "--output", export_base, "--version", "1", "--visited", "tf",
                           "--no-xla", "--item-tags", ci_item_tags,
                           "--tag-columns", "item=sku,tags=flags",
                           "--exact-max-items", str(TAGS_EXACT_MAX),
                           "--validate-loader", "cc") == 0
    return export_base / "1"


@pytest.fixture(scope="session")
def v_xla(tmp_path_factory, attention_model_dir, ci_index_dir):
    """The C++ bitmap op with XLA scoring over the shape grid (the CLI's default export, model
    name "nann", but for a coarser grid: ratio 2, 8 sizes instead of 1.25's 22, so that its
    XLA compiles in the export, its validations and every server's warm-up take a third of the
    time), in a base path of its own; validated by the C API loader too."""
    with built_once(tmp_path_factory, "v_xla") as (root, built):
        if not built:
            assert run_cli("export", "--model", attention_model_dir, "--index", ci_index_dir,
                           "--output", root / "nann", "--visited", "bitmap", "--xla",
                           "--embedding-dtype", "float32", "--grid-ratio", "2",
                           "--validate-loader", "cc") == 0
    return root / "nann" / "1"


class _Shared:
    """A loaded version shared by one worker's tests: ``with fixture as m`` leaves it open
    (loading the CI export takes ~10 s; the session closes it at the end)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        return self.model

    def __exit__(self, *exc):
        return False


@pytest.fixture(scope="session")
def tf_session(v_tf):
    """Version 1 (``v_tf``) loaded once by the session loader (no op library)."""
    from nann_tf.serving.loader import SessionModel

    with SessionModel(v_tf, load_ops=False) as m:
        yield _Shared(m)


@pytest.fixture(scope="session")
def xla_session(v_xla):
    """``v_xla`` loaded once by the session loader (with the op library)."""
    from nann_tf.serving.loader import SessionModel

    with SessionModel(v_xla) as m:
        yield _Shared(m)
