"""Validation inside training: the best weights are the model written, early stopping, the
figure recorded, and the refusals."""

import json

import keras
import numpy as np
import pytest

from nann_tf.config import load_config
from nann_tf.data.dataset import Dataset
from nann_tf.data.prepare import prepare_dataset
from nann_tf.model.saved import load_trained_model
from nann_tf.train import TrainError, train
from nann_tf.train.validation import (MIN_VAL_USERS, VAL_PAIR_BUDGET, VAL_PAIR_COST,
                                      VAL_TIME_SHARE, Validator, default_val_every,
                                      validation_users)

from conftest import run_cli


def _config(**train):
    return load_config("ci-synth", {
        "data.max_len": 10, "model.embedding_dim": 16, "model.item_hidden": [16],
        "model.user_hidden": [16], "model.score_hidden": [16], "train.batch_size": 64,
        "train.num_negatives": 16, "train.jit_compile": False, "train.val_k": 20,
        **{f"train.{k}": v for k, v in train.items()}})


class _Sabotage(keras.callbacks.Callback):
    """From the start of epoch ``at`` (0-based), replaces every trainable weight of the NANN
    model with noise before each step: training can no longer improve on what it had."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.epoch = at, 0
        self.rng = np.random.default_rng(0)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch >= self.at:
            for w in self.model.model.trainable_weights:
                w.assign(self.rng.normal(0, 1.0, w.shape).astype(np.float32))


def test_a_run_whose_validation_peaks_early_writes_the_early_weights(tiny_dataset, tmp_path):
    """Epochs 1-2 learn; from epoch 3 on the weights are noise, so validation peaks at the end of
    epoch 2 (or 1), patience 2 stops training two epochs later (after epoch 4 or 3 of 8), and
    the model written is the checkpoint of the best epoch, not the last weights."""
    cfg = _config(epochs=8, steps_per_epoch=15, patience=2, learning_rate=0.03)
    out = tmp_path / "m"
    summary = train(cfg, tiny_dataset, out, verbose=0, extra_callbacks=[_Sabotage(2)])
    meta = json.loads((out / "model.json").read_text())
    val = meta["validation"]
    assert summary["stopped_early"] and val["stopped_early"]
    best = val["best"]
    assert best["step"] in (15, 30) and best["value"] == max(e["value"] for e in val["history"])
    # Stopped after 2 validations without progress: 2 epochs after the best one.
    assert summary["steps_run_now"] == best["step"] + 2 * 15, val["history"]
    assert [e["step"] for e in val["history"]] == list(range(15, best["step"] + 31, 15))
    assert best["value"] > max(e["value"] for e in val["history"][2:]), val["history"]
    # The model written holds the best epoch's weights (its checkpoint), not the last ones.
    model, _, _ = load_trained_model(out)
    written = [w.numpy() for w in model.weights]
    for epoch, same in ((best["step"] // 15, True), (best["step"] // 15 + 2, False)):
        ref, _, _ = load_trained_model(out)
        ref.load_weights(out / "checkpoints" / f"epoch-{epoch:03d}.weights.h5")
        equal = all(np.array_equal(a, b.numpy()) for a, b in zip(written, ref.weights))
        assert equal == same, epoch
    # The recorded figure is the written model's own, measured again on the same users.
    ds = Dataset.load(tiny_dataset)
    check = Validator(ds, k=cfg.train.val_k, users=cfg.train.val_users,
                      next_n=cfg.train.val_next_n, patience=0)
    assert check.metric == val["metric"] == "recall_all_next10@20"
    assert check.measure(model) == pytest.approx(best["value"], abs=1e-9)
    assert meta["train_summary"]["val_recall_all_next10@20"] == best["value"]
    assert list((out / "logs" / "validation").glob("*tfevents*")), "TensorBoard scalar"
    assert not (out / "backup").exists()


def test_without_patience_every_epoch_runs_and_the_best_is_kept(tiny_dataset, tmp_path):
    cfg = _config(epochs=3, steps_per_epoch=10, patience=0, val_every_steps=5)
    out = tmp_path / "m"
    summary = train(cfg, tiny_dataset, out, verbose=0)
    val = json.loads((out / "model.json").read_text())["validation"]
    assert summary["steps_run_now"] == 30 and not summary["stopped_early"]
    assert [e["step"] for e in val["history"]] == [5, 10, 15, 20, 25, 30]
    assert val["best"]["value"] == max(e["value"] for e in val["history"])


def test_a_run_stopped_by_another_callback_validates_its_last_steps(tiny_dataset, tmp_path):
    """A caller's callback (bench_scale's time limit) stops the run at step 6, between
    validations every 4 steps: step 6 is validated too (else the model written would be step
    4's weights, whatever the last steps learnt), and the model is the better of the two."""
    import keras

    class StopAt(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps == 6:
                self.model.stop_training = True

    cfg = _config(epochs=1, steps_per_epoch=10, patience=0, val_every_steps=4)
    out = tmp_path / "m"
    summary = train(cfg, tiny_dataset, out, verbose=0, extra_callbacks=[StopAt()])
    val = json.loads((out / "model.json").read_text())["validation"]
    assert summary["steps_run_now"] == 6
    assert [e["step"] for e in val["history"]] == [4, 6]
    assert val["best"]["value"] == max(e["value"] for e in val["history"])


def test_validation_off_keeps_the_last_weights(tiny_dataset, tmp_path):
    cfg = _config(epochs=2, steps_per_epoch=5, val_every_steps=-1)
    out = tmp_path / "m"
    train(cfg, tiny_dataset, out, verbose=0)
    meta = json.loads((out / "model.json").read_text())
    assert "validation" not in meta
    model, _, _ = load_trained_model(out)
    ref, _, _ = load_trained_model(out)
    ref.load_weights(out / "checkpoints" / "epoch-002.weights.h5")
    for a, b in zip(model.weights, ref.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_dataset_without_validation_users_is_refused_naming_the_fix(tmp_path, capsys):
    from nann_tf.data.synth import generate_log, write_userbehavior_csv

    write_userbehavior_csv(generate_log(60, 50, 3, 15, 2), tmp_path / "log.csv")
    data = tmp_path / "data"
    prepare_dataset(tmp_path / "log.csv", data, "userbehavior", max_len=10, val_users=0,
                    test_users=5, explicit_held_out=(True, True))
    with pytest.raises(TrainError, match="no validation users.*val_users N"):
        train(_config(epochs=1, steps_per_epoch=2), data, tmp_path / "m", verbose=0)
    assert not (tmp_path / "m" / "model.json").exists()
    assert run_cli("train", "--config", "ci-synth", "--data", data, "--output",
                   tmp_path / "m2", "--set", "train.val_every_steps=-2") == 2
    assert "val_every_steps" in capsys.readouterr().err
    # Without validation it trains.
    train(_config(epochs=1, steps_per_epoch=2, val_every_steps=-1), data, tmp_path / "m3",
          verbose=0)
    assert (tmp_path / "m3" / "model.json").exists()


def test_the_default_interval_keeps_validation_a_tenth_of_the_time():
    """Once per epoch on a small corpus, every 5,000 steps on a long epoch with cheap
    validations, and further apart when one validation costs more than a ninth of 5,000 steps:
    at the paper's scale (100 users x 3.93M items, 512 x 101 candidates per step) it costs
    ~2,430 steps, so the interval is ~9 x that (validation ~10% of the time)."""
    assert default_val_every(120, 94 * 1682, 512 * 101) == 120
    assert default_val_every(188_000, 200 * 10_000, 512 * 101) == 5000
    paper = default_val_every(188_000, 100 * 3_930_000, 512 * 101)
    cost = VAL_PAIR_COST * 100 * 3_930_000 / (512 * 101)
    assert 21_000 < paper < 23_000
    assert cost / (cost + paper) == pytest.approx(VAL_TIME_SHARE, rel=0.01)
    # Never past the epoch: a run shorter than the interval still validates once per epoch.
    assert default_val_every(9_000, 100 * 3_930_000, 512 * 101) == 9_000


def test_validation_users_follow_the_corpus_size():
    assert validation_users(94, 1000, 1682) == 94
    assert validation_users(5000, 1000, 1682) == 1000
    # 1M items: the pair budget allows 200 users; 4.2M: the floor of MIN_VAL_USERS.
    assert validation_users(10000, 1000, 1_000_000) == VAL_PAIR_BUDGET // 1_000_000 == 200
    assert validation_users(10000, 1000, 4_200_000) == MIN_VAL_USERS
    assert validation_users(30, 1000, 4_200_000) == 30


def test_each_validation_scores_the_model_as_it_is_now(tiny_dataset, monkeypatch):
    """Validation keeps its item tables between measurements and rewrites them in chunks, in
    place: after the weights change, the tables hold the new model's rows (every chunk, the
    short last one included) and the figure is the one a fresh validator measures."""
    from nann_tf.model.nann import all_item_embeddings, item_side_table
    from nann_tf.model.saved import build_model
    from nann_tf.train import validation

    monkeypatch.setattr(validation, "TABLE_CHUNK", 7)  # 201 rows: 28 chunks and one of 5
    ds = Dataset.load(tiny_dataset)
    cfg = _config()
    model = build_model(cfg, ds.num_items, ds.num_categories, ds.item_category, ds.max_len)
    kept = Validator(ds, k=20, users=20, next_n=10, patience=0)
    kept.measure(model)
    rng = np.random.default_rng(1)
    for w in model.trainable_weights:
        w.assign(w.numpy() + rng.normal(0, 0.5, w.shape).astype(np.float32))
    value = kept.measure(model)
    e = all_item_embeddings(model)
    np.testing.assert_allclose(kept._table.numpy(), e, atol=1e-5)
    np.testing.assert_allclose(kept._side.numpy(), item_side_table(model, e), atol=1e-5)
    fresh = Validator(ds, k=20, users=20, next_n=10, patience=0)
    assert value == pytest.approx(fresh.measure(model), abs=1e-9)
