"""Job store: SQLAlchemy 2 models and repository functions (SQLite or PostgreSQL); the source of truth."""
