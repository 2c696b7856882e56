"""Inference: large-raster windowed prediction to COGs (workers, the CLI), and windows with a margin of
context for live map tiles."""
from core.raster.prediction_windows import PredictOptions
from models.inference.windowed import PredictionCancelled, PredictionResult, WindowModel, predict_raster

__all__ = ["PredictOptions", "PredictionCancelled", "PredictionResult", "WindowModel", "predict_raster"]
