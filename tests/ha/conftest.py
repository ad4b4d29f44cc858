"""The HA lab's tests: two routers under keepalived with real traffic through a floating IP.

They run one at a time (one xdist group): each lab times failovers at a fraction of a
second, and two at once on a small machine measure each other more than keepalived."""

import time

import pytest

from tests.conftest import FIGURE
from tests.support import netlab

FIP, VM, PORT = "203.0.113.10", 1, 8080
FLOW_BOUND = 15.0  # seconds within which traffic must flow again (a bound, not the figure)


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


class Flows:
    """A floating IP on both routers, an echo server on the VM behind it, and from the
    client a long-lived TCP stream and a ping train (every 50 ms) to it, both flowing."""

    def __init__(self, lab):
        self.lab = lab
        lab.associate_everywhere(FIP, lab.vm_ip(VM))
        self.server = lab.start_server(lab.vm_ns(VM), f"vm{VM}", tcp_port=PORT)
        self.stream = lab.start_stream(FIP, PORT)
        self.ping = lab.start_ping(FIP)
        self.wait_flowing(time.time())

    def wait_flowing(self, after, count=10, timeout=FLOW_BOUND):
        """Both flows answered `count` times after `after` (time.time())."""
        ok_stream = self.stream.wait_reply_after(after, count, timeout)
        ok_ping = self.ping.wait_reply_after(after, count, timeout)
        return ok_stream, ok_ping

    def stop(self):
        end = self.stream.stop()
        self.ping.stop()
        self.server.stop()
        return end
