"""Self-supervised pretraining methods: wrappers that learn a segmentor's backbone from unlabelled imagery.
Importing this registers every method."""
from models.pretraining.base import PRETRAINING, PretrainingMethod, build_pretraining, register_pretraining
from models.pretraining import croco, siameseim, simclr  # noqa: F401  (registration)

__all__ = ["PRETRAINING", "PretrainingMethod", "build_pretraining", "register_pretraining"]
