"""Writing a TF Serving version: the serving module, the atomic validated export, validation.

- :mod:`nann_tf.export.module` -- :class:`RetrievalModule`, the ``tf.Module`` with the serving
  signatures;
- :mod:`nann_tf.export.export` -- :func:`export_version`, build -> save -> warm-up -> validate
  in a fresh process -> rename into place;
- :mod:`nann_tf.export.validate` -- the validation run in that process.

Nothing is imported here (the CLI lists commands without importing TensorFlow).
"""
