"""The HNSW index over item embeddings (hnswlib build, level extraction, npz save/load)."""

from nann_tf.index.hnsw import (
    DEFAULT_START_LEVEL,
    GraphTensors,
    HnswGraph,
    HnswIndexError,
    build_hnsw,
    graph_from_hnswlib,
    graph_tensors,
    load,
    make_graph_tensors,
    to_ragged,
)

__all__ = [
    "DEFAULT_START_LEVEL",
    "GraphTensors",
    "HnswGraph",
    "HnswIndexError",
    "build_hnsw",
    "graph_from_hnswlib",
    "graph_tensors",
    "load",
    "make_graph_tensors",
    "to_ragged",
]
