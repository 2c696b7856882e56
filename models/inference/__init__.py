"""Inference: large-raster tiled prediction to COGs (used by workers, the service's tasks and the CLI)."""
from core.raster.tiling import PredictOptions
from models.inference.tiled import PredictionCancelled, PredictionResult, WindowModel, predict_raster

__all__ = ["PredictOptions", "PredictionCancelled", "PredictionResult", "WindowModel", "predict_raster"]
