"""Where the tests' reference data is: the OpenNebula documents and schemas are copied into
the repository (tests/data/opennebula, provenance in SOURCES.md there) so that a clone with
nothing beside it passes."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "opennebula"
SAMPLES = DATA / "samples"
XSD = DATA / "xsd"
NOTES = DATA / "NOTES.md"
