"""Defaults that follow the data: the rules, and that a config's own keys always win."""

import json

import pytest

from nann_tf.autoconfig import DataStats, data_rules, load_config_for_data
from nann_tf.config import ConfigError
from nann_tf.data.dataset import Dataset
from nann_tf.search.params import SearchParams

from conftest import run_cli


@pytest.mark.parametrize("items,start", [(150, 0), (1682, 1), (13_226, 1), (102_712, 2),
                                          (1_000_000, 2), (4_200_000, 2)])
def test_the_search_starts_on_a_level_that_holds_enough_nodes(items, start):
    rules = data_rules(DataStats(items, 50 * items, items // 5))
    assert rules["search.start_level"] == start
    # What the rules give is a valid search for an index of that size (levels S..0).
    params = SearchParams.from_mapping({k.split(".")[1]: v for k, v in rules.items()
                                        if k.startswith("search.")}, "rules")
    params.checked(max_level=start)
    assert params.k == min(200, items) <= params.ef[0]
    # Level l of the graph holds ~N / 32^l nodes: the start level still holds about 50.
    assert items / 32 ** start >= 50 or start == 0
    assert items / 32 ** (start + 1) < 50 or start == 2


def test_small_logs_get_more_epochs_big_ones_one():
    assert data_rules(DataStats(1682, 81_218, 755))["train.epochs"] == 37
    assert data_rules(DataStats(13_226, 30_931, 941))["train.epochs"] == 50  # the cap
    assert data_rules(DataStats(4_160_000, 96_500_000, 918_000))["train.epochs"] == 1


def test_a_configs_own_keys_win_over_the_rules(tiny_dataset, tmp_path):
    ds = Dataset.load(tiny_dataset)
    auto = load_config_for_data("auto", ds)
    rules = data_rules(DataStats.of(ds))
    assert auto.auto["applied"] == rules
    assert auto.train.epochs == rules["train.epochs"] and auto.search.k == rules["search.k"]
    # ci-synth pins train.epochs and the [search] table: those stay; --set pins one more.
    cfg = load_config_for_data("ci-synth", tiny_dataset, {"train.learning_rate": 0.01})
    assert cfg.train.epochs == 2 and cfg.search.start_level == 1
    assert cfg.train.learning_rate == 0.01
    assert not {"train.epochs", "search.start_level", "search.ef"} & set(cfg.auto["applied"])
    mine = tmp_path / "mine.toml"
    mine.write_text("[train]\nepochs = 3\n")
    cfg = load_config_for_data(mine, tiny_dataset)
    assert cfg.train.epochs == 3 and "search.ef" in cfg.auto["applied"]
    with pytest.raises(ConfigError, match="bogus"):
        load_config_for_data("auto", tiny_dataset, {"train.bogus": 1})


def test_train_without_a_config_records_what_followed_the_data(tiny_dataset, tmp_path):
    out = tmp_path / "m"
    assert run_cli("train", "--data", tiny_dataset, "--output", out, "--set",
                   "train.steps_per_epoch=3", "--set", "train.epochs=1", "--set",
                   "train.jit_compile=false") == 0
    meta = json.loads((out / "model.json").read_text())
    auto = meta["auto_config"]
    ds = Dataset.load(tiny_dataset)
    assert auto["stats"]["num_items"] == ds.num_items
    assert auto["stats"]["num_samples"] == ds.num_train_samples
    assert "train.epochs" not in auto["applied"]  # given with --set
    assert meta["config"]["search"]["k"] == auto["applied"]["search.k"]


@pytest.mark.integration
def test_build_index_tunes_the_search_and_the_export_default_follows(tiny_dataset, tmp_path):
    """build-index measures the cheapest beam parameters reaching coverage@k 0.99 on validation
    users; a model whose [search] table followed the data serves with them, a config that gives
    its own ef keeps its own."""
    from nann_tf.autoconfig import search_defaults
    from nann_tf.index.build import build_index
    from nann_tf.index.store import load_index
    from nann_tf.model.saved import load_trained_model

    model_dir = tmp_path / "m"
    assert run_cli("train", "--data", tiny_dataset, "--output", model_dir, "--set",
                   "train.steps_per_epoch=20", "--set", "train.epochs=2", "--set",
                   "train.jit_compile=false", "--set", "search.k=50") == 0
    info = build_index(model_dir, tiny_dataset, tmp_path / "i")
    tuned = info["tuned_search"]
    assert tuned is not None and tuned["coverage"] >= 0.99 and tuned["k"] == 50
    # The TensorFlow search with the tuned setting agrees with the C++ replay it was chosen by.
    assert tuned["tf_coverage"] >= 0.99 - 0.01, tuned
    _, cfg, meta = load_trained_model(model_dir)
    index = load_index(tmp_path / "i")
    served = search_defaults(cfg, meta, index.meta)
    assert (served.start_level, served.k) == (tuned["start_level"], 50)
    assert served.ef == {int(a): int(b) for a, b in
                         (p.split("=") for p in tuned["ef"].split(","))}
    # A config that gives [search] ef itself keeps it (the rules and the tuning step aside).
    assert run_cli("train", "--config", "ci-synth", "--data", tiny_dataset, "--output",
                   tmp_path / "m2", "--set", "train.steps_per_epoch=5", "--set",
                   "train.epochs=1", "--set", "train.jit_compile=false") == 0
    _, cfg2, meta2 = load_trained_model(tmp_path / "m2")
    assert search_defaults(cfg2, meta2, index.meta) == cfg2.search
    # The stages take the objects in memory as well as directories (a model built in memory
    # has no directory to record): the same e_v.
    import numpy as np

    from nann_tf.model.saved import TrainedModel

    off = build_index(TrainedModel(*load_trained_model(model_dir)), Dataset.load(tiny_dataset),
                      tmp_path / "i3", tune_coverage=0)
    assert off["tuned_search"] is None and off["model_dir"] is None
    np.testing.assert_array_equal(load_index(tmp_path / "i3").embeddings, index.embeddings)
