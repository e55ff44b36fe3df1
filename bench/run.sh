#!/bin/sh
# Measures the README, benchmarks footprint and speed budgets of the release binaries
# on 127.0.0.1 (nat, relay: in the NAT lab of tests/src/netlab.rs) and prints each
# figure next to its budget. Not a test: run it on an otherwise quiet machine.
#
#   bench/run.sh [SECTION] [OPTIONS]    SECTION: registry (default), sidecar, nat, relay or all
#   bench/run.sh sidecar --quick        idle CPU over 10 s instead of 60 s
#   bench/run.sh nat --nat-runs 2       2 links per pair of NAT kinds instead of 5
#                                       (needs root and scripts/netlab-deps.sh's tools,
#                                       else skipped; CHATIXIA_REQUIRE_NETLAB=1: exit 2)
#   bench/run.sh relay                  the registry's own TURN relay in the NAT lab (root too)
#   bench/run.sh --help
#
# Builds the release binaries the section starts, then the bench itself
# (tests/src/bin/bench, crate chatixia-e2e), which finds them next to its own
# executable in target/release/ (or in $CHATIXIA_BIN_DIR); CARGO_TARGET_DIR
# moves all of it, e.g. CARGO_TARGET_DIR=/tmp/t bench/run.sh nat.
# Exit status: 0 within budget, 1 a figure over budget, 2 a failed run.
set -eu
cd "$(dirname "$0")/.."

section=${1:-registry}
case "$section" in
    registry) packages="chatixia-registry" ;;
    # sidecar, nat, relay, all (and anything else, which the bench rejects): both.
    *) packages="chatixia-registry chatixia-sidecar" ;;
esac
# One package per build, as cross/build.sh does: built together, cargo would
# unify features of shared crates (the registry's ureq would get rustls).
for package in $packages; do
    cargo build --release --bins -p "$package"
done
if [ $# -eq 0 ]; then set -- "$section"; fi
exec cargo run --release -p chatixia-e2e --bin bench -- "$@"
