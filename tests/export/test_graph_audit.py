"""The SavedModel audit of variable reads: a gathered variable that is also read densely."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from nann_tf.export.graph_audit import copy_on_read_hazards, variable_reads


class _Tables(tf.Module):
    """Two tables; ``dense_table``'s signatures read it whole, ``gathered``'s gather from
    both (the gather inside a while loop and a cond, as the beam search's are)."""

    def __init__(self, gather_from_dense: bool):
        super().__init__()
        self.table = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2), name="table")
        self.ids = tf.Variable(np.arange(6, dtype=np.int64), name="ids")
        self.gather_from_dense = gather_from_dense

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
    def gathered(self, idx):
        def body(i, acc):
            rows = tf.cond(i > 0, lambda: tf.gather(self.table, idx),
                           lambda: tf.zeros([tf.size(idx), 2]))
            return i + 1, acc + tf.reduce_sum(rows)

        _, total = tf.while_loop(lambda i, _: i < 2, body, [0, 0.0])
        picked = (tf.gather(self.ids, idx) if self.gather_from_dense
                  else tf.gather(tf.identity(self.ids.read_value()), idx))
        return {"total": total, "ids": picked}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def dense(self, raw):
        return {"pos": tf.searchsorted(self.ids.read_value(), raw)}


def _save(tmp_path, gather_from_dense: bool) -> str:
    m = _Tables(gather_from_dense)
    path = str(tmp_path / ("hazard" if gather_from_dense else "clean"))
    tf.saved_model.save(m, path, signatures={"gathered": m.gathered.get_concrete_function(),
                                             "dense": m.dense.get_concrete_function()})
    return path


def test_a_variable_gathered_by_one_signature_and_read_whole_by_another_is_a_hazard(tmp_path):
    hazard = _save(tmp_path, gather_from_dense=True)
    assert copy_on_read_hazards(hazard) == {
        "ids": {"gathered_by": ["gathered"], "read_densely_by": ["dense"]}}
    reads = variable_reads(hazard)
    # Followed through the while loop and the cond into the gather of the other table.
    assert reads["table"]["gather"] == {"gathered"} and not reads["table"]["dense"]


def test_gathering_from_one_dense_read_is_not_a_hazard(tmp_path):
    clean = _save(tmp_path, gather_from_dense=False)
    assert copy_on_read_hazards(clean) == {}
    assert variable_reads(clean)["ids"]["dense"] == {"gathered", "dense"}
