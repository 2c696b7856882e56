"""Training data for models: window samplers over the raster data layer's domains."""
