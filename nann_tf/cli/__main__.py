"""``python -m nann_tf.cli ...`` is ``nann-tf ...``."""

import sys

from nann_tf.cli import main

sys.exit(main())
