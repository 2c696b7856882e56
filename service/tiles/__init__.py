"""Map tiles: predicted COGs served through rio-tiler, and live tile inference answered from a disk cache."""
