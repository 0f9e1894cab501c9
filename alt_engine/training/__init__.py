"""ALT training: config, collator, loss and trainer side by side (TRL layout); ``run`` drives them.

``train`` fine-tunes a model on pool items in this process (or, with ``num_procs > 1``, through the
DeepSpeed launcher, see ``launch``); ``versions.train_model_version`` wraps it with the model-version rows.
"""

from .config import ZERO2_CONFIG, AltTrainConfig

__all__ = ["AltTrainConfig", "ZERO2_CONFIG"]
