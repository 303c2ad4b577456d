"""The NANN Keras model and its training losses."""

from nann_tf.model.nann import NANNModel, all_item_embeddings, mlp
from nann_tf.model.losses import (accidental_hit_mask, fgsm_perturb, fgsm_step_size,
                                  kl_aux_loss, nce_logits, nce_loss)

__all__ = ["NANNModel", "all_item_embeddings", "mlp", "accidental_hit_mask", "fgsm_perturb",
           "fgsm_step_size", "kl_aux_loss", "nce_logits", "nce_loss"]
