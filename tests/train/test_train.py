"""Training quality on the CI-sized synthetic data, resume, and bad input."""

import json

import keras
import numpy as np
import pytest

from nann_tf.config import load_config
from nann_tf.data.dataset import Dataset
from nann_tf.evaluation.evaluate import evaluate_brute_force
from nann_tf.model.saved import ModelDirError, load_trained_model
from nann_tf.train import TrainError, train

from conftest import run_cli

# Thresholds the CI model must clear on the held-out test users (exact top-M). Over the
# popularity list at M=200: measured attention 0.92, most popular 0.45. Over the two-tower at
# M=50, where the two are not both near 1 (the shared defaults, softmax loss and recency,
# lifted the two-tower to 0.89 at M=200): measured attention 0.909, two-tower 0.825.
MIN_MARGIN_OVER_POPULAR = 0.15
MIN_MARGIN_OVER_TWO_TOWER = 0.05


def test_attention_beats_most_popular_and_two_tower(ci_dataset, attention_model_dir,
                                                    two_tower_model_dir):
    ds = Dataset.load(ci_dataset)
    res = {}
    for name, d in [("attention", attention_model_dir), ("two_tower", two_tower_model_dir)]:
        model, cfg, meta = load_trained_model(d)
        assert cfg.model.variant == name
        res[name] = evaluate_brute_force(model, ds, "test", 0, (50, 200))
        assert meta["train_summary"]["seconds"] < 300
    att = res["attention"]["model"]["recall_all@200"]
    pop = res["attention"]["most_popular"]["recall_all@200"]
    att50 = res["attention"]["model"]["recall_all@50"]
    two50 = res["two_tower"]["model"]["recall_all@50"]
    print(json.dumps({"attention": att, "most_popular": pop, "attention@50": att50,
                      "two_tower@50": two50}))
    assert att >= pop + MIN_MARGIN_OVER_POPULAR, res
    assert att50 >= two50 + MIN_MARGIN_OVER_TWO_TOWER, res


def test_checkpoint_files_and_reload_same_scores(ci_dataset, attention_model_dir):
    ds = Dataset.load(ci_dataset)
    m1, _, _ = load_trained_model(attention_model_dir)
    m2, _, _ = load_trained_model(attention_model_dir)
    hist = ds.test.hist[:8]
    items = np.tile(np.arange(1, 21, dtype=np.int32), (8, 1))
    a = m1({"hist": hist, "items": items}).numpy()
    b = m2({"hist": hist, "items": items}).numpy()
    np.testing.assert_array_equal(a, b)
    ckpts = sorted((attention_model_dir / "checkpoints").glob("epoch-*.weights.h5"))
    assert ckpts, "an epoch checkpoint is written"
    assert list((attention_model_dir / "logs").rglob("*tfevents*")), "TensorBoard logs"
    assert not (attention_model_dir / "backup").exists(), "backup removed after success"


def _tiny_config(**train):
    cfg = load_config("ci-synth", {"data.max_len": 10, "model.embedding_dim": 8,
                                   "model.item_hidden": [8], "model.user_hidden": [8],
                                   "model.score_hidden": [8], "train.batch_size": 64,
                                   "train.num_negatives": 8, "train.steps_per_epoch": 4,
                                   **{f"train.{k}": v for k, v in train.items()}})
    return cfg


class _Interrupt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == 1 and batch == 1:
            raise KeyboardInterrupt

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch


def test_interrupted_run_resumes_from_backup(tiny_dataset, tmp_path):
    cfg = _tiny_config(epochs=3)
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_dataset, out, verbose=0, extra_callbacks=[_Interrupt()])
    assert (out / "backup").exists() and not (out / "model.json").exists()
    summary = train(cfg, tiny_dataset, out, verbose=0)
    assert summary["epochs_run_now"] == 2, "resumed after the finished first epoch"
    assert (out / "model.json").exists()
    assert len(list((out / "checkpoints").glob("epoch-*.weights.h5"))) == 3
    # A different config must not silently continue someone else's interrupted run.
    out2 = tmp_path / "model2"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_dataset, out2, verbose=0, extra_callbacks=[_Interrupt()])
    with pytest.raises(TrainError, match="different configuration"):
        train(_tiny_config(epochs=3, learning_rate=0.1), tiny_dataset, out2, verbose=0)


