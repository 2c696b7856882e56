"""API routers, one module per resource (plural nouns)."""
