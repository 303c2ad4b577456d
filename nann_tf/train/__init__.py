"""Training the NANN model: the NCE + FGSM step, the noise distribution, and ``fit``.

- :mod:`nann_tf.train.step` -- :class:`NANNTrainer`, the Keras training step;
- :mod:`nann_tf.train.noise` -- :class:`NoiseDistribution`, unigram^alpha negatives;
- :mod:`nann_tf.train.fit` -- :func:`train` (input pipeline, strategy, checkpoints, resume).

A trained model is saved and loaded by :mod:`nann_tf.model.saved`.
"""

from nann_tf.train.fit import TrainError, batch_generator, make_strategy, remove_training_state, train
from nann_tf.train.noise import NoiseDistribution
from nann_tf.train.step import NANNTrainer

__all__ = ["train", "TrainError", "batch_generator", "make_strategy", "remove_training_state",
           "NoiseDistribution", "NANNTrainer"]
