#!/usr/bin/env bash
# Runs the workspace's test suite for aarch64 under qemu-user: static test
# binaries and static program binaries (the end-to-end tests start the real
# registry and sidecar, emulated too), each run wrapped in `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/toolchain.sh
ensure_toolchain no
cross_env
target=aarch64-unknown-linux-gnu
start=$(date +%s)
echo "== building the workspace for $target (profile qemu)"
"$DEB_CARGO" build --locked --profile qemu --target "$target" --workspace --bins
# Doctests are left out: rustdoc would need the target's std too, and the
# workspace has none.
tests=(--lib --bins --tests)
"$DEB_CARGO" test --locked --profile qemu --target "$target" --workspace "${tests[@]}" --no-run
echo "== running the tests under qemu-aarch64"
# Test binaries are run by cargo through the runner in cross_env; programs
# they start are run through this one.
export CHATIXIA_BIN_RUNNER="qemu-aarch64-static"
"$DEB_CARGO" test --locked --profile qemu --target "$target" --workspace "${tests[@]}" --no-fail-fast
echo "== aarch64 suite took $(($(date +%s) - start)) s"
