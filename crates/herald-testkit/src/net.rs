//! Loopback ports for the servers the test kit starts.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Whether something listens on this loopback port.
pub(crate) fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A loopback port nothing listens on now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
