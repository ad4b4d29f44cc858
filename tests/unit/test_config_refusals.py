"""Config values that cannot be right are refused with one line naming key and value
(issue 10, part 5): each case here loaded without a word before."""

import pytest

from one_ipfloater.config import ConfigError, parse_config_text

GOOD = """
[IPFLOATER]
IP_POOL = 198.51.100.10-198.51.100.20
PRIVATE_IP_RANGES = 10.77.0.0/24
"""


def with_ranges(ranges: str) -> str:
    return GOOD.replace("10.77.0.0/24", ranges)


REFUSED = [
    # (config text, the whole error line after "test.conf: ")
    (GOOD + "REST_PORT = 0\n", "REST_PORT: '0' must be between 1 and 65535"),
    (GOOD + "REST_PORT = ٧٠٠٣\n", "REST_PORT: '٧٠٠٣' is not a number (whole, ASCII digits only)"),
    (GOOD + "REST_PORT = 7_003\n", "REST_PORT: '7_003' is not a number (whole, ASCII digits only)"),
    (GOOD + "REST_PORT = +7003\n", "REST_PORT: '+7003' is not a number (whole, ASCII digits only)"),
    (GOOD + "REST_PORT = 7003 # api\n", "REST_PORT: '7003 # api' is not a number (whole, ASCII digits only)"),
    (GOOD + "MAX_BODY_BYTES = ６５５３６\n", "MAX_BODY_BYTES: '６５５３６' is not a number (whole, ASCII digits only)"),
    (GOOD + "RECONCILE_INTERVAL = 0\n", "RECONCILE_INTERVAL: '0' must be between 1 and 86400"),
    (GOOD + "RECONCILE_INTERVAL = 0.5\n", "RECONCILE_INTERVAL: '0.5' must be between 1 and 86400"),
    (GOOD + "RECONCILE_INTERVAL = ３0\n",
     "RECONCILE_INTERVAL: '３0' is not a number (ASCII digits and at most one dot)"),
    (GOOD + "RECONCILE_INTERVAL = 3e1\n", "RECONCILE_INTERVAL: '3e1' is not a number (ASCII digits and at most one dot)"),
    (GOOD + "RECONCILE_INTERVAL = nan\n", "RECONCILE_INTERVAL: 'nan' is not a number (ASCII digits and at most one dot)"),
    (GOOD + "REQUEST_TIMEOUT = infinity\n", "REQUEST_TIMEOUT: 'infinity' is not a number (ASCII digits and at most one dot)"),
    (with_ranges("127.0.0.0/8"),
     "PRIVATE_IP_RANGES: 127.0.0.0/8 overlaps loopback (127.0.0.0/8), which no VM address can be"),
    (with_ranges("10.77.0.0/24, 127.0.0.1"),
     "PRIVATE_IP_RANGES: 127.0.0.1/32 overlaps loopback (127.0.0.0/8), which no VM address can be"),
    (with_ranges("169.254.0.0/24"),
     "PRIVATE_IP_RANGES: 169.254.0.0/24 overlaps link-local (169.254.0.0/16), which no VM address can be"),
    (with_ranges("239.1.0.0/16"),
     "PRIVATE_IP_RANGES: 239.1.0.0/16 overlaps multicast (224.0.0.0/4), which no VM address can be"),
    (with_ranges("0.0.0.0/0"),
     "PRIVATE_IP_RANGES: 0.0.0.0/0 overlaps 'this network' (0.0.0.0/8), which no VM address can be"),
    (with_ranges("0.0.0.0/8"),
     "PRIVATE_IP_RANGES: 0.0.0.0/8 overlaps 'this network' (0.0.0.0/8), which no VM address can be"),
    (with_ranges("255.255.255.255"),
     "PRIVATE_IP_RANGES: 255.255.255.255/32 overlaps reserved or broadcast (240.0.0.0/4), which no VM address can be"),
    (GOOD + "TOKEN_FILE = /var/lib/ipfloater/ipfloater.db\n",
     "TOKEN_FILE: '/var/lib/ipfloater/ipfloater.db' is also used by DB"),
    (GOOD + "DB = /srv/x/state.db\nTOKEN_FILE = /srv/x/./state.db-wal\n",
     "TOKEN_FILE: '/srv/x/state.db-wal' is also used by DB"),
    (GOOD + "XTABLES_LOCK = /var/lib/ipfloater/ipfloater.db.lock\n",
     "XTABLES_LOCK: '/var/lib/ipfloater/ipfloater.db.lock' is also used by DB"),
    (GOOD + "TOKEN_FILE = /run/t\nXTABLES_LOCK = /run/t\n", "XTABLES_LOCK: '/run/t' is also used by TOKEN_FILE"),
    (GOOD + "DB = /var/lib/ipfloater/\n", "DB: '/var/lib/ipfloater/' must name a file"),
    (GOOD + "REST_PORT = 7003\nrest_port = 7004\n", "While reading from 'test.conf' [line  6]: option 'REST_PORT' "
                                                    "in section 'IPFLOATER' already exists"),
]


@pytest.mark.parametrize("text, message", REFUSED)
def test_refused_with_one_line_naming_key_and_value(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config_text(text, "test.conf")
    assert str(err.value) == f"test.conf: {message}"


@pytest.mark.parametrize("extra, field, value", [
    ("REST_PORT = 1\n", "rest_port", 1),
    ("REST_PORT = 65535\n", "rest_port", 65535),
    ("RECONCILE_INTERVAL = 1\n", "reconcile_interval", 1.0),
    ("RECONCILE_INTERVAL = 2.5\n", "reconcile_interval", 2.5),
    ("RECONCILE_INTERVAL =  86400 \n", "reconcile_interval", 86400.0),
    ("REQUEST_TIMEOUT = 0.1\n", "request_timeout", 0.1),
    ("DB = /srv/ipf/../ipf/state.db\n", "db_path", "/srv/ipf/state.db"),
])
def test_the_edges_still_load(extra, field, value):
    """Negative control: the refusals above are the values, not the keys."""
    assert getattr(parse_config_text(GOOD + extra), field) == value


@pytest.mark.parametrize("ranges", ["10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16", "100.64.0.0/10",
                                    "1.0.0.0/8", "223.255.255.0/24", "128.0.0.0/8"])
def test_ranges_beside_the_refused_blocks_load(ranges):
    assert parse_config_text(with_ranges(ranges)).private_ranges
