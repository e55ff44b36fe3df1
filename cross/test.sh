#!/usr/bin/env bash
# Runs the workspace's test suite for an ARM target under qemu-user: static
# test binaries and static program binaries (the end-to-end tests start the
# real registry and sidecar, emulated too), each run wrapped in `timeout`.
#
#   cross/test.sh [aarch64|armv7] [CARGO TEST FILTER ARGS...]
#   cross/test.sh armv7 --test sidecar_mesh     one test file only
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-aarch64}
[ $# -gt 0 ] && shift
case "$arch" in
    aarch64) target=aarch64-unknown-linux-gnu qemu=qemu-aarch64-static armhf=no ;;
    armv7) target=armv7-unknown-linux-gnueabihf qemu=qemu-arm-static armhf=yes ;;
    *) echo "usage: cross/test.sh [aarch64|armv7] [cargo test args]" >&2; exit 2 ;;
esac
. cross/toolchain.sh
ensure_toolchain "$armhf"
cross_env
if [ "$arch" = armv7 ] && ! have_arch_std armhf; then
    echo "armv7: Debian's libstd-rust-web-dev:armhf is not installable here" >&2
    exit 3
fi
start=$(date +%s)
echo "== building the workspace for $target (profile qemu)"
"$DEB_CARGO" build --locked --profile qemu --target "$target" --workspace --bins
# Doctests are left out: rustdoc would need the target's std too, and the
# workspace has none.
if [ $# -eq 0 ]; then set -- --workspace --lib --bins --tests; fi
"$DEB_CARGO" test --locked --profile qemu --target "$target" "$@" --no-run
echo "== running the tests under $qemu"
# Test binaries are run by cargo through the runner in cross_env; programs
# they start are run through this one.
export CHATIXIA_BIN_RUNNER="$qemu"
"$DEB_CARGO" test --locked --profile qemu --target "$target" "$@" --no-fail-fast
echo "== $arch suite took $(($(date +%s) - start)) s"
