"""The OpenNebula-side tests' shared fixture: `env`, a daemon and an oned simulator in
process (tests/one/fipenv.py). Bound here so that test modules need no fixture import."""

from tests.one import fipenv

env = fipenv.env
