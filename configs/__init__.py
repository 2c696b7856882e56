"""Model configs (mmengine style): ``_base_/{models,adaptation,schedules}`` and short leaves; see models.config."""
