"""The registry fixtures of tests/adapters (tiny synthetic adapters, SQLite and PostgreSQL)."""

from tests.adapters.conftest import (  # noqa: F401 (fixtures)
    base_spec,
    database_url,
    home,
    kit,
    open_registry,
    postgres,
    registry,
)
