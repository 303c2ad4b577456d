"""Warm-up records: write -> read round trip, TF Serving's limits, atomic writes."""

import os

import numpy as np
import pytest

from nann_tf.serving import warmup
from nann_tf.serving.warmup import (MAX_WARMUP_RECORDS, WarmupError, read_warmup_requests,
                                    write_warmup_requests)


def _inputs(rng, batch):
    return {
        "hist_item_ids": rng.integers(0, 10**12, size=(batch, 7), dtype=np.int64),
        "k": rng.integers(1, 50, size=(batch,), dtype=np.int32),
        "ef": rng.integers(1, 500, size=(batch, 3), dtype=np.int32),
        "w": rng.standard_normal((batch, 2)).astype(np.float32),
    }


def test_round_trip_keeps_every_record_and_signature(tmp_path):
    rng = np.random.default_rng(0)
    records = [_inputs(rng, b) for b in (1, 2, 5)]
    path = write_warmup_requests(tmp_path / "w", "nann", "retrieve",
                                 records + [("serving_default", {"hist_item_ids": records[0][
                                     "hist_item_ids"]})])
    back = read_warmup_requests(path)
    assert len(back) == 4
    for rec, original in zip(back[:3], records):
        assert (rec.model_name, rec.signature_name) == ("nann", "retrieve")
        assert set(rec.inputs) == set(original)
        for alias, arr in original.items():
            assert rec.inputs[alias].dtype == arr.dtype
            np.testing.assert_array_equal(rec.inputs[alias], arr)
    assert back[3].signature_name == "serving_default"
    assert set(back[3].inputs) == {"hist_item_ids"}


def test_records_are_prediction_logs_tf_serving_can_parse(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = write_warmup_requests(tmp_path / "w", "m", "serving_default",
                                 [{"hist_item_ids": np.array([[1, 2, 3]], np.int64)}])
    raw = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    assert len(raw) == 1
    log = prediction_log_pb2.PredictionLog.FromString(raw[0])
    assert log.WhichOneof("log_type") == "predict_log"
    req = log.predict_log.request
    assert req.model_spec.name == "m" and req.model_spec.signature_name == "serving_default"
    np.testing.assert_array_equal(tf.make_ndarray(req.inputs["hist_item_ids"]), [[1, 2, 3]])


def test_version_dir_path_writes_into_assets_extra(tmp_path):
    version = tmp_path / "7"
    version.mkdir()
    (version / "saved_model.pb").write_bytes(b"")
    path = write_warmup_requests(version, "m", "s", [{"x": np.zeros((1, 2), np.int64)}])
    assert path == os.path.join(str(version), "assets.extra", "tf_serving_warmup_requests")
    assert len(read_warmup_requests(version)) == 1


def test_directory_that_is_not_a_version_is_refused(tmp_path):
    with pytest.raises(WarmupError, match="saved_model.pb"):
        write_warmup_requests(tmp_path, "m", "s", [{"x": np.zeros((1, 2))}])


def test_record_limit_is_tf_servings(tmp_path):
    one = {"x": np.zeros((1, 1), np.int64)}
    path = write_warmup_requests(tmp_path / "ok", "m", "s", [one] * MAX_WARMUP_RECORDS)
    assert len(read_warmup_requests(path)) == MAX_WARMUP_RECORDS
    with pytest.raises(WarmupError, match="1001 warm-up records"):
        write_warmup_requests(tmp_path / "too_many", "m", "s", [one] * (MAX_WARMUP_RECORDS + 1))
    assert not (tmp_path / "too_many").exists()


def test_reader_refuses_more_than_1000_records(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(warmup.make_predict_request("m", "s", {"x": [[1]]}))
    path = str(tmp_path / "w")
    with tf.io.TFRecordWriter(path) as w:
        for _ in range(MAX_WARMUP_RECORDS + 1):
            w.write(log.SerializeToString())
    with pytest.raises(WarmupError, match="more than 1000"):
        read_warmup_requests(path)


@pytest.mark.parametrize("bad, match", [
    ([], "empty"),
    ([{"x": [[1, 2], [3]]}], "record 0.*'x'"),
    ([{"x": [[1]]}, {}], "record 1"),
    ([{3: [[1]]}], "record 0.*strings"),
])
def test_bad_records_are_refused_with_the_record_named(tmp_path, bad, match):
    with pytest.raises(WarmupError, match=match):
        write_warmup_requests(tmp_path / "w", "m", "s", bad)


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "w"
    write_warmup_requests(path, "m", "s", [{"x": np.ones((1, 1), np.int64)}])
    before = path.read_bytes()
    with pytest.raises(WarmupError):
        write_warmup_requests(path, "m", "s", [{"x": np.ones((1, 1))}, {"y": [[1], [2, 3]]}])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w"]  # no temp file left behind


def test_reader_errors_name_the_problem(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    with pytest.raises(FileNotFoundError):
        read_warmup_requests(tmp_path / "missing")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01not a tfrecord file at all" * 4)
    with pytest.raises(WarmupError, match="TFRecord"):
        read_warmup_requests(garbage)
    classify = prediction_log_pb2.PredictionLog()
    classify.classify_log.request.model_spec.name = "m"
    path = str(tmp_path / "classify")
    with tf.io.TFRecordWriter(path) as w:
        w.write(classify.SerializeToString())
    with pytest.raises(WarmupError, match="classify_log"):
        read_warmup_requests(path)
