"""Small SavedModels with the served model's signatures, for tests and the server benchmark.

The real model comes from ``nann-tf export``; the serving code only depends on the contract
(signature names, dtypes, shapes, errors), so it is tested against this stand-in that honours
the same contract with a tiny brute-force scorer:

- ``serving_default``: ``hist_item_ids`` int64 [B, L] -> ``item_ids`` int64 [B, k],
  ``scores`` float32 [B, k], ``num_scored`` int32 [B] (default parameters);
- ``retrieve``: ``hist_item_ids`` int64 [B, L], ``k`` int32 [B], ``ef`` int32 [B, S+1],
  ``T`` int32 [B, S+1], ``exclude_item_ids`` int64 [B, E] -> the same outputs; bad parameters
  fail ``tf.debugging`` asserts (``InvalidArgumentError``) whose messages name the input;
- ``brute_force``: ``hist_item_ids`` -> ``item_ids``, ``scores``.

Raw item ids are ``1000 + 7 * i``; 0 is padding; unknown ids are masked like padding. The score
is ``<mean of the history embeddings, e_v> + score_offset`` so two versions written with
different offsets answer differently.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

__all__ = ["ToyModelSpec", "write_toy_model", "raw_item_ids", "random_histories",
           "corrupt_version"]


class ToyModelSpec:
    """Shape parameters of a toy model.

    Args:
        num_items: corpus size N.
        dim: embedding size.
        history_length: L, the second dimension of ``hist_item_ids``.
        num_levels: S + 1, the length of the ``ef`` and ``T`` rows.
        default_k: k of ``serving_default`` and ``brute_force``.
        default_ef: ``ef`` per level (level 0 first) of ``serving_default``.
        default_t: ``T`` per level of ``serving_default``.
    """

    def __init__(self, num_items: int = 64, dim: int = 8, history_length: int = 6,
                 num_levels: int = 3, default_k: int = 5, default_ef=(16, 8, 4),
                 default_t=(3, 1, 0)):
        if len(default_ef) != num_levels or len(default_t) != num_levels:
            raise ValueError("default_ef and default_t need one entry per level")
        if not 1 <= default_k <= default_ef[0] <= num_items:
            raise ValueError("need 1 <= default_k <= default_ef[0] <= num_items")
        self.num_items = num_items
        self.dim = dim
        self.history_length = history_length
        self.num_levels = num_levels
        self.default_k = default_k
        self.default_ef = tuple(int(x) for x in default_ef)
        self.default_t = tuple(int(x) for x in default_t)


def raw_item_ids(num_items: int) -> np.ndarray:
    """The raw ids of a toy model's items, in index order."""
    return (1000 + 7 * np.arange(num_items)).astype(np.int64)


