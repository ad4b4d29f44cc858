#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine, as root: installs what it needs
# (apt packages, a virtualenv with the package), then runs pytest.
# Extra arguments go to pytest, e.g.: bash tests/run.sh -k hairpin
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/install-deps.sh" "$here/.venv"
cd "$here"
exec "$here/.venv/bin/python" -m pytest -q "$@"
