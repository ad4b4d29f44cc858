#!/usr/bin/env bash
# Paired before/after run, as root: the daemon code of BASE and of HEAD measured by the
# same harness (HEAD's benchmarks/), alternated (base, head, base, head, ...) so that the
# machine's drift hits both alike:
#   bash benchmarks/paired.sh BASE [--rounds N] [--out DIR] -- SCALE_ARGS...
# e.g.  bash benchmarks/paired.sh main --rounds 2 -- --reps 1 --reps-without 0 --quick --no-breakdown --live 4096
#       bash benchmarks/paired.sh main --rounds 2 -- --only-65536 --large-reps 1 --quick
# Each side is a `git archive` of its commit (one_ipfloater/ of BASE or HEAD, everything
# else of HEAD), byte-compiled, run as run.sh runs it; the raw results go to DIR
# (default a temporary directory) and `python -m benchmarks.paired DIR` prints the table.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
base="$1"; shift
rounds=2; out=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "paired.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ "${1:-}" = "--" ] && shift
tmp="$(mktemp -d /tmp/ipfloater-paired.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
out="${out:-$tmp/results}"
mkdir -p "$out"
"$here/.venv/bin/python" -m venv --without-pip "$tmp/venv"
python="$tmp/venv/bin/python"
purelib='import sysconfig; print(sysconfig.get_path("purelib"))'
"$here/.venv/bin/python" -c "$purelib" >"$("$python" -c "$purelib")/ipfloater-bench-deps.pth"
for side in base head; do
    commit="$(git -C "$here" rev-parse "$([ $side = base ] && echo "$base" || echo HEAD)")"
    mkdir "$tmp/$side"
    git -C "$here" archive HEAD | tar -x -C "$tmp/$side"
    rm -rf "$tmp/$side/one_ipfloater"
    git -C "$here" archive "$commit" one_ipfloater | tar -x -C "$tmp/$side"
    echo "$commit" >"$tmp/$side/COMMIT"
    "$python" -m compileall -q "$tmp/$side/one_ipfloater" "$tmp/$side/benchmarks" "$tmp/$side/tests/support" >/dev/null
done
for round in $(seq 1 "$rounds"); do
    for side in base head; do
        echo "[$(date +%H:%M:%S)] round $round/$rounds: $side ($(cut -c1-8 "$tmp/$side/COMMIT"))" >&2
        (cd "$tmp/$side" && PYTHONPATH="$tmp/$side" BENCH_COMMIT="$(cat "$tmp/$side/COMMIT")" \
            "$python" -m benchmarks.scale --results "$out/$side-$round.json" --markdown "$tmp/$side.md" "$@" \
            >/dev/null)
    done
done
"$here/.venv/bin/python" -m benchmarks.paired "$out"
