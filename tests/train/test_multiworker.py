"""Multi-worker training: two worker processes on 127.0.0.1 (TF_CONFIG, MultiWorkerMirrored).

The chief writes the model once; the other worker's files go to a temporary directory that is
removed; an interrupted cluster resumes from its backups. Run as a script, this file is one
worker (``python tests/train/test_multiworker.py DATA OUTPUT [interrupt]``).
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = {"data.max_len": 10, "model.embedding_dim": 8, "model.item_hidden": [8],
        "model.user_hidden": [8], "model.score_hidden": [8], "train.batch_size": 64,
        "train.num_negatives": 8, "train.steps_per_epoch": 4, "train.epochs": 2,
        "train.strategy": "multi_worker"}


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _run_cluster(data, out, *extra, timeout=80):
    """Starts two workers, waits for both; returns [(exit status, output)]."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen([sys.executable, __file__, str(data), str(out), *extra],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    deadline = time.monotonic() + timeout
    results = []
    for p in procs:
        try:
            output, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"multi-worker training did not finish in {timeout} s")
        results.append((p.returncode, output))
    return results


def test_two_workers_train_resume_and_only_the_chief_writes(tiny_dataset, tmp_path):
    out = tmp_path / "model"
    first = _run_cluster(tiny_dataset, out, "interrupt")
    for rc, output in first:
        assert rc == 3 and "INTERRUPTED" in output, output[-3000:]
    assert (out / "backup").is_dir() and (out / "worker-1.tmp" / "backup").is_dir()
    assert not (out / "model.json").exists()

    second = _run_cluster(tiny_dataset, out)
    for rc, output in second:
        assert rc == 0, output[-3000:]
    summaries = [json.loads(o.strip().splitlines()[-1]) for _, o in second]
    assert [s["epochs_run_now"] for s in summaries] == [1, 1], "resumed after epoch 1"
    assert summaries[0]["final"]["loss"] == pytest.approx(summaries[1]["final"]["loss"])
    assert (out / "model.json").is_file() and (out / "model.weights.h5").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch-001.weights.h5", "epoch-002.weights.h5"]
    assert not (out / "worker-1.tmp").exists(), "the non-chief's files are removed"
    assert not (out / "backup").exists()
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"]["train"]["strategy"] == "multi_worker"


def _worker_main(data, out, interrupt):
    import keras

    from nann_tf.config import load_config
    from nann_tf.train import train

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:  # after epoch 1's backup, on every worker
                raise KeyboardInterrupt

    cfg = load_config("ci-synth", TINY)
    try:
        summary = train(cfg, data, out, verbose=0,
                        extra_callbacks=[Interrupt()] if interrupt else [])
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        # Stay up a moment: the peer may still be in a step's all-reduce with this worker
        # (Keras dispatches the next step before the batch-end callback runs); leaving at once
        # fails it with UnavailableError instead of its own interrupt (seen with the suite's
        # other worker loading the cores).
        time.sleep(5)
        os._exit(3)  # skip interpreter teardown (collective executors)
    print(json.dumps(summary), flush=True)
    os._exit(0)


if __name__ == "__main__":
    _worker_main(Path(sys.argv[1]), Path(sys.argv[2]), len(sys.argv) > 3)
