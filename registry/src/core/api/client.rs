//! Which address a request counts against, for the rate limits.

use super::request::ApiRequest;
use std::net::IpAddr;

/// The peer, or, when the peer is a trusted proxy, the last
/// `X-Forwarded-For` hop it did not add itself.
pub(super) fn client_address(trusted_proxies: &[IpAddr], req: &ApiRequest) -> Option<IpAddr> {
    let peer = req.client?;
    if !trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let hops = req.forwarded_for.unwrap_or_default().split(',');
    let real = hops.rev().filter_map(|h| h.trim().parse::<IpAddr>().ok()).find(|ip| !trusted_proxies.contains(ip));
    Some(real.unwrap_or(peer))
}

/// The key of the pairing limit: the address, or for IPv6 its /64, since
/// one host commonly holds a whole /64.
pub(super) fn rate_limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let trusted = [proxy];
        let localhost = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let via_proxy =
            ApiRequest { client: Some(proxy), forwarded_for: Some("1.1.1.1, 2.2.2.2, 10.0.0.1"), ..Default::default() };
        assert_eq!(client_address(&trusted, &via_proxy), Some("2.2.2.2".parse().unwrap()));
        let direct = ApiRequest { client: localhost, forwarded_for: Some("9.9.9.9"), ..Default::default() };
        assert_eq!(client_address(&trusted, &direct), localhost);
    }

    #[test]
    fn pairing_limits_count_v6_per_slash_64_and_mapped_v4_as_v4() {
        assert_eq!(rate_limit_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(rate_limit_key("2001:db8::ffff:1".parse().unwrap()), "2001:db8::".parse::<IpAddr>().unwrap());
        assert_eq!(rate_limit_key("10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
