"""The HA lab's tests: two routers under keepalived with real traffic through a floating IP.

They run one at a time (one xdist group): each lab times failovers at a fraction of a
second, and two at once on a small machine measure each other more than keepalived."""

import pytest

from tests.conftest import FIGURE
from tests.support import netlab


@pytest.fixture(scope="session", autouse=True)
def _no_stale_labs():
    netlab.cleanup_stale()
    yield


@pytest.fixture
def figures(request):
    """record(figure, value): printed in the run's summary (tests/conftest.py)."""
    def record(figure: str, value) -> None:
        request.node.user_properties.append((FIGURE, ("ha", figure, str(value))))
    return record
