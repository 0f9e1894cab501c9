"""ALT training: config, collator, loss and trainer side by side (TRL layout); ``run`` drives them.

``train`` fine-tunes a model on pool items in this process (or, with ``num_procs > 1``, through the
DeepSpeed launcher, see ``launch``); ``train_model_version`` wraps it with the model-version rows.
"""

from pathlib import Path

ZERO2_CONFIG = Path(__file__).with_name("zero2.json")  # DeepSpeed ZeRO-2, "auto" values filled by transformers

from .config import AltTrainConfig  # noqa: E402

__all__ = ["AltTrainConfig", "ZERO2_CONFIG"]
