"""Serving side of nann-tf: the TF Serving-compatible loader, local gRPC server and client.

Production serving is stock TensorFlow Serving (``tensorflow_model_server``, see
``serving/README.md``). This package holds what talks to it or stands in for it:

- :mod:`nann_tf.serving.loader` -- loads a SavedModel version the way TF Serving does (TF1
  session loader) and runs its signatures with request validation.
- :mod:`nann_tf.serving.warmup` -- writes and reads ``assets.extra/tf_serving_warmup_requests``.
- :mod:`nann_tf.serving.server` -- a development gRPC server with TF Serving's
  PredictionService / ModelService API (``nann-tf serve``).
- :mod:`nann_tf.serving.client` -- :class:`RetrievalClient` (also ``nann_tf.client``) and
  ``nann-tf query``.

Nothing is imported here: ``nann-tf --help`` must stay free of TensorFlow imports.
"""

__all__: list[str] = []
