#!/usr/bin/env bash
# Builds static, stripped release binaries of chatixia-registry and
# chatixia-sidecar for aarch64 (required) and armv7 (where Debian's armhf
# standard library and our crates allow it) into dist/<target>/, and prints
# their sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/toolchain.sh
ensure_toolchain yes
cross_env

build() { # $1 = rust target
    local target=$1 out=dist/$1
    echo "== building for $target"
    # One package per build: built together, cargo unifies the features of
    # shared crates, and the registry's ureq would carry the sidecar's
    # rustls support (+0.5 MB) that the registry never uses.
    for pkg in chatixia-registry chatixia-sidecar; do
        "$DEB_CARGO" build --release --locked --target "$target" -p "$pkg"
    done
    mkdir -p "$out"
    for bin in chatixia-registry chatixia-sidecar; do
        cp "$CARGO_TARGET_DIR/$target/release/$bin" "$out/$bin"
    done
}

build aarch64-unknown-linux-gnu
armv7=built
if have_arch_std armhf; then
    build armv7-unknown-linux-gnueabihf || armv7="failed (see the errors above)"
else
    armv7="skipped: Debian's libstd-rust-web-dev:armhf is not installable here"
fi

echo "== binaries"
for f in dist/*/chatixia-*; do
    printf '%-55s %9d bytes (%s MiB)\n' "$f" "$(stat -c %s "$f")" \
        "$(awk -v s="$(stat -c %s "$f")" 'BEGIN {printf "%.2f", s / 1048576}')"
done
echo "armv7: $armv7"
file dist/*/chatixia-* 2>/dev/null | sed 's/, BuildID\[sha1\]=[0-9a-f]*//' || true
