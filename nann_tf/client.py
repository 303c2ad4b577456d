"""Client API for a served nann-tf model: ``from nann_tf.client import RetrievalClient``.

Re-exports :mod:`nann_tf.serving.client` (gRPC, works with TF Serving and ``nann-tf serve``).
"""

from nann_tf.serving.client import (
    PADDING_ID,
    ModelVersionState,
    Prediction,
    RetrievalClient,
    ServingError,
    pad_histories,
)

__all__ = [
    "RetrievalClient",
    "ServingError",
    "Prediction",
    "ModelVersionState",
    "pad_histories",
    "PADDING_ID",
]
