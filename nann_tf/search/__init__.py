"""Retrieval algorithms over the HNSW levels: beam search, HNSW search, brute force.

Submodules are imported explicitly (e.g. ``from nann_tf.search import visited``); this
package imports nothing heavy on its own.
"""
