"""Adam that updates only the rows of an embedding table a batch touched ("lazy" Adam).

Keras's Adam turns a table's sparse gradient (``tf.IndexedSlices`` from a gather) into a dense
tensor and updates the table and both of its moment tables in full every step: at 4.2M items x
32 that is three 134M-float passes per step, most of the step. :class:`LazyAdam` updates, for a
sparse gradient, only the rows in the batch:

* the rows' gradients are summed per distinct row (a row seen twice gets one update with its
  summed gradient, as dense Adam would compute it);
* those rows' first and second moments and their values get Adam's update, with the same bias
  correction (the optimizer's step count);
* rows **not** in the batch are left exactly as they are: their moments do not decay and their
  values do not move. Dense Adam would keep moving them with their decaying momentum
  (``m_t = beta_1 m_{t-1}``) for a few hundred steps after their last gradient; here they wait
  until their next batch, whose update then uses the moments they had (the usual lazy-Adam
  trade: sparse rows move less between their batches);
* with decoupled weight decay (AdamW), a table row decays only in the steps that touch it.

Every sparse gradient gets this update (the item-id table's, and the small category table's);
dense gradients (every other variable) get Keras's own Adam/AdamW update. Where the op library
loads, a table's update is one op (``NannSparseAdam``: in place, over the intra-op threads)
instead of ~20 stock ops (gather, unique, segment sum, three scatters), which remain as its twin
(``fused=False``): 7 -> ~1 ms a step at 867k items (``bench/bench_train_step.py``).
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from nann_tf import ops

__all__ = ["LazyAdam", "make_optimizer"]

log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="nann_tf")
class LazyAdam(keras.optimizers.Adam):
    """Adam (``weight_decay=0``) or AdamW with sparse updates of sparse gradients."""

    def __init__(self, learning_rate=1e-3, weight_decay=0.0, fused=None, **kwargs):
        # Keras's decoupled weight decay (AdamW's) is the base optimizer's; None: off.
        super().__init__(learning_rate=learning_rate,
                         weight_decay=weight_decay if weight_decay else None, **kwargs)
        self._sparse_vars: set[str] = set()
        # The sparse update as one op (NannSparseAdam) where the op library loads; else the
        # stock ops below (its twin: the same update).
        self.fused = _op_library_loads() if fused is None else bool(fused)

    def sparse_variables(self, variables) -> None:
        """The tables updated lazily; they are left out of Keras's dense weight-decay pass
        (their touched rows decay in :meth:`update_step`)."""
        self._sparse_vars = {self._var_key(v) for v in variables}
        if self.weight_decay:
            self.exclude_from_weight_decay(var_list=list(variables))

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(b2, step)) / (1 - tf.pow(b1, step))
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        decays = bool(self.weight_decay) and self._var_key(variable) in self._sparse_vars
        if self.fused and dtype == tf.float32:
            decay = lr * tf.cast(self.weight_decay, dtype) if decays else tf.constant(0.0)
            ops.sparse_adam(_tf_variable(variable), _tf_variable(m), _tf_variable(v),
                            gradient.indices, tf.cast(gradient.values, dtype), alpha, b1, b2,
                            tf.cast(self.epsilon, dtype), decay)
            return
        rows, pos = tf.unique(tf.cast(gradient.indices, tf.int32))
        g = tf.math.unsorted_segment_sum(tf.cast(gradient.values, dtype), pos, tf.size(rows))
        m_rows = b1 * _gather_rows(m, rows) + (1 - b1) * g
        v_rows = b2 * _gather_rows(v, rows) + (1 - b2) * tf.square(g)
        self.assign(m, tf.IndexedSlices(m_rows, rows))
        self.assign(v, tf.IndexedSlices(v_rows, rows))
        delta = alpha * m_rows / (tf.sqrt(v_rows) + tf.cast(self.epsilon, dtype))
        if decays:
            delta += lr * tf.cast(self.weight_decay, dtype) * _gather_rows(variable, rows)
        self.assign_sub(variable, tf.IndexedSlices(delta, rows))

    def get_config(self):
        config = super().get_config()
        config["weight_decay"] = config.get("weight_decay") or 0.0
        return config


def _op_library_loads() -> bool:
    try:
        ops.load_library()
    except ops.OpLibraryError as error:
        log.warning("lazy Adam runs on stock TensorFlow ops (slower): %s", error)
        return False
    return True


def _tf_variable(variable):
    """The tf.Variable under a Keras variable (or the variable itself)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _gather_rows(variable, rows):
    """``variable``'s ``rows``, gathered from the variable itself (``ResourceGather``).

    ``tf.gather`` on a Keras variable reads it whole first (``ReadVariableOp``); the scatter
    updates of this optimizer put the moment tables in copy-on-read mode, in which every whole
    read copies the table: two 111 MB copies a step at 867k x 32 (20 ms of a 120 ms step,
    ``bench/bench_train_step.py``)."""
    return tf.gather(_tf_variable(variable), rows)


def make_optimizer(learning_rate: float, weight_decay: float, sparse: bool):
    """The training optimizer: :class:`LazyAdam` (``sparse``) or Keras's Adam / AdamW."""
    if sparse:
        return LazyAdam(learning_rate=learning_rate, weight_decay=weight_decay)
    if weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    return keras.optimizers.Adam(learning_rate=learning_rate)
