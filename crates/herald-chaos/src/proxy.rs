//! A TCP proxy between the services and the broker, for the network faults no registry here
//! offers a tool for (toxiproxy is not packaged): added latency in both directions, and a cut
//! that closes every connection and refuses new ones until it is healed.
//!
//! Latency is a delay line, not a sleep per read: bytes read at `t` are written at
//! `t + latency`, so the link stays as fast as before, only later, as `tc netem` would make it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

struct State {
    latency_ms: AtomicU64,
    cut: AtomicBool,
    /// Bumped by every cut: each connection closes when it changes.
    generation: watch::Sender<u64>,
}

pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            latency_ms: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            generation: watch::channel(0).0,
        });
        let task = tokio::spawn(accept(listener, upstream, state.clone()));
        Ok(Proxy { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every byte from now on arrives this much later, in both directions.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.state.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Closes every open connection and refuses new ones (accepted, then closed at once, as a
    /// peer resetting them) until [`Proxy::heal`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.generation.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.generation.send_modify(|g| *g += 1);
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if state.cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let state = state.clone();
        // Subscribed before connecting, and the cut looked at again after: a cut that comes
        // while this connection is being set up still closes it.
        let mut closed = state.generation.subscribe();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            if state.cut.load(Ordering::SeqCst) || closed.has_changed().unwrap_or(true) {
                return;
            }
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                () = pipe(client_read, server_write, state.clone()) => {}
                () = pipe(server_read, client_write, state.clone()) => {}
                _ = closed.changed() => {}
            }
        });
    }
}

/// Copies one direction through the delay line until either side closes.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let latency = Duration::from_millis(state.latency_ms.load(Ordering::SeqCst));
                    if tx
                        .send((Instant::now() + latency, buffer[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    // The writer ends when the reader has ended and everything read was written.
    tokio::join!(reader, writer);
}
