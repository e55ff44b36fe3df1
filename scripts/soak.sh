#!/usr/bin/env bash
# A bounded soak-and-chaos run (tests/src/bin/soak.rs): sidecars on their
# own NAT lab sites, a registry with its relay, agents exchanging
# sequence-numbered messages, and faults on a schedule. It stops by itself
# and prints a report; exit 1 when it found a defect. Needs root (network
# namespaces); installs the lab's tools like the test command does.
#
#   scripts/soak.sh                                  20 sidecars, 30 minutes, a fault a minute
#   scripts/soak.sh --sidecars 6 --minutes 3 --fault-every 15
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then
    echo "the soak run builds network namespaces: run it as root" >&2
    exit 2
fi
scripts/netlab-deps.sh
# One package per build, as bench/run.sh does (features stay per binary).
for package in chatixia-registry chatixia-sidecar; do
    cargo build --release --locked --bins -p "$package"
done
cargo build --release --locked -p chatixia-e2e --bin soak --bin netprobe --bin impair
export CHATIXIA_REQUIRE_NETLAB=1
exec target/release/soak "$@"
