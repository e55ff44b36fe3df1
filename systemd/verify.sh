#!/usr/bin/env bash
# Runs `systemd-analyze verify` on the unit files. verify insists that
# ExecStart= points at an executable, so it checks copies whose ExecStart
# points at the binaries built in target/ (or $1); everything else is the
# shipped text. The template is checked as instance "demo".
set -euo pipefail
cd "$(dirname "$0")/.."
bins=${1:-$PWD/target/debug}
if ! command -v systemd-analyze >/dev/null; then
    echo "== installing systemd (for systemd-analyze)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for bin in chatixia-registry chatixia-sidecar; do
    [ -x "$bins/$bin" ] || { echo "$bins/$bin is missing: build the binaries first" >&2; exit 1; }
done
sed "s|/usr/bin/chatixia-registry|$bins/chatixia-registry|" systemd/chatixia-registry.service \
    >"$work/chatixia-registry.service"
sed "s|/usr/bin/chatixia-sidecar|$bins/chatixia-sidecar|" systemd/chatixia-sidecar@.service \
    >"$work/chatixia-sidecar@demo.service"
out=$(systemd-analyze verify "$work/chatixia-registry.service" "$work/chatixia-sidecar@demo.service" 2>&1) || {
    echo "$out" >&2
    exit 1
}
# verify exits 0 on some warnings; treat any output about our units as failure.
if echo "$out" | grep -q "chatixia"; then
    echo "$out" >&2
    exit 1
fi
echo "systemd-analyze verify: both units OK"
