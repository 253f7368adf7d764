//! Is a server this host? Mail routed by DNS to ourselves would come straight back through our
//! own smtpd and go round again (a mail loop), so remote delivery refuses it, as Postfix does.
//!
//! A server found by MX (or implicit MX, or an address literal) is this host when its name is
//! `me`, or when its address is one of ours (loopback, unspecified, or an interface address) and
//! one of our `smtplisten` entries would take a connection there on that port (so a second
//! server on another loopback port, as in tests, is not us). Hosts named in `smtproutes` are
//! never checked: a route is the administrator's explicit word.
//!
//! With MX records, every host at or after our own preference is dropped (we are a backup MX:
//! only better ones may take the mail); if that leaves none, delivery fails permanently with
//! 5.4.6 "mail for DOMAIN loops back to myself".

use std::net::{IpAddr, SocketAddr};

pub struct Myself {
    me: String,
    /// Our interface addresses (getifaddrs at start; rspawn restarts workers on HUP).
    addrs: Vec<IpAddr>,
    listen: Vec<SocketAddr>,
}

impl Myself {
    pub fn new(me: &str, listen: &[SocketAddr]) -> Myself {
        let addrs = nix::ifaddrs::getifaddrs()
            .map(|it| {
                it.filter_map(|i| {
                    let a = i.address?;
                    if let Some(v4) = a.as_sockaddr_in() {
                        Some(IpAddr::V4(v4.ip()))
                    } else {
                        a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                    }
                })
                .collect()
            })
            .unwrap_or_default();
        Myself::with_addrs(me, listen, addrs)
    }

    pub fn with_addrs(me: &str, listen: &[SocketAddr], addrs: Vec<IpAddr>) -> Myself {
        Myself {
            me: me.trim_end_matches('.').to_ascii_lowercase(),
            addrs,
            listen: listen.to_vec(),
        }
    }

    fn is_our_address(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip.is_unspecified() || self.addrs.contains(&canonical(ip))
    }

    /// True when connecting to `name` at `ip`:`port` would reach this host's own smtpd.
    pub fn is_me(&self, name: &str, ip: IpAddr, port: u16) -> bool {
        if !self.me.is_empty() && name.trim_end_matches('.').eq_ignore_ascii_case(&self.me) {
            return true;
        }
        let ip = canonical(ip);
        if !self.is_our_address(ip) {
            return false;
        }
        self.listen
            .iter()
            .any(|l| l.port() == port && (l.ip().is_unspecified() || canonical(l.ip()) == ip))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn ourselves() {
        let listen: Vec<SocketAddr> = ["0.0.0.0:25", "[::]:25", "127.0.0.1:2600"]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let m = Myself::with_addrs("mx.example.org", &listen, vec![ip("192.0.2.7")]);
        assert!(m.is_me("MX.example.org.", ip("198.51.100.1"), 25));
        assert!(m.is_me("other", ip("127.0.0.1"), 25));
        assert!(m.is_me("other", ip("127.0.0.1"), 2600));
        assert!(m.is_me("other", ip("192.0.2.7"), 25));
        assert!(m.is_me("other", ip("::ffff:192.0.2.7"), 25));
        assert!(m.is_me("other", ip("::1"), 25));
        assert!(!m.is_me("other", ip("192.0.2.8"), 25));
        assert!(!m.is_me("other", ip("127.0.0.1"), 2601));
        assert!(!m.is_me("other", ip("127.0.0.2"), 2600));
    }
}
