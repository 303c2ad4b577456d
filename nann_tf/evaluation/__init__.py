"""Offline evaluation: searching held-out users, metrics, sweeps, the paper's figures.

- :mod:`.retriever` -- :class:`Retriever` (beam / HNSW / exact search for batches of users,
  timed) and :func:`load_model_entry` (a model with its checked index);
- :mod:`.evaluate` -- the evaluation table (brute force vs beam vs HNSW vs most popular);
- :mod:`.sweep` -- parameter sweeps (paper Figs. 3, 4, 7a) and their CSV;
- :mod:`.perturbation` -- Fig. 6's score perturbation;
- :mod:`.metrics` -- recall, recall-delta, coverage; :mod:`.plots` -- the PNGs.

Nothing is imported here (the CLI lists commands without importing TensorFlow).
"""
