"""The registry fixtures of tests/adapters (tiny synthetic adapters, SQLite and PostgreSQL),
and `intent`: a registry holding two versions of one adapter."""

import pytest

from adapters.registry import AdapterRegistry
from tests.adapters.conftest import (  # noqa: F401 (fixtures)
    AdapterKit,
    base_spec,
    database_url,
    home,
    kit,
    open_registry,
    postgres,
    registry,
)


@pytest.fixture
def intent(registry: AdapterRegistry, kit: AdapterKit) -> AdapterRegistry:  # noqa: F811 (fixtures)
    registry.register(kit.tar_gz(kit.folder(seed=0)))
    registry.register(kit.tar_gz(kit.folder(seed=1)))
    return registry
