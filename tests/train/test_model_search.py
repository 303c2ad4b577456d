"""nann-tf search-config: the search writes the best config, resumes after an interruption, and
refuses bad requests."""

import json
import sqlite3

import keras
import pytest

from nann_tf.config import load_config
from nann_tf.train.model_search import (SearchError, SearchSpace, load_space, run_search)

from conftest import run_cli

SPACE = {"train.learning_rate": [0.003, 0.03], "model.variant": ["attention", "two_tower"],
         "model.score_hidden": [[8], [16, 8]]}


def _base():
    return load_config("ci-synth", {
        "data.max_len": 10, "model.embedding_dim": 8, "model.item_hidden": [8],
        "model.user_hidden": [8], "model.score_hidden": [8], "train.batch_size": 64,
        "train.num_negatives": 8, "train.steps_per_epoch": 4, "train.epochs": 2,
        "train.jit_compile": False, "train.val_k": 20})


def _trials(study_dir):
    with sqlite3.connect(study_dir / "study.db") as db:
        return db.execute("select number, state from trials order by number").fetchall()


def test_search_writes_the_best_config_and_a_table(tiny_dataset, tmp_path):
    base = _base()
    out = tmp_path / "best.toml"
    res = run_search(base, tiny_dataset, out, budget_minutes=30, max_trials=3,
                     space=SearchSpace(SPACE, base), seed=1)
    assert res["trials_scored"] == 3
    best = load_config(out)
    params = res["best_params"]
    assert best.train.learning_rate == params["train.learning_rate"]
    assert best.model.variant == params["model.variant"]
    assert best.model.score_hidden == params["model.score_hidden"]
    # Keys outside the space keep the base config's values.
    assert best.train.batch_size == 64 and best.model.embedding_dim == 8
    # Trial 0 is the base config (a short search cannot end below its starting point).
    import optuna
    study = optuna.load_study(study_name="nann-tf",
                              storage=f"sqlite:///{tmp_path / 'best.study' / 'study.db'}")
    t0 = SearchSpace(SPACE, base).decode(study.trials[0].params)
    assert t0 == {"train.learning_rate": base.train.learning_rate, "model.variant": "attention",
                  "model.score_hidden": [8]}
    assert res["best_value"] >= study.trials[0].value
    table = (tmp_path / "best.trials.md").read_text()
    assert table.count("\n") == 2 + 3 and "model.score_hidden" in table
    # The best trial's model is kept, and its recorded validation figure is the search's best.
    meta = json.loads((tmp_path / "best.study" / "best-model" / "model.json").read_text())
    assert meta["validation"]["best"]["value"] == pytest.approx(res["best_value"])
    assert meta["config"]["model"]["variant"] == params["model.variant"]
    assert not list((tmp_path / "best.study" / "trials").glob("trial-*")), "others removed"


class _Boom(Exception):
    pass


