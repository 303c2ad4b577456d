"""Named configs: strict for files people write, lenient for configs saved in artefacts."""

import json

import pytest

from nann_tf.config import ConfigError, config_from_json, load_config, resolve_config_path


@pytest.mark.parametrize("name", ["ci-synth", "synth-1m", "movielens-100k", "userbehavior"])
def test_named_configs_load(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert resolve_config_path(name).suffix == ".toml"


def test_unknown_key_and_bad_type_are_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match=r"c.toml: \[train\] unknown key 'epochz'"):
        load_config(p)
    p.write_text("[train]\nepochs = 'three'\n")
    with pytest.raises(ConfigError, match=r"\[train\] epochs"):
        load_config(p)
    p.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="known: "):
        load_config("no-such-config")


def test_saved_config_with_a_removed_key_still_loads():
    raw = json.loads(load_config("ci-synth").to_json())
    raw["train"]["a_key_from_an_older_version"] = 1
    cfg = config_from_json(json.dumps(raw), "model.json")
    assert cfg.train.epochs == load_config("ci-synth").train.epochs


def test_fgsm_eps_mode_is_checked():
    assert load_config("ci-synth").train.fgsm_eps_mode == "absolute"  # the paper's, by default
    assert load_config("ci-synth", {"train.fgsm_eps_mode": "relative"}).train.fgsm_eps_mode == \
        "relative"
    with pytest.raises(ConfigError, match=r"\[train\] fgsm_eps_mode must be absolute or "
                                          r"relative, got 'scaled'"):
        load_config("ci-synth", {"train.fgsm_eps_mode": "scaled"})


def test_backup_every_steps_is_checked():
    assert load_config("ci-synth", {"train.backup_every_steps": 0}).train.backup_every_steps == 0
    with pytest.raises(ConfigError, match=r"\[train\] backup_every_steps must be >= 0 \(0: at "
                                          r"epoch ends only\), got -5"):
        load_config("ci-synth", {"train.backup_every_steps": -5})


def test_sparse_min_items_is_checked():
    assert load_config("ci-synth", {"train.sparse_min_items": 0}).train.sparse_min_items == 0
    with pytest.raises(ConfigError, match=r"\[train\] sparse_min_items must be >= 0 \(0: always "
                                          r"sparse\), got -1"):
        load_config("ci-synth", {"train.sparse_min_items": -1})
