//! Local network facts the WebRTC layer needs (docs/PROTOCOL.md §5.4).

use std::net::IpAddr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

/// Addresses of the interfaces that are up and can carry a host ICE candidate,
/// IPv4 and IPv6, without duplicates, in the order the kernel lists them.
///
/// Loopback is included only with `allow_loopback` (`ICE_ALLOW_LOOPBACK=1`),
/// which tests on one machine need; on a real network it only adds pairs that
/// can never work between two hosts.
pub fn local_host_addresses(allow_loopback: bool) -> Vec<IpAddr> {
    let interfaces = match getifaddrs() {
        Ok(interfaces) => interfaces,
        Err(e) => {
            // No addresses just means no host candidates; peer-reflexive and
            // server-reflexive ones may still work, so this is not fatal.
            log::warn!("cannot list network interfaces: {e}");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for ifa in interfaces {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if is_usable(ip, allow_loopback) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// Whether `ip` may be offered as a host candidate.
fn is_usable(ip: IpAddr, allow_loopback: bool) -> bool {
    if ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    if ip.is_loopback() {
        return allow_loopback;
    }
    match ip {
        // str0m refuses 169.254/16 host candidates, and they are not routable.
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
        // fe80::/10 needs a scope id that SDP cannot carry, so a peer could
        // not use such a candidate.
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn filter_keeps_routable_and_drops_the_rest() {
        assert!(is_usable(ip("192.168.1.7"), false));
        assert!(is_usable(ip("10.0.0.1"), false));
        assert!(is_usable(ip("2001:db8::1"), false));
        assert!(is_usable(ip("fd00::5"), false));

        assert!(!is_usable(ip("127.0.0.1"), false));
        assert!(is_usable(ip("127.0.0.1"), true));
        assert!(!is_usable(ip("::1"), false));
        assert!(is_usable(ip("::1"), true));

        assert!(!is_usable(ip("fe80::1"), true));
        assert!(!is_usable(ip("febf::1"), true));
        assert!(is_usable(ip("fec0::1"), true));
        assert!(!is_usable(ip("169.254.3.4"), true));
        assert!(!is_usable(ip("0.0.0.0"), true));
        assert!(!is_usable(ip("::"), true));
        assert!(!is_usable(ip("224.0.0.1"), true));
        assert!(!is_usable(ip("ff02::1"), true));
        assert!(!is_usable(ip("255.255.255.255"), true));
    }

    #[test]
    fn lists_this_machine() {
        let with = local_host_addresses(true);
        let without = local_host_addresses(false);
        // Every Linux network namespace has an up loopback interface.
        assert!(with.iter().any(|a| a.is_loopback()), "{with:?}");
        assert!(!without.iter().any(|a| a.is_loopback()), "{without:?}");
        assert!(without.iter().all(|a| with.contains(a)));
        for a in &with {
            assert!(is_usable(*a, true), "{a}");
            assert_eq!(with.iter().filter(|b| *b == a).count(), 1, "duplicate {a}");
        }
    }
}