def random_histories(spec: ToyModelSpec, batch: int, seed: int = 0) -> np.ndarray:
    """``batch`` right-aligned histories of 1..L distinct raw ids of ``spec``'s catalogue (0 =
    padding), rows of different lengths, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    raw = raw_item_ids(spec.num_items)
    hist = np.zeros((batch, spec.history_length), np.int64)
    for i in range(batch):
        n = rng.integers(1, spec.history_length + 1)
        hist[i, -n:] = rng.choice(raw, n, replace=False)
    return hist


def _build_module(spec: ToyModelSpec, seed: int, score_offset: float):
    import tensorflow as tf

    n, L, levels = spec.num_items, spec.history_length, spec.num_levels
    rng = np.random.default_rng(seed)
    raw = raw_item_ids(n)

    class ToyRetrieval(tf.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = tf.Variable(rng.standard_normal((n, spec.dim)).astype(np.float32),
                                          name="embeddings")
            self.raw_ids = tf.Variable(raw, name="raw_ids")
            self.offset = tf.Variable(np.float32(score_offset), name="score_offset")
            self.id_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(raw),
                                                    tf.range(n, dtype=tf.int64)),
                default_value=-1)

        def _scores(self, hist_item_ids):
            idx = self.id_table.lookup(hist_item_ids)
            valid = tf.cast(idx >= 0, tf.float32)
            emb = tf.gather(self.embeddings, tf.maximum(idx, 0)) * valid[..., None]
            user = tf.reduce_sum(emb, 1) / tf.maximum(tf.reduce_sum(valid, 1), 1.0)[:, None]
            return tf.matmul(user, self.embeddings, transpose_b=True) + self.offset

        def _retrieve(self, hist_item_ids, k, ef, T, exclude_item_ids):
            checks = [
                tf.debugging.assert_greater_equal(k, 1, message="k must be >= 1"),
                tf.debugging.assert_less_equal(k, n, message=f"k must be <= {n} (items)"),
                tf.debugging.assert_greater_equal(ef, 1, message="ef must be >= 1 everywhere"),
                tf.debugging.assert_greater_equal(T, 0, message="T must be >= 0 everywhere"),
                tf.debugging.assert_less_equal(
                    k, ef[:, 0], message="k must be <= ef[:, 0] (ef at level 0)"),
            ]
            with tf.control_dependencies(checks):
                # Everything downstream (top_k, range(k)) waits for the checks: a huge k
                # must fail the assert, not allocate first.
                k = tf.identity(k)
                scores = self._scores(hist_item_ids)
            ex = self.id_table.lookup(exclude_item_ids)
            batch = tf.shape(scores)[0]
            rows = tf.broadcast_to(tf.range(batch, dtype=tf.int64)[:, None], tf.shape(ex))
            hit = tf.where(ex >= 0)
            excluded = tf.scatter_nd(
                tf.stack([tf.gather_nd(rows, hit), tf.gather_nd(ex, hit)], axis=1),
                tf.ones(tf.shape(hit)[:1], tf.int32), tf.cast(tf.shape(scores), tf.int64)) > 0
            scores = tf.where(excluded, tf.constant(-np.inf, tf.float32), scores)
            k_max = tf.reduce_max(tf.concat([k, [1]], 0))
            top_scores, top_idx = tf.math.top_k(scores, k_max)
            keep = tf.range(k_max)[None, :] < k[:, None]
            item_ids = tf.where(keep, tf.gather(self.raw_ids, top_idx), tf.zeros_like(top_idx,
                                                                                     tf.int64))
            top_scores = tf.where(keep, top_scores, tf.constant(-np.inf, tf.float32))
            num_scored = n - tf.reduce_sum(tf.cast(excluded, tf.int32), 1)
            return {"item_ids": item_ids, "scores": top_scores, "num_scored": num_scored}

        @tf.function(input_signature=[
            tf.TensorSpec([None, L], tf.int64, name="hist_item_ids"),
            tf.TensorSpec([None], tf.int32, name="k"),
            tf.TensorSpec([None, levels], tf.int32, name="ef"),
            tf.TensorSpec([None, levels], tf.int32, name="T"),
            tf.TensorSpec([None, None], tf.int64, name="exclude_item_ids"),
        ])
        def retrieve(self, hist_item_ids, k, ef, T, exclude_item_ids):
            return self._retrieve(hist_item_ids, k, ef, T, exclude_item_ids)

        @tf.function(input_signature=[tf.TensorSpec([None, L], tf.int64, name="hist_item_ids")])
        def serve(self, hist_item_ids):
            b = tf.shape(hist_item_ids)[0]
            return self._retrieve(
                hist_item_ids, tf.fill([b], spec.default_k),
                tf.tile(tf.constant([spec.default_ef], tf.int32), [b, 1]),
                tf.tile(tf.constant([spec.default_t], tf.int32), [b, 1]),
                tf.zeros([b, 0], tf.int64))

        @tf.function(input_signature=[tf.TensorSpec([None, L], tf.int64, name="hist_item_ids"),
                                      tf.TensorSpec([None], tf.int32, name="spin")])
        def busy(self, hist_item_ids, spin):
            # serving_default after spin[0] rounds of busy work: a slow request on demand.
            def body(i, x):
                return i + 1, tf.tanh(tf.matmul(x, self.embeddings[:spec.dim, :]))

            _, x = tf.while_loop(lambda i, x: i < spin[0], body,
                                 [tf.constant(0), tf.eye(spec.dim)])
            out = self.serve(hist_item_ids)
            out["scores"] = out["scores"] + 0.0 * tf.reduce_sum(x)
            return out

        @tf.function(input_signature=[tf.TensorSpec([None, L], tf.int64, name="hist_item_ids")])
        def brute_force(self, hist_item_ids):
            values, idx = tf.math.top_k(self._scores(hist_item_ids), spec.default_k)
            return {"item_ids": tf.gather(self.raw_ids, idx), "scores": values}

    return ToyRetrieval()


def write_toy_model(base_path: str | os.PathLike, version: int, *,
                    spec: ToyModelSpec | None = None, seed: int = 0, score_offset: float = 0.0,
                    warmup: bool = True, model_name: str = "toy",
                    busy_signature: bool = False) -> str:
    """Writes ``<base_path>/<version>/`` (a temp dir renamed into place, as the exporter does).

    Args:
        base_path: the model's base path (created if missing).
        version: the version number (directory name).
        spec: shape parameters (default :class:`ToyModelSpec`).
        seed: embedding seed.
        score_offset: added to every score; distinguishes versions.
        warmup: also write ``assets.extra/tf_serving_warmup_requests`` (3 records covering
            ``serving_default`` batch 1 and 4, and ``retrieve``).
        model_name: ``model_spec.name`` of the warm-up requests.
        busy_signature: add a ``busy`` signature (``hist_item_ids``, ``spin`` int32 [B]) that
            answers like ``serving_default`` after ``spin[0]`` rounds of busy work, to make a
            request slow on purpose (shutdown tests).

    Returns:
        The version directory.

    Raises:
        FileExistsError: the version directory already exists.
    """
    import tensorflow as tf

    from nann_tf.serving.warmup import write_warmup_requests

    spec = spec or ToyModelSpec()
    base_path = os.fspath(base_path)
    final = os.path.join(base_path, str(int(version)))
    if os.path.exists(final):
        raise FileExistsError(f"{final} already exists")
    os.makedirs(base_path, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_path)
    try:
        module = _build_module(spec, seed, score_offset)
        signatures = {
            "serving_default": module.serve,
            "retrieve": module.retrieve,
            "brute_force": module.brute_force,
        }
        if busy_signature:
            signatures["busy"] = module.busy
        tf.saved_model.save(module, tmp, signatures=signatures)
        if warmup:
            raw = raw_item_ids(spec.num_items)
            hist = np.zeros((4, spec.history_length), np.int64)
            hist[:, -2:] = raw[[[0, 1], [2, 3], [4, 5], [6, 7]]]
            params = {
                "hist_item_ids": hist[:2],
                "k": np.full(2, spec.default_k, np.int32),
                "ef": np.tile(np.array(spec.default_ef, np.int32), (2, 1)),
                "T": np.tile(np.array(spec.default_t, np.int32), (2, 1)),
                "exclude_item_ids": np.zeros((2, 1), np.int64),
            }
            write_warmup_requests(tmp, model_name, "serving_default", [
                {"hist_item_ids": hist[:1]},
                {"hist_item_ids": hist},
                ("retrieve", params),
            ])
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def corrupt_version(base_path: str | os.PathLike, version: int) -> str:
    """Writes a broken version: a directory whose ``saved_model.pb`` is garbage bytes.

    Returns:
        The version directory.
    """
    base_path = os.fspath(base_path)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_path)
    with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
        f.write(b"\x08\x01this is not a SavedModel protobuf\xff\xfe" * 8)
    final = os.path.join(base_path, str(int(version)))
    os.replace(tmp, final)
    return final
