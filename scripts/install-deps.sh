#!/usr/bin/env bash
# Installs everything the lab and the tests need on a fresh Debian machine (run as root):
# the kernel tools the daemon drives, then a virtualenv with the package and its test extras.
# Usage: scripts/install-deps.sh [VENV_DIR] [EXTRA_PIP_SPEC...]
# SKIP_APT=1 skips the apt step (when a previous call in the same run already did it).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$here/.venv}"
shift || true

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: must run as root (it installs apt packages and builds network namespaces)" >&2
    exit 1
fi
if [ "${SKIP_APT:-0}" != 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # keepalived and etcd-server: the HA lab runs them in its own namespaces only. Their
    # packages would start (etcd) or enable them on this host: policy-rc.d says no, unless
    # the machine already has a policy of its own. systemd: `systemd-analyze verify` checks
    # the shipped unit files (tests/unit); a container does not boot it.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get install -y -qq --no-install-recommends \
        iptables iproute2 conntrack iputils-arping iputils-ping nftables libnftables1 util-linux \
        keepalived etcd-server systemd \
        python3 python3-venv python3-pip ca-certificates >/dev/null
    if [ -n "$policy" ]; then rm -f "$policy"; trap - EXIT; fi
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
log="$(mktemp)"
if ! { "$venv/bin/pip" install -q --upgrade pip && "$venv/bin/pip" install -q -e "$here[test]" "$@"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "install-deps: pip install failed" >&2
    exit 1
fi
rm -f "$log"
echo "install-deps: ready in $venv" >&2
