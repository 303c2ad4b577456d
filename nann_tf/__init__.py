"""nann-tf: approximate nearest neighbour retrieval under a neural similarity metric.

Pipeline: behaviour log -> ``prepare`` -> ``train`` -> ``build-index`` -> ``export`` ->
TF Serving. See README.md and ARCHITECTURE.md.
"""

__version__ = "0.1.0"
