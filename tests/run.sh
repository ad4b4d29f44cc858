#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine, as root: installs what it needs
# (apt packages, a virtualenv with the package), then runs pytest. The OpenNebula-side
# tests run a second time against pyone 6.10 (OpenNebula 6.10 LTS) in .venv-pyone6.
# Extra arguments go to pytest instead (one run, current pyone): bash tests/run.sh -k hairpin
# Tests run on $PYTEST_WORKERS pytest-xdist workers (default 2; 0 = in one process): the
# namespace labs are parallel-safe. The long reliability rounds are marked `slow` and run
# by default; bash tests/run.sh -m "not slow" leaves them out.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
bash scripts/install-deps.sh "$here/.venv"
parallel=(-n "${PYTEST_WORKERS:-2}" --dist loadgroup)
if [ "$#" -gt 0 ]; then
    exec "$here/.venv/bin/python" -m pytest -q "${parallel[@]}" "$@"
fi
SKIP_APT=1 bash scripts/install-deps.sh "$here/.venv-pyone6" 'pyone==6.10.5'
echo "== OpenNebula side with pyone $("$here/.venv-pyone6/bin/python" -c 'import importlib.metadata as m; print(m.version("pyone"))')"
"$here/.venv-pyone6/bin/python" -m pytest -q -p no:cacheprovider "${parallel[@]}" tests/one \
    --ignore=tests/one/test_wheel.py  # packaging, not pyone: once, in the run below
echo "== everything with pyone $("$here/.venv/bin/python" -c 'import importlib.metadata as m; print(m.version("pyone"))')"
exec "$here/.venv/bin/python" -m pytest -q "${parallel[@]}"
