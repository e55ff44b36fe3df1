#!/usr/bin/env bash
# Builds the Debian packages for arm64 and armhf
# (chatixia-mesh-edge_<version>_<arch>.deb in dist/) from the static binaries
# of build.sh, the systemd units and the example configuration, then checks
# their contents and runs the packaged binaries under qemu. Uses dpkg-deb
# only: nothing to install beyond what build.sh needs.
#
#   cross/package.sh [arm64|armhf ...]     default: both
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_BUILD:-}" = 1 ] || cross/build.sh
[ $# -gt 0 ] || set -- arm64 armhf
if [ $# -gt 1 ]; then
    for one in "$@"; do SKIP_BUILD=1 "$0" "$one"; done
    exit 0
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$1
case "$arch" in
    arm64) bins=dist/aarch64-unknown-linux-gnu file_arch="ARM aarch64" qemu=qemu-aarch64-static ;;
    armhf) bins=dist/armv7-unknown-linux-gnueabihf file_arch="32-bit LSB.*ARM" qemu=qemu-arm-static ;;
    *) echo "usage: cross/package.sh [arm64|armhf ...]" >&2; exit 2 ;;
esac
[ -x "$bins/chatixia-sidecar" ] || { echo "no $arch binaries in $bins (cross/build.sh)" >&2; exit 1; }
pkg=chatixia-mesh-edge
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root

install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/chatixia" \
    "$root/usr/share/doc/$pkg/examples"
install -m 0755 "$bins/chatixia-registry" "$bins/chatixia-sidecar" "$root/usr/bin/"
install -m 0644 systemd/chatixia-registry.service systemd/chatixia-sidecar@.service "$root/lib/systemd/system/"
install -m 0640 systemd/registry.env.example "$root/etc/chatixia/registry.env"
install -m 0644 systemd/sidecar.env.example "$root/usr/share/doc/$pkg/examples/sidecar.env"
install -m 0644 examples/agent.py "$root/usr/share/doc/$pkg/examples/agent.py"
install -m 0644 README.md "$root/usr/share/doc/$pkg/README.md"

installed_kib=$(du -sk "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: chatixia-mesh edge developers <edge@chatixia.invalid>
Section: net
Priority: optional
Installed-Size: $installed_kib
Depends: adduser
Homepage: https://crates.io/crates/str0m
Description: direct, encrypted messaging between agents on small devices
 chatixia-registry is a rendezvous server (tokens, pairing, WebRTC signaling
 relay, REST API); chatixia-sidecar runs one per agent and keeps a WebRTC
 DataChannel to every approved peer, bridged to the agent over a Unix socket.
 Static binaries; systemd units chatixia-registry.service and
 chatixia-sidecar@.service.
CONTROL
echo "/etc/chatixia/registry.env" >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    getent group chatixia >/dev/null || addgroup --system chatixia
    getent passwd chatixia >/dev/null ||
        adduser --system --ingroup chatixia --no-create-home --home /var/lib/chatixia-registry chatixia
    chgrp chatixia /etc/chatixia/registry.env
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
    fi
fi
POSTINST
cat >"$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

deb=dist/${pkg}_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "== built $deb ($(stat -c %s "$deb") bytes)"

echo "== checking the package"
dpkg-deb --info "$deb" | sed -n 's/^ *\(Package\|Version\|Architecture\): /  \1: /p'
contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/chatixia-registry ./usr/bin/chatixia-sidecar \
    ./lib/systemd/system/chatixia-registry.service ./lib/systemd/system/chatixia-sidecar@.service \
    ./etc/chatixia/registry.env ./usr/share/doc/$pkg/examples/agent.py; do
    echo "$contents" | grep -q " $path\$" || { echo "missing from the package: $path" >&2; exit 1; }
done
unpacked=$stage/unpacked
dpkg-deb --extract "$deb" "$unpacked"
for bin in chatixia-registry chatixia-sidecar; do
    file "$unpacked/usr/bin/$bin" | grep -q "$file_arch.*statically linked" ||
        { echo "$bin is not a static $arch binary" >&2; exit 1; }
    timeout 60 "$qemu" "$unpacked/usr/bin/$bin" --help | head -1
done
echo "== package OK"
