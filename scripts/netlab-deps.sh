#!/usr/bin/env bash
# Installs what the NAT lab of the end-to-end tests (tests/src/netlab.rs)
# needs, with Debian's apt, when something is missing: `ip` (iproute2),
# `iptables`, `conntrack`, coturn's `turnserver` and `sysctl` (procps, absent
# from minimal images). Idempotent: when all of
# them are there it returns at once, without apt or the network.
#
# coturn is a system service in Debian; the lab runs its own `turnserver`
# in a network namespace, so the package's service must never be started:
# while installing, a policy-rc.d that denies every start is in place (one
# that already denies is left as it is), and on a machine booted with
# systemd the unit is disabled afterwards.
#
# The mirror is sometimes mid-sync: `apt-get update` is retried, and one
# failing index does not stop us as long as the packages can be found.
set -euo pipefail

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# command → Debian package
declare -A want=([ip]=iproute2 [iptables]=iptables [conntrack]=conntrack [turnserver]=coturn [sysctl]=procps)

missing=()
for cmd in ip iptables conntrack turnserver sysctl; do
    # The tools live in /usr/sbin, which a non-root PATH may lack.
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null; then
        missing+=("${want[$cmd]}")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "netlab tools present (ip, iptables, conntrack, turnserver, sysctl)"
    exit 0
fi

echo "== installing the NAT lab's tools from Debian: ${missing[*]}"
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    echo "netlab-deps: need root (or sudo) to install ${missing[*]}" >&2
    exit 1
fi

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

# No service may start during the install. invoke-rc.d (and
# deb-systemd-invoke) ask /usr/sbin/policy-rc.d; exit status 101 means
# "action forbidden". An existing policy that already forbids starting
# coturn stays; otherwise ours replaces it until we are done.
policy=/usr/sbin/policy-rc.d
saved=
if [ -x "$policy" ] && { "$policy" coturn start >/dev/null 2>&1; [ $? -eq 101 ]; }; then
    :
else
    if [ -e "$policy" ]; then
        saved=$(mktemp /var/tmp/policy-rc.d.netlab-saved.XXXXXX)
        sudo_if_needed cp -p "$policy" "$saved"
    fi
    restore_policy() {
        if [ -n "$saved" ]; then sudo_if_needed mv -f "$saved" "$policy"; else sudo_if_needed rm -f "$policy"; fi
    }
    trap restore_policy EXIT
    printf '#!/bin/sh\n# scripts/netlab-deps.sh: no service starts while it installs\nexit 101\n' |
        sudo_if_needed tee "$policy" >/dev/null
    sudo_if_needed chmod 0755 "$policy"
fi

apt_update
apt_install "${missing[@]}"

if [[ " ${missing[*]} " == *" coturn "* ]]; then
    # Only where systemd runs as PID 1 (elsewhere there is nothing that
    # would start the unit at boot): keep it from starting at the next boot.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        sudo_if_needed systemctl disable coturn >/dev/null 2>&1 || true
    fi
fi

for cmd in ip iptables conntrack turnserver sysctl; do
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null; then
        echo "netlab-deps: $cmd is still missing after installing ${missing[*]}" >&2
        exit 1
    fi
done
echo "netlab tools installed: ${missing[*]}"