def test_an_interrupted_search_resumes_and_reruns_the_interrupted_trial(tiny_dataset, tmp_path,
                                                                         monkeypatch):
    base = _base()
    out = tmp_path / "best.toml"
    space = SearchSpace(SPACE, base)
    calls = {"n": 0}
    from nann_tf.train import fit

    original = fit.train

    def train_then_die(cfg, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second trial is killed mid-training
            class Kill(keras.callbacks.Callback):
                def on_train_batch_end(self, batch, logs=None):
                    raise KeyboardInterrupt
            kw["extra_callbacks"] = list(kw.get("extra_callbacks") or []) + [Kill()]
        return original(cfg, *a, **kw)

    monkeypatch.setattr(fit, "train", train_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_search(base, tiny_dataset, out, budget_minutes=30, max_trials=4, space=space,
                   seed=3)
    states = _trials(tmp_path / "best.study")
    assert [s for _, s in states] == ["COMPLETE", "FAIL"], states
    with sqlite3.connect(tmp_path / "best.study" / "study.db") as db:
        killed = dict(db.execute("select param_name, param_value from trial_params where "
                                 "trial_id = (select trial_id from trials where number = 1)"))
    monkeypatch.setattr(fit, "train", original)
    res = run_search(base, tiny_dataset, out, budget_minutes=30, max_trials=4, space=space,
                     seed=3)
    states = _trials(tmp_path / "best.study")
    assert [s for _, s in states][:2] == ["COMPLETE", "FAIL"]
    assert sum(s in ("COMPLETE", "PRUNED") for _, s in states) == 4, states
    with sqlite3.connect(tmp_path / "best.study" / "study.db") as db:
        rerun = dict(db.execute("select param_name, param_value from trial_params where "
                                "trial_id = (select trial_id from trials where number = 2)"))
    assert rerun == killed, "the interrupted trial runs again with its parameters"
    assert res["trials_scored"] == 4
    # A finished study run again writes the same answer without training (the interrupted
    # trial is not queued a second time).
    again = run_search(base, tiny_dataset, out, budget_minutes=30, max_trials=4, space=space,
                       seed=3)
    assert again["best_trial"] == res["best_trial"] and len(_trials(tmp_path / "best.study")) == 5


def test_a_killed_trial_left_running_in_the_storage_runs_again(tiny_dataset, tmp_path):
    """A search killed outright (no Python cleanup) leaves its trial RUNNING in the study."""
    import optuna

    base = _base()
    out = tmp_path / "best.toml"
    space = SearchSpace(SPACE, base)
    run_search(base, tiny_dataset, out, budget_minutes=30, max_trials=1, space=space)
    study = optuna.load_study(study_name="nann-tf",
                              storage=f"sqlite:///{tmp_path / 'best.study' / 'study.db'}")
    left = study.ask()
    params = space.suggest(left)  # what the killed process had drawn, never told
    run_search(base, tiny_dataset, out, budget_minutes=30, max_trials=2, space=space)
    trials = optuna.load_study(study_name="nann-tf", storage=study._storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert space.decode(trials[2].params) == params


def test_bad_spaces_are_refused_naming_the_key(tmp_path):
    base = _base()
    with pytest.raises(SearchError, match="empty"):
        SearchSpace({}, base)
    with pytest.raises(SearchError, match="'train.learning_rate'.*impossible range"):
        SearchSpace({"train.learning_rate": {"low": 0.1, "high": 0.01}}, base)
    with pytest.raises(SearchError, match="'model.bogus'.*no key 'bogus'"):
        SearchSpace({"model.bogus": [1]}, base)
    with pytest.raises(SearchError, match="'model.variant'.*empty list"):
        SearchSpace({"model.variant": []}, base)
    with pytest.raises(SearchError, match="'model.variant'.*refused"):
        SearchSpace({"model.variant": ["attention", "transformer"]}, base)
    with pytest.raises(SearchError, match="'train.num_negatives'.*integer"):
        SearchSpace({"train.num_negatives": {"low": 1.5, "high": 9}}, base)
    with pytest.raises(SearchError, match="'index.M'.*model.<key> or train.<key>"):
        SearchSpace({"index.M": [16, 32]}, base)
    bad = tmp_path / "space.toml"
    bad.write_text("[other]\nx = 1\n")
    with pytest.raises(SearchError, match="no \\[space\\] table"):
        load_space(bad, base)
    bad.write_text('[space]\n"train.learning_rate" = {low = 1e-4, high = 1e-2, log = true}\n')
    assert load_space(bad, base).params[0].log


def test_bad_requests_are_refused_and_write_nothing(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "best.toml"
    common = ["--config", "ci-synth", "--data", str(tiny_dataset), "--set",
              "train.steps_per_epoch=400", "--set", "train.jit_compile=false"]
    for args, needle in [
        (["--output", str(out), "--budget-minutes", "0"], "--budget-minutes must be > 0"),
        (["--output", str(tmp_path / "best.txt"), "--budget-minutes", "5"], ".toml"),
        (["--output", str(out), "--budget-minutes", "5", "--set",
          "train.val_every_steps=-1"], "val_every_steps"),
        # 0.03 s: no trial reaches its first validation (an epoch of 400 steps).
        (["--output", str(out), "--budget-minutes", "0.0005"], "too small for one trial"),
        (["--output", str(out), "--budget-minutes", "5", "--space",
          str(tmp_path / "missing.toml")], "missing.toml"),
    ]:
        assert run_cli("search-config", *common, *args) == 2, args
        assert needle in capsys.readouterr().err, args
        assert not out.exists() and not (tmp_path / "best.txt").exists()
