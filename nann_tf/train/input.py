"""The training input pipeline: ``tf.data`` end to end, deterministic for a seed, sharded.

Every step consumes one *global batch* of ``batch_size`` training samples. An epoch is a
permutation of all samples (``stateless_shuffle`` seeded by ``(seed, epoch)``), padded by
wrapping around to whole global batches; each global batch is cut into ``num_replicas``
per-replica batches, and input pipeline ``p`` (one per worker) yields only its replicas' rows.
So the workers' parts of every epoch are disjoint and together are exactly the batches one
process would see.

A per-replica batch is gathered in-graph from the dataset arrays (a parallel ``map``):

* ``hist`` int32 [b, L]: the previous (up to) L items of the sample's user, right-aligned,
  zero-padded (the layout of :func:`nann_tf.data.dataset.gather_histories`);
* ``pos`` int32 [b]: the target item;
* ``neg``: negatives from the noise distribution (unigram^alpha, add-one smoothed:
  :class:`~nann_tf.train.noise.NoiseDistribution`), drawn in-graph by alias sampling with
  stateless random ops seeded by ``(seed, row)``; ``row`` numbers per-replica batches across
  epochs, so a batch is the same whatever the parallelism or the worker count that made it:

  - ``per_example``: int32 [b, K], K draws for every sample. With ``pool_factor`` f > 1 they
    come from a per-batch *pool*: (b + A - 1) blocks of s = ceil(K / f) iid draws from the noise
    distribution (A = ceil(K / s) ~ f; ~b*K / f draws in all, the only random reads into the
    big alias table), and sample i takes the first K entries of blocks i .. i + A - 1 (pool
    entries i*s .. i*s + K - 1). A sample's K negatives are K distinct pool entries, so each
    sample's negatives are still exactly K iid draws from q (the logQ correction and the
    accidental-hit mask are unchanged); samples share pool entries (an entry serves ~f samples:
    sample i and i + d of the shuffled batch share K - d*s), a correlation between samples
    only. f = 1 is the unpooled draw (the same ops, the same values); f >= K is the most
    pooling (s = 1: windows shifted by one draw);
  - ``shared``: int32 [K], K draws per batch scored against every sample of it (the usual
    sampled-softmax trick; the loss applies the same logQ correction and masks a negative equal
    to a sample's positive).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from nann_tf.data.dataset import Dataset
from nann_tf.errors import UserError
from nann_tf.train.noise import NoiseDistribution

__all__ = ["NEGATIVE_MODES", "InputError", "TrainSamples", "InputPipeline"]

NEGATIVE_MODES = ("shared", "per_example")


def _pack_alias(prob: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """int64 ``alias << 32 | floor(prob * 2^32)`` (capped at 2^32 - 1; a column with prob 1
    is its own alias, so the cap changes nothing)."""
    threshold = np.minimum(np.floor(prob * 2.0**32), 2.0**32 - 1).astype(np.int64)
    return (alias.astype(np.int64) << 32) | threshold


class InputError(UserError, ValueError):
    """Bad input-pipeline settings (the message names the config key)."""


@dataclasses.dataclass
class TrainSamples:
    """The arrays the pipeline gathers from.

    Attributes:
      items: int32 [T] the train users' sequences, concatenated (``Dataset.train_items``).
      pos: int32 or int64 [S] flat index of each sample's target in ``items``.
      hist_len: int32 [S] how many items before ``pos`` belong to the same user, capped at L.
      max_len: L.
    """

    items: np.ndarray
    pos: np.ndarray
    hist_len: np.ndarray
    max_len: int

    def __len__(self) -> int:
        return len(self.pos)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> "TrainSamples":
        pos, start = ds.train_positions()
        return cls.from_positions(ds.train_items, pos, start, ds.max_len)

    @classmethod
    def from_positions(cls, items: np.ndarray, pos: np.ndarray, start: np.ndarray,
                       max_len: int) -> "TrainSamples":
        idx_dtype = np.int32 if len(items) < 2**31 else np.int64
        hist_len = np.minimum(np.asarray(pos) - np.asarray(start), max_len).astype(np.int32)
        return cls(np.asarray(items, np.int32), np.asarray(pos).astype(idx_dtype), hist_len,
                   int(max_len))


class InputPipeline:
    """Builds the ``tf.data`` datasets of training batches (see the module docstring).

    Args:
      samples: the arrays to gather from.
      noise: the noise distribution of the negatives.
      batch_size: the global batch (all replicas of all workers together).
      num_negatives: K.
      negatives: ``per_example`` or ``shared``.
      seed: the seed of the epoch permutations and of the negatives.
      pool_factor: per-example negatives per pool draw (``[train] negative_pool_factor``, an
        int >= 1; 1: no pool); ignored by shared negatives.
      emit_pool: with a pool, yield the pool itself, int32 ``[rows, s]`` (:meth:`pool_shape`),
        instead of each example's K ids gathered from it: the trainer then computes each draw's
        item-side tensors once (``NANNTrainer.compute_losses`` takes either layout).

    Raises:
      InputError: a bad ``negatives`` mode, pool factor or a non-positive size.
    """

    def __init__(self, samples: TrainSamples, noise: NoiseDistribution, *, batch_size: int,
                 num_negatives: int, negatives: str = "per_example", seed: int = 0,
                 pool_factor: int = 1, emit_pool: bool = False):
        if negatives not in NEGATIVE_MODES:
            raise InputError(f"[train] negatives must be one of {', '.join(NEGATIVE_MODES)}, "
                             f"got {negatives!r}")
        if batch_size <= 0 or num_negatives <= 0:
            raise InputError("[train] batch_size and num_negatives must be > 0")
        if isinstance(pool_factor, bool) or not isinstance(pool_factor, (int, np.integer)) \
                or pool_factor < 1:
            raise InputError(f"[train] negative_pool_factor must be an integer >= 1, "
                             f"got {pool_factor!r}")
        if len(samples) == 0:
            raise InputError("the dataset has no training samples")
        self.samples = samples
        self.noise = noise
        self.batch_size = int(batch_size)
        self.num_negatives = int(num_negatives)
        self.negatives = negatives
        self.seed = int(seed)
        self.pool_factor = int(pool_factor)
        self.emit_pool = bool(emit_pool)
        self.steps_per_epoch = math.ceil(len(samples) / self.batch_size)
        self._tensors = None

    def _arrays(self):
        # Created once (in the eager context), captured by reference by every dataset.
        if self._tensors is None:
            prob, alias = self.noise.alias_table()
            with tf.init_scope(), tf.device("/cpu:0"):  # eager even if first asked in a trace
                self._tensors = (tf.constant(self.samples.items), tf.constant(self.samples.pos),
                                 tf.constant(self.samples.hist_len),
                                 tf.constant(_pack_alias(prob, alias)))
        return self._tensors

    def _check_split(self, num_pipelines: int, replicas_per_pipeline: int) -> int:
        rows = num_pipelines * replicas_per_pipeline
        if self.batch_size % rows:
            raise InputError(f"[train] batch_size = {self.batch_size} must be a multiple of the "
                             f"number of replicas ({rows}: {num_pipelines} worker(s) x "
                             f"{replicas_per_pipeline} device(s)); it is the global batch")
        return self.batch_size // rows

    def sample_ids(self, *, num_pipelines: int = 1, pipeline_id: int = 0,
                   replicas_per_pipeline: int = 1, start_step: int = 0) -> tf.data.Dataset:
        """``(row, ids)`` per-replica batches of sample ids for one input pipeline, forever.

        ``row`` int64 numbers the per-replica batch among all of them (every pipeline, every
        epoch); ``ids`` int32/int64 [b] are indices into the samples. ``start_step`` skips that
        many global batches (a resumed run continues where the data stopped).
        """
        if not 0 <= pipeline_id < num_pipelines:
            raise InputError(f"input pipeline {pipeline_id} of {num_pipelines}")
        b = self._check_split(num_pipelines, replicas_per_pipeline)
        n, steps, B = len(self.samples), self.steps_per_epoch, self.batch_size
        rows_per_step = num_pipelines * replicas_per_pipeline
        R, p, seed = replicas_per_pipeline, pipeline_id, self.seed
        idx_dtype = tf.as_dtype(self.samples.pos.dtype) if len(self.samples) >= 2**31 \
            else tf.int32
        reps = math.ceil(steps * B / n)

        def epoch_rows(epoch):
            perm = tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=idx_dtype), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
            if reps > 1:
                perm = tf.tile(perm, [reps])
            grid = tf.reshape(perm[:steps * B], [steps, rows_per_step, b])[:, p * R:(p + 1) * R]
            row = (epoch * steps * rows_per_step
                   + tf.range(steps, dtype=tf.int64)[:, None] * rows_per_step
                   + p * R + tf.range(R, dtype=tf.int64)[None, :])
            return tf.data.Dataset.from_tensor_slices(
                (tf.reshape(row, [-1]), tf.reshape(grid, [steps * R, b])))

        first_epoch, skip = divmod(int(start_step), steps)
        out = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_rows)
        return out.skip(skip * R) if skip else out

    def _sample_negatives(self, row, shape):
        table = self._arrays()[3]
        n = self.noise.num_items
        # One float64 draw gives the column (integer part) and the coin (fraction, >= 22 bits);
        # one gather of the packed table gives the column's threshold and alias: the gather
        # (a random memory read) is what costs here.
        x = tf.random.stateless_uniform(shape, tf.stack([tf.constant(self.seed, tf.int64), row]),
                                        dtype=tf.float64) * n
        i = tf.minimum(tf.cast(x, tf.int32), n - 1)
        entry = tf.gather(table, i)
        threshold = tf.cast(tf.bitwise.bitwise_and(entry, 0xFFFFFFFF), tf.float64) * 2.0**-32
        alias = tf.cast(tf.bitwise.right_shift(entry, 32), tf.int32)
        return tf.where(x - tf.floor(x) < threshold, i, alias) + 1

    def _gather(self, row, ids):
        items, pos_t, hlen_t, _ = self._arrays()
        L = self.samples.max_len
        pos = tf.gather(pos_t, ids)
        hlen = tf.gather(hlen_t, ids)
        cols = tf.range(-L, 0, dtype=pos.dtype)
        valid = tf.range(-L, 0)[None, :] >= -hlen[:, None]
        hist = tf.where(valid, tf.gather(items, tf.maximum(pos[:, None] + cols[None, :], 0)), 0)
        target = tf.gather(items, pos)
        if self.negatives == "shared":
            return hist, target, self._sample_negatives(row, [self.num_negatives])
        return hist, target, self._per_example_negatives(row, ids)

    def pool_shape(self, b: int) -> tuple[int, int]:
        """``(rows, s)``: the pool of a per-replica batch of ``b`` samples, ``rows * s`` draws
        laid out as ``rows`` blocks of ``s = ceil(K / f)``; sample i takes the
        ``A = ceil(K / s)`` blocks ``i .. i + A - 1`` (their first K entries), so
        ``rows = b + A - 1``. Without a pool (f = 1): ``(b, K)``."""
        K = self.num_negatives
        s = -(-K // self.pool_factor)
        return b + -(-K // s) - 1, s

    def pool_windows(self, b: int) -> np.ndarray:
        """int32 [b, K]: the flat pool entries each sample of a batch of ``b`` takes (what
        :meth:`_per_example_negatives` gathers, written out; for tests)."""
        _, s = self.pool_shape(b)
        return (np.arange(b)[:, None] * s + np.arange(self.num_negatives)[None, :]).astype(
            np.int32)

    def _per_example_negatives(self, row, ids):
        b, K = ids.shape[0], self.num_negatives  # b is static: whole per-replica batches
        rows, s = self.pool_shape(b)
        if s == K:  # no pool (f = 1): b * K draws
            return self._sample_negatives(row, [b, K])
        pool = tf.reshape(self._sample_negatives(row, [rows * s]), [rows, s])
        if self.emit_pool:
            return pool
        # Sample i's negatives are blocks i .. i + A - 1: one gather of whole blocks (b * A
        # copies of s ids from a small, cache-resident pool; ~3x faster than gathering the
        # b * K ids one by one, and than A slices concatenated).
        blocks = np.arange(b)[:, None] + np.arange(rows - b + 1)[None, :]
        neg = tf.reshape(tf.gather(pool, tf.constant(blocks.astype(np.int32))), [b, -1])
        return neg[:, :K] if neg.shape[1] != K else neg

    def dataset(self, *, num_pipelines: int = 1, pipeline_id: int = 0,
                replicas_per_pipeline: int = 1, start_step: int = 0,
                prefetch: int = 8) -> tf.data.Dataset:
        """``(hist, pos, neg)`` per-replica batches for one input pipeline, forever (see the
        module docstring); arguments as :meth:`sample_ids`."""
        ids = self.sample_ids(num_pipelines=num_pipelines, pipeline_id=pipeline_id,
                              replicas_per_pipeline=replicas_per_pipeline,
                              start_step=start_step)
        out = ids.map(self._gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return out.prefetch(prefetch)

    def distribute(self, strategy: tf.distribute.Strategy, start_step: int = 0):
        """The input of ``fit`` under ``strategy``: one pipeline per worker, sharded by
        :meth:`dataset` (no auto-sharding), yielding per-replica batches."""
        self._arrays()
        if strategy.num_replicas_in_sync == 1 and not isinstance(
                strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return self.dataset(start_step=start_step)

        def fn(ctx: tf.distribute.InputContext):
            return self.dataset(num_pipelines=ctx.num_input_pipelines,
                                pipeline_id=ctx.input_pipeline_id,
                                replicas_per_pipeline=(ctx.num_replicas_in_sync
                                                       // ctx.num_input_pipelines),
                                start_step=start_step)

        self._check_split(1, strategy.num_replicas_in_sync)
        return strategy.distribute_datasets_from_function(fn)
