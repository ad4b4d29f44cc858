"""Where the project's shared reference material is: `../shared` beside the checkout (as
in CI), or $IPFLOATER_SHARED_DIR. Tests that need it fail loudly when it is missing:
they are core tests, never skipped."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IPFLOATER_SHARED_DIR") or REPO.parent / "shared")
SAMPLES = SHARED / "opennebula" / "samples"
XSD = SHARED / "opennebula" / "xsd"

if not SAMPLES.is_dir():
    raise RuntimeError(f"OpenNebula samples not found at {SAMPLES}: put shared/ beside the "
                       "checkout or set IPFLOATER_SHARED_DIR")
