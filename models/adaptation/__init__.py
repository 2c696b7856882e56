"""Adaptation methods: wrappers that train plain segmentors. Importing this registers every method."""
from models.adaptation.base import METHODS, AdaptationMethod, build_method, register_method
from models.adaptation import feature_regression, semi, source_only, st_dasegnet  # noqa: F401  (registration)

__all__ = ["METHODS", "AdaptationMethod", "build_method", "register_method"]
