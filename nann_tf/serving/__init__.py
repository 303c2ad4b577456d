"""Serving side of nann-tf: the TF Serving-compatible loader, local gRPC server and client.

Production serving is stock TensorFlow Serving (``tensorflow_model_server``, see
``serving/README.md``). This package holds what talks to it or stands in for it:

- :mod:`nann_tf.serving.tensors` -- NumPy <-> ``TensorProto`` with TF Serving's checks.
- :mod:`nann_tf.serving.loader` -- loads a SavedModel version the way TF Serving does (TF1
  session loader) and runs its signatures with request validation.
- :mod:`nann_tf.serving.warmup` -- writes and reads ``assets.extra/tf_serving_warmup_requests``.
- :mod:`nann_tf.serving.model_config` -- what the development server serves and how:
  :class:`ServedModelConfig`, :class:`VersionPolicy`, ``--model_config_file`` parsing,
  :class:`ServerOptions`.
- :mod:`nann_tf.serving.manager` -- :class:`ModelManager`: discovers, loads, hot-swaps and
  unloads model versions the way TF Serving does.
- :mod:`nann_tf.serving.server` -- :class:`ModelServer`, a development gRPC server with TF
  Serving's PredictionService / ModelService API (``nann-tf serve``).
- :mod:`nann_tf.serving.process` -- ``nann-tf serve`` in a subprocess (:class:`ServerProcess`)
  and :func:`python_module_command`, how the package starts its Python subprocesses.
- :mod:`nann_tf.serving.client` -- :class:`RetrievalClient`, the gRPC client (used by
  ``nann-tf query``).

Nothing is imported here: ``nann-tf --help`` must stay free of TensorFlow imports.
"""

__all__: list[str] = []
