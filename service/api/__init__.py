"""The REST API: routes per resource, typed dependencies, one error table."""
