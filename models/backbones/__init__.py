"""Backbones registered in mmseg's MODELS beside mmseg's own (imported by models.segmentor)."""
from models.backbones import efficientnet_lite  # noqa: F401  (registers EfficientNetLite)
