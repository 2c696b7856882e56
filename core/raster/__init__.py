"""Raster I/O: grids, scenes (windowed reads with valid masks), labels, statistics, domains, validation."""
