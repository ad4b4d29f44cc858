#!/usr/bin/env bash
# Scale benchmarks of issue 6 (thousands of floating IPs), as root:
#   bash benchmarks/run.sh [--reps N] [--reps-without N] [--quick] [--no-breakdown]
# Prints a table and writes benchmarks/RESULTS.md and benchmarks/results.json.
# Everything runs in network namespaces it creates and deletes (bench-<hex>-<n>).
#
# What is measured is the COMMITTED code (HEAD), exported with `git archive` to a
# temporary directory: edits in progress in the work tree cannot leak into a run
# half-way through. BENCH_WORKTREE=1 measures the work tree as it is instead.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -x "$here/.venv/bin/python" ]; then
    bash "$here/scripts/install-deps.sh" "$here/.venv"
fi
src="$here"
commit="$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "${BENCH_WORKTREE:-0}" != 1 ] && [ "$commit" != unknown ]; then
    src="$(mktemp -d /tmp/ipfloater-bench-src.XXXXXX)"
    trap 'rm -rf "$src"' EXIT
    git -C "$here" archive HEAD | tar -x -C "$src"
else
    commit="$commit (work tree)"
fi
cd "$src"
# the daemon, the clients and the hook process all import this copy of the package
export PYTHONPATH="$src" BENCH_COMMIT="$commit"
"$here/.venv/bin/python" -m benchmarks.scale \
    --results "$here/benchmarks/results.json" --markdown "$here/benchmarks/RESULTS.md" "$@"