class _InterruptAtStep(keras.callbacks.Callback):
    """Raises KeyboardInterrupt after the ``at``-th step of this process (1-based)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt


def _weights(model_dir):
    model, _, _ = load_trained_model(model_dir)
    return [w.numpy() for w in model.weights]


def test_mid_epoch_resume_trains_exactly_the_uninterrupted_model(tiny_dataset, tmp_path):
    """4 steps per epoch, 3 epochs (12 steps), backups every 3 steps and at epoch ends (3, 4,
    6, 8, 9, 12). Interrupted at step 7 (backup 6: mid epoch 2; step 7 is redone), then at the
    4th step of the resumed run (global 10; backup 9: mid epoch 3, reached by a resumed partial
    epoch that counted on), the third start finishes. The model equals, weight for weight, one
    trained without interruption: the optimizer state came back and the data continued at the
    step after each backup."""
    cfg = _tiny_config(epochs=3, backup_every_steps=3, jit_compile=False)
    ref = train(cfg, tiny_dataset, tmp_path / "ref", verbose=0)
    assert ref["steps_run_now"] == 12 and ref["resumed_at_step"] == 0
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_dataset, out, verbose=0, extra_callbacks=[_InterruptAtStep(7)])
    state = json.loads((out / "backup" / "state.json").read_text())
    assert state["global_step"] == 6
    assert [p.name for p in (out / "backup").glob("trainer-*.h5")] == [state["weights"]]
    # Validation (every epoch: steps 4, 8, 12) keeps one best-weights file, the one the state
    # names.
    assert [p.name for p in (out / "backup").glob("best-*.h5")] == [
        state["validation"]["best_weights"]]
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_dataset, out, verbose=0, extra_callbacks=[_InterruptAtStep(4)])
    assert json.loads((out / "backup" / "state.json").read_text())["global_step"] == 9
    summary = train(cfg, tiny_dataset, out, verbose=0)
    assert summary["resumed_at_step"] == 9 and summary["steps_run_now"] == 3
    assert summary["epochs_run_now"] == 1  # the rest of epoch 3
    assert not (out / "backup").exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("*.h5")) == [
        "epoch-001.weights.h5", "epoch-002.weights.h5", "epoch-003.weights.h5"]
    for a, b in zip(_weights(tmp_path / "ref"), _weights(out)):
        np.testing.assert_array_equal(a, b)


class _SlowSteps(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        import time

        time.sleep(0.05)


def test_time_box_stops_training_validates_the_last_step_and_writes_the_model(
        tiny_dataset, tmp_path):
    """[train] max_seconds: 4,000 steps asked, a 3 s box: the run stops after the step that
    ends the box, validates at that step (the model written is the best validated), and
    records that the box ended it; 0 is no box, a negative value a config error."""
    from nann_tf.config import ConfigError

    cfg = _tiny_config(epochs=1000, max_seconds=3.0, val_every_steps=10)
    out = tmp_path / "boxed"
    summary = train(cfg, tiny_dataset, out, verbose=0, extra_callbacks=[_SlowSteps()])
    steps = summary["steps_run_now"]
    assert summary["time_box_reached"] is True and 1 <= steps < 4000 - 1
    _, _, info = load_trained_model(out)
    history = info["validation"]["history"]
    assert history[-1]["step"] == steps, "the box's last step is validated"
    assert info["train_summary"]["time_box_reached"] is True
    free = _tiny_config()
    unboxed = train(free, tiny_dataset, tmp_path / "free", verbose=0)
    assert unboxed["time_box_reached"] is False
    assert unboxed["steps_run_now"] == free.train.epochs * 4
    with pytest.raises(ConfigError, match=r"max_seconds must be >= 0"):
        _tiny_config(max_seconds=-1)
    with pytest.raises(ConfigError, match=r"max_seconds is not supported with strategy"):
        _tiny_config(max_seconds=5, strategy="multi_worker")


def test_cli_bad_inputs(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "m"
    assert run_cli("train", "--config", "no-such-config", "--data", tiny_dataset,
                   "--output", out) == 2
    assert "no-such-config" in capsys.readouterr().err
    assert run_cli("train", "--config", "ci-synth", "--data", tmp_path / "missing",
                   "--output", out) == 2
    assert "missing" in capsys.readouterr().err
    assert run_cli("train", "--config", "ci-synth", "--data", tiny_dataset, "--output", out,
                   "--set", "train.bogus=1") == 2
    assert "bogus" in capsys.readouterr().err
    assert run_cli("train", "--config", "ci-synth", "--data", tiny_dataset, "--output", out,
                   "--set", "model.variant=transformer") == 2
    assert "variant" in capsys.readouterr().err
    assert run_cli("train", "--config", "ci-synth", "--data", tiny_dataset, "--output", out,
                   "--set", "epochs3") == 2
    assert "SECTION.KEY=VALUE" in capsys.readouterr().err
    assert not out.exists() or not (out / "model.json").exists()


def test_finished_model_is_not_overwritten(tiny_dataset, tmp_path, capsys):
    cfg = _tiny_config(epochs=1)
    out = tmp_path / "model"
    train(cfg, tiny_dataset, out, verbose=0)
    before = (out / "model.weights.h5").read_bytes()
    with pytest.raises(TrainError, match="already holds a trained model"):
        train(cfg, tiny_dataset, out, verbose=0)
    assert (out / "model.weights.h5").read_bytes() == before
    (out / "model.weights.h5").write_bytes(b"garbage")
    with pytest.raises(ModelDirError, match="cannot load the weights"):
        load_trained_model(out)


def test_warm_start_carries_weights_by_raw_id(tiny_dataset, tmp_path, capsys):
    """A model trained on day 1 seeds the model of day 2, whose catalogue lost the even items
    and gained new ones: every item both days know gets its day-1 row, a new item keeps its
    fresh initialisation, every other weight is day 1's; another [model] table is refused
    naming the weight."""
    from nann_tf.data.prepare import prepare_dataset
    from nann_tf.model.saved import build_model
    from nann_tf.train.warm_start import warm_start

    day1 = tmp_path / "day1"
    cfg = _tiny_config()
    train(cfg, tiny_dataset, day1, verbose=0)
    old, _, _ = load_trained_model(day1)
    log1 = tiny_dataset.parent / "log.csv"
    rows = []
    for line in log1.read_text().splitlines():  # user,item,category,behaviour,time
        f = line.split(",")
        if int(f[1]) % 2 == 0:
            f[1] = str(int(f[1]) + 100_000)  # an even item is withdrawn, a new one launched
        rows.append(",".join(f))
    (tmp_path / "log2.csv").write_text("\n".join(rows) + "\n")
    prepare_dataset(tmp_path / "log2.csv", tmp_path / "data2", "userbehavior", max_len=10,
                    val_users=20, test_users=20)
    ds1, ds2 = Dataset.load(tiny_dataset), Dataset.load(tmp_path / "data2")
    new = build_model(cfg, ds2.num_items, ds2.num_categories, ds2.item_category,
                      max_len=ds2.max_len)
    new.build_all(ds2.max_len)
    fresh = new.item_id_embedding.embeddings.numpy().copy()
    report = warm_start(new, ds2, day1)
    rows1 = {int(r): i for i, r in enumerate(ds1.raw_item_id) if i}
    table, old_table = new.item_id_embedding.embeddings.numpy(), \
        old.item_id_embedding.embeddings.numpy()
    kept = 0
    for i in range(1, ds2.num_items + 1):
        raw = int(ds2.raw_item_id[i])
        if raw in rows1:
            np.testing.assert_array_equal(table[i], old_table[rows1[raw]])
            kept += 1
        else:
            assert raw >= 100_000
            np.testing.assert_array_equal(table[i], fresh[i])
    assert report["items_kept"] == kept > 0 and report["items_new"] == ds2.num_items - kept > 0
    assert report["items_dropped"] == ds1.num_items - kept > 0
    np.testing.assert_array_equal(new.item_network.weights[0].numpy(),
                                  old.item_network.weights[0].numpy())
    # Through the CLI: the model records where it started from.
    out = tmp_path / "day2"
    assert run_cli("train", "--config", "ci-synth", "--data", tmp_path / "data2", "--output",
                   out, "--warm-start", day1, *sum((["--set", f"{k}={v}"] for k, v in {
                       "data.max_len": 10, "model.embedding_dim": 8, "model.item_hidden": "[8]",
                       "model.user_hidden": "[8]", "model.score_hidden": "[8]",
                       "train.batch_size": 64, "train.num_negatives": 8,
                       "train.steps_per_epoch": 4}.items()), [])) == 0
    _, _, info = load_trained_model(out)
    assert info["warm_start"]["items_kept"] == kept
    assert run_cli("train", "--config", "ci-synth", "--data", tmp_path / "data2", "--output",
                   tmp_path / "other", "--warm-start", day1, "--set", "data.max_len=10") == 2
    assert "--warm-start" in capsys.readouterr().err
