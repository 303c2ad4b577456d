"""Behaviour logs -> prepared datasets: readers, the synthetic generator, prepare, the loader.

NumPy only (no TensorFlow): ``nann-tf synth`` and ``nann-tf prepare`` stay light.
"""

from nann_tf.data.dataset import (DATASET_FORMAT, DATASET_VERSION, DataError, Dataset,
                                  HeldOut, gather_histories, popularity_topk)
from nann_tf.data.prepare import PreparedDataset, build_dataset, prepare_dataset, write_dataset
from nann_tf.data.readers import INPUT_FORMATS, BehaviorLog, read_log
from nann_tf.data.synth import (BEHAVIOR_TYPES, SynthParams, generate_log,
                                write_userbehavior_csv)

__all__ = [
    "DATASET_FORMAT",
    "DATASET_VERSION",
    "DataError",
    "Dataset",
    "HeldOut",
    "gather_histories",
    "popularity_topk",
    "PreparedDataset",
    "build_dataset",
    "prepare_dataset",
    "write_dataset",
    "INPUT_FORMATS",
    "BehaviorLog",
    "read_log",
    "BEHAVIOR_TYPES",
    "SynthParams",
    "generate_log",
    "write_userbehavior_csv",
]
