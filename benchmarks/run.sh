#!/usr/bin/env bash
# Scale benchmarks of issue 6 (thousands of floating IPs), as root:
#   bash benchmarks/run.sh [--reps N] [--reps-without N] [--quick] [--no-breakdown]
#   bash benchmarks/run.sh --only-start [--reps N]    (figure 1 only; prints, writes nothing)
#   bash benchmarks/run.sh --only-65536 [--large-reps N] [--quick]   (figures 1 and 5 at 65,536)
#   bash benchmarks/run.sh --only-ha [--reps N] [--quick]   (issue 12: etcd beside SQLite, two
#       routers' throughput, failover; benchmarks/ha.py, needs keepalived and etcd; separate
#       from the full run, its figures are merged into the same results files)
# Prints a table and writes benchmarks/RESULTS.md and benchmarks/results.json (later
# --results FILE / --markdown FILE arguments override those, e.g. for a smoke run).
# Everything runs in network namespaces it creates and deletes (bench-<hex>-<n>).
#
# What is measured is the COMMITTED code (HEAD), exported with `git archive` to a
# temporary directory: edits in progress in the work tree cannot leak into a run
# half-way through. BENCH_WORKTREE=1 measures the work tree as it is instead.
#
# The interpreter: .venv holds the package as an editable install, whose .pth imports a
# finder at EVERY interpreter start (~10 ms of each process start) that an installed
# daemon never pays. So everything (benchmarks.scale, the daemon, the clients, the hook
# and its `python3 -c "import pyone, requests"` baseline) runs under a throw-away venv
# made here: its site-packages holds one .pth with the plain path of .venv's
# site-packages (a path line only extends sys.path; .pth files found there are not run),
# so the dependencies come from .venv and the package from PYTHONPATH (the copy above).
# The copy is byte-compiled first, as pip and Debian's py3compile do at install time:
# without .pyc files (and with PYTHONDONTWRITEBYTECODE set, as on this machine) every
# daemon start would compile the package's source again (~25 ms).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -x "$here/.venv/bin/python" ]; then
    bash "$here/scripts/install-deps.sh" "$here/.venv"
fi
tmp="$(mktemp -d /tmp/ipfloater-bench.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
src="$here"
commit="$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "${BENCH_WORKTREE:-0}" != 1 ] && [ "$commit" != unknown ]; then
    src="$tmp/src"
    mkdir "$src"
    git -C "$here" archive HEAD | tar -x -C "$src"
else
    commit="$commit (work tree)"
fi
"$here/.venv/bin/python" -m venv --without-pip "$tmp/venv"
python="$tmp/venv/bin/python"
purelib='import sysconfig; print(sysconfig.get_path("purelib"))'
"$here/.venv/bin/python" -c "$purelib" >"$("$python" -c "$purelib")/ipfloater-bench-deps.pth"
"$python" -m compileall -q "$src/one_ipfloater" "$src/benchmarks" "$src/tests/support" >/dev/null
cd "$src"
# the daemon, the clients and the hook process all import this copy of the package
export PYTHONPATH="$src" BENCH_COMMIT="$commit"
# keepalived's notify scripts (the HA lab) run `ipfloaterd` next to the interpreter
printf '#!%s\nimport sys\nsys.path.insert(0, %s)\nfrom one_ipfloater.daemon import main\nsys.exit(main())\n' \
    "$python" "'$src'" >"$tmp/venv/bin/ipfloaterd"
chmod 755 "$tmp/venv/bin/ipfloaterd"
module=benchmarks.scale
for arg in "$@"; do
    if [ "$arg" = --only-ha ]; then module=benchmarks.ha; fi
done
"$python" -m "$module" \
    --results "$here/benchmarks/results.json" --markdown "$here/benchmarks/RESULTS.md" "$@"
