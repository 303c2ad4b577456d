"""Training the NANN model: the NCE + FGSM step, the noise distribution, and ``fit``.

- :mod:`nann_tf.train.step` -- :class:`NANNTrainer`, the Keras training step;
- :mod:`nann_tf.train.noise` -- :class:`NoiseDistribution`, unigram^alpha negatives (alias table);
- :mod:`nann_tf.train.input` -- :class:`InputPipeline`, the tf.data input (sharded, seeded);
- :mod:`nann_tf.train.fit` -- :func:`train` (strategy, checkpoints, resume, multi-worker).

A trained model is saved and loaded by :mod:`nann_tf.model.saved`.
"""

from nann_tf.train.fit import TrainError, make_strategy, remove_training_state, train, worker_role
from nann_tf.train.input import NEGATIVE_MODES, InputError, InputPipeline, TrainSamples
from nann_tf.train.noise import NoiseDistribution
from nann_tf.train.step import NANNTrainer

__all__ = ["train", "TrainError", "make_strategy", "worker_role", "remove_training_state",
           "NoiseDistribution", "NANNTrainer", "InputPipeline", "InputError", "TrainSamples",
           "NEGATIVE_MODES"]
