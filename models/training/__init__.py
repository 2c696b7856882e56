"""Training: the iteration loop, lr schedules, checkpoints and the callback interface."""
