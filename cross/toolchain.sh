#!/usr/bin/env bash
# Installs Debian's Rust toolchain with the aarch64 (and, where Debian ships
# it, armhf) standard library, the cross C compilers and qemu-user, unless
# they are already there. Sourced by build.sh and test.sh.
#
# Debian's rustc-web and libstd-rust-web-dev:<arch> must be the very same
# version, so the library is pinned to the compiler's version. The mirror is
# sometimes mid-sync: `apt-get update` is retried, and one failing index does
# not stop us as long as the packages can be found.
set -euo pipefail

DEB_CARGO=/usr/bin/cargo
DEB_RUSTC=/usr/bin/rustc

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_update() {
    local i
    for i in 1 2 3; do
        if sudo_if_needed apt-get update -qq; then return 0; fi
        echo "apt-get update failed (attempt $i); retrying" >&2
        sleep $((i * 3))
    done
    echo "apt-get update kept failing; trying with the indexes we have" >&2
}

apt_install() {
    local i
    for i in 1 2 3; do
        if sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
            return 0
        fi
        echo "apt-get install failed (attempt $i); refreshing the indexes" >&2
        apt_update
    done
    return 1
}

have_arch_std() { # $1 = Debian arch
    dpkg-query -W -f='${Status}' "libstd-rust-web-dev:$1" 2>/dev/null | grep -q "ok installed"
}

ensure_toolchain() {
    local want_armhf=${1:-yes}
    local missing=()
    [ -x "$DEB_CARGO" ] && [ -x "$DEB_RUSTC" ] || missing+=(rustc)
    have_arch_std arm64 || missing+=(arm64)
    command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc)
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu)
    if [ "$want_armhf" = yes ]; then
        have_arch_std armhf || missing+=(armhf)
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "== installing the cross toolchain from Debian (missing: ${missing[*]})"
    if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
        echo "need root (or sudo) to install packages" >&2
        return 1
    fi
    sudo_if_needed dpkg --add-architecture arm64
    [ "$want_armhf" = yes ] && sudo_if_needed dpkg --add-architecture armhf
    apt_update
    local version
    version=$(apt-cache policy rustc-web | awk '/Candidate:/ {print $2}')
    if [ -z "$version" ] || [ "$version" = "(none)" ]; then
        echo "Debian offers no rustc-web package here" >&2
        return 1
    fi
    apt_install "rustc-web=$version" "cargo-web=$version" "libstd-rust-web-dev:arm64=$version" \
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
    if [ "$want_armhf" = yes ]; then
        # Retried like arm64's, but not fatal here: build.sh then skips
        # armv7 and says so, and test.sh armv7 exits with status 3.
        apt_install "libstd-rust-web-dev:armhf=$version" gcc-arm-linux-gnueabihf libc6-dev-armhf-cross ||
            echo "libstd-rust-web-dev:armhf=$version is not installable; armv7 will be skipped" >&2
    fi
}

# Environment for cargo cross builds: Debian's cargo and rustc, the cross
# linkers, static linking (dynamically linked aarch64 programs hang at their
# first thread creation under qemu-user here), and a target dir of its own
# so rustup's builds and Debian's do not invalidate each other.
cross_env() {
    export CARGO_TARGET_DIR=${CROSS_TARGET_DIR:-$PWD/target/cross}
    export RUSTC=$DEB_RUSTC
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
    export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="-C target-feature=+crt-static"
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="timeout ${QEMU_TIMEOUT:-600} qemu-aarch64-static"
    export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="timeout ${QEMU_TIMEOUT:-600} qemu-arm-static"
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    export AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar
}
