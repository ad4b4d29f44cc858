#!/usr/bin/env bash
# Scale benchmarks of issue 6 (thousands of floating IPs), as root:
#   bash benchmarks/run.sh [--reps N] [--reps-without N] [--quick] [--no-breakdown]
# Prints a table and writes benchmarks/RESULTS.md and benchmarks/results.json.
# Everything runs in network namespaces it creates and deletes (bench-<hex>-<n>).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -x "$here/.venv/bin/python" ]; then
    bash "$here/scripts/install-deps.sh" "$here/.venv"
fi
cd "$here"
exec "$here/.venv/bin/python" -m benchmarks.scale "$@"
