"""Shared pytest fixtures live in tests/helpers/; each module registers itself here once it exists."""
import importlib.util

_HELPERS = [
    "tests.helpers.postgres",
    "tests.helpers.server",
    "tests.helpers.fakenode",
    "tests.helpers.agents",
]
pytest_plugins = [m for m in _HELPERS if importlib.util.find_spec(m) is not None]
