//! Who is on the other end of a connection, and how often they failed to authenticate.
//!
//! The failures are counted before anything is looked up, per client address (an IPv6
//! client is one /64: one subscriber gets a whole prefix), so a flood of made-up keys or
//! tokens costs a map lookup, not a database query or a signature check. Only failures
//! count: a producer's host sending thousands of valid requests per second is not an
//! attacker, and its limits are its principal's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use ipnet::IpNet;

use super::window::{Now, Window};

/// Addresses remembered at most; past this, those without failures in the last two minutes
/// go, and new ones are not counted until there is room.
const MAX_CLIENTS: usize = 100_000;

/// A client as counted: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client(IpAddr);

impl Client {
    pub fn of(ip: IpAddr) -> Client {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    Client(IpAddr::V6(bits.into()))
                }
            },
            v4 => Client(v4),
        }
    }

    /// The client of a request: the connection's peer, or, when the peer is one of the
    /// trusted proxies, the last address in `X-Forwarded-For` that is not one of them.
    /// `None` when the server was not told the peer (a test calling the router directly).
    pub fn of_request(parts: &Parts, trusted: &[IpNet]) -> Option<Client> {
        let ConnectInfo(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>()?;
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
        let mut ip = peer.ip();
        if is_trusted(&ip) {
            let forwarded = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect::<Vec<_>>();
            for hop in forwarded.iter().rev() {
                match hop.parse::<IpAddr>() {
                    Ok(hop) if is_trusted(&hop) => ip = hop,
                    Ok(hop) => {
                        ip = hop;
                        break;
                    }
                    // Garbage in the header: what is left of it cannot be trusted.
                    Err(_) => break,
                }
            }
        }
        Some(Client::of(ip))
    }
}

pub struct Failures {
    per_minute: u64,
    seen: Mutex<HashMap<Client, Window>>,
}

impl Failures {
    pub fn new(per_minute: u32) -> Failures {
        Failures {
            per_minute: u64::from(per_minute),
            seen: Mutex::default(),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<Client, Window>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long this client must wait when it failed too often lately.
    pub fn blocked(&self, client: Client) -> Option<Duration> {
        if self.per_minute == 0 {
            return None;
        }
        let now = Now::from_clock();
        let mut seen = self.seen();
        let window = seen.get_mut(&client)?;
        window.roll(now);
        // Blocked while one more failure would not fit.
        window.admits(now, 1, self.per_minute).err()
    }

    pub fn note(&self, client: Client) {
        if self.per_minute == 0 {
            return;
        }
        let now = Now::from_clock();
        let mut seen = self.seen();
        if seen.len() >= MAX_CLIENTS && !seen.contains_key(&client) {
            seen.retain(|_, w| w.minute >= now.minute - 1);
            if seen.len() >= MAX_CLIENTS {
                // Failing from more addresses than this within two minutes: the addresses
                // already counted (the blocked ones among them) stay counted, and new ones
                // are not, rather than letting a flood wipe the blocks.
                tracing::warn!(
                    clients = seen.len(),
                    "too many addresses failing to authenticate; new ones are not counted for now"
                );
                return;
            }
        }
        let window = seen.entry(client).or_default();
        window.roll(now);
        window.current += 1;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(peer: &str, forwarded: Option<&str>) -> Parts {
        let mut request = Request::builder().uri("/");
        if let Some(f) = forwarded {
            request = request.header("x-forwarded-for", f);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        parts
    }

    fn client(ip: &str) -> Option<Client> {
        Some(Client::of(ip.parse().unwrap()))
    }

    #[test]
    fn the_peer_counts_unless_it_is_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // A client cannot name itself someone else.
        let direct = parts("192.0.2.1:4000", Some("198.51.100.9"));
        assert_eq!(Client::of_request(&direct, &trusted), client("192.0.2.1"));
        // Behind two proxies: the last hop that is not one of them.
        let proxied = parts("10.0.0.5:4000", Some("203.0.113.7, 198.51.100.9, 10.0.0.6"));
        assert_eq!(
            Client::of_request(&proxied, &trusted),
            client("198.51.100.9")
        );
        let garbage = parts("10.0.0.5:4000", Some("not-an-ip"));
        assert_eq!(Client::of_request(&garbage, &trusted), client("10.0.0.5"));
        let (bare, ()) = Request::builder().body(()).unwrap().into_parts();
        assert_eq!(Client::of_request(&bare, &trusted), None);
    }

    #[test]
    fn an_ipv6_client_is_its_64_prefix() {
        assert_eq!(
            client("2001:db8:1:2:aaaa::1"),
            client("2001:db8:1:2:bbbb::2")
        );
        assert_ne!(client("2001:db8:1:2::1"), client("2001:db8:1:3::1"));
        assert_eq!(client("::ffff:192.0.2.1"), client("192.0.2.1"));
    }

    #[test]
    fn failures_block_a_client_and_memory_stays_bounded() {
        let failures = Failures::new(3);
        let bad = Client::of("192.0.2.1".parse().unwrap());
        let good = Client::of("192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(failures.blocked(bad), None);
            failures.note(bad);
        }
        assert!(failures.blocked(bad).is_some());
        assert_eq!(failures.blocked(good), None);
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            failures.note(Client::of(IpAddr::V4(i.into())));
        }
        assert!(failures.len() <= MAX_CLIENTS);
        // A flood from many addresses does not lift a block.
        assert!(failures.blocked(bad).is_some());
    }
}
