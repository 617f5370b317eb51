//! The SMTP connections: at most `pool_max_size` open, reused, with `TCP_NODELAY`.
//!
//! lettre's pooled transport was the limit (issue #16): about 670 mails/s into a local
//! `smtp-sink` that takes 39,000/s from postfix's `smtp-source` over as many sessions.
//! - lettre writes a mail's body and its terminating `.` in two writes on a socket without
//!   `TCP_NODELAY`: Nagle's algorithm holds the `.` until the server acknowledges the body,
//!   and the server, waiting for the `.`, delays that acknowledgement (40 ms on Linux). Each
//!   mail waited about 44 ms on its connection, on loopback as on a real network.
//! - Its pool bounds only the idle connections it keeps: a send finding none idle opens one
//!   more, and the surplus is closed on return.
//!
//! As in lettre's pool, an idle connection answers `NOOP` before it carries a mail.
//!
//! lettre offers no way to set the socket option on its transport, so this module opens the
//! TCP connection itself, sets `TCP_NODELAY`, and lets lettre speak SMTP on it
//! ([`AsyncSmtpConnection::connect_with_transport`], then `STARTTLS` and `AUTH` as lettre's
//! transport does). Implicit TLS (port 465) is set up on the same socket with lettre's own
//! TLS code before the first SMTP word.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
// `AsyncNetworkStream` is public but deprecated ("not meant to be made public"): it is the
// only way lettre offers to put its TLS on a socket of one's own, which implicit TLS needs
// here. lettre is pinned to 0.11 in the workspace; a release that removes it fails the build
// here, not at run time.
#[allow(deprecated)]
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// How the connection is secured.
#[derive(Clone)]
pub enum Security {
    None,
    /// `STARTTLS` after the greeting, refused if the server does not offer it.
    Starttls(TlsParameters),
    /// TLS from the first byte.
    Implicit(TlsParameters),
}

/// Where and how to connect.
pub struct Server {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub credentials: Option<Credentials>,
    /// Connecting and each SMTP exchange, at most.
    pub timeout: Duration,
}

/// Why a mail did not go out.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The server answered (4xx, 5xx) or the connection failed under lettre.
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The pool.
pub struct Connections {
    server: Server,
    hello: ClientId,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
    /// One permit per connection that may be open.
    open: Semaphore,
}

impl Connections {
    pub fn new(server: Server, max: u32) -> Connections {
        Connections {
            server,
            hello: ClientId::default(),
            idle: Mutex::new(Vec::new()),
            open: Semaphore::new(max.max(1) as usize),
        }
    }

    /// Sends one mail on a pooled connection (opening one if none is idle).
    pub async fn send(&self, envelope: &Envelope, mail: &[u8]) -> Result<Response, SmtpError> {
        // Never closed, so acquiring cannot fail; the permit is the connection's turn.
        let _turn = self.open.acquire().await;
        let mut connection = self.take().await?;
        let sent = self.timed(connection.send(envelope, mail)).await;
        match &sent {
            // Stopped mid-command: the session is out of step, and a QUIT now could land in
            // the mail's text. Dropped, which closes the socket.
            Err(_) => drop(connection),
            // lettre ends the session itself on a refusal (4xx, 5xx) or a broken connection.
            Ok(_) if connection.has_broken() => self.close(connection).await,
            Ok(_) => self.lock().push(connection),
        }
        sent.and_then(|sent| sent.map_err(SmtpError::from))
    }

    /// Whether the server answers: an idle connection's `NOOP`, or a new connection's
    /// greeting (and `STARTTLS`, `AUTH`). The sender's health probe.
    pub async fn probe(&self) -> Result<(), SmtpError> {
        let _turn = self.open.acquire().await;
        let connection = self.take().await?;
        self.lock().push(connection);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AsyncSmtpConnection>> {
        // A panic while holding the list leaves it whole: keep using it.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection that still answers `NOOP`, the most recently used first, or a new
    /// one. Asked every time, as lettre's pool does: a server may close a session at any
    /// moment (idle, or after so many mails), and a mail must not be the one that finds out,
    /// which would count against the server's health.
    async fn take(&self) -> Result<AsyncSmtpConnection, SmtpError> {
        loop {
            let Some(mut connection) = self.lock().pop() else {
                return self.connect().await;
            };
            match self.timed(connection.test_connected()).await {
                Ok(true) => return Ok(connection),
                Ok(false) => self.close(connection).await,
                // No answer in time: out of step, dropped without QUIT.
                Err(_) => drop(connection),
            }
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SmtpError> {
        let server = &self.server;
        let address = format!("{}:{}", server.host, server.port);
        let tcp = self
            .timed(TcpStream::connect((server.host.as_str(), server.port)))
            .await?
            .map_err(|e| SmtpError::Connect(address.clone(), e))?;
        tcp.set_nodelay(true)
            .map_err(|e| SmtpError::Connect(address.clone(), e))?;
        let stream: Box<dyn AsyncTokioStream> = match &server.security {
            Security::Implicit(tls) => {
                #[allow(deprecated)]
                let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
                self.timed(stream.upgrade_tls(tls.clone())).await??;
                Box::new(Tls(stream))
            }
            Security::None | Security::Starttls(_) => Box::new(tcp),
        };
        let mut connection = self
            .timed(AsyncSmtpConnection::connect_with_transport(
                stream,
                &self.hello,
            ))
            .await??;
        // A failure below drops the connection, as lettre's transport does: after a failed
        // TLS upgrade lettre has no stream left to say QUIT on.
        if let Security::Starttls(tls) = &server.security {
            // lettre refuses a server that does not offer STARTTLS.
            self.timed(connection.starttls(tls.clone(), &self.hello))
                .await??;
        }
        if let Some(credentials) = &server.credentials {
            self.timed(connection.auth(DEFAULT_MECHANISMS, credentials))
                .await??;
        }
        Ok(connection)
    }

    /// `QUIT` (unless lettre ended the session already) and close, not waiting on a dead
    /// server for longer than the timeout.
    async fn close(&self, mut connection: AsyncSmtpConnection) {
        let _ = self.timed(connection.abort()).await;
    }

    async fn timed<T>(&self, work: impl Future<Output = T>) -> Result<T, SmtpError> {
        tokio::time::timeout(self.server.timeout, work)
            .await
            .map_err(|_| SmtpError::Timeout(self.server.timeout))
    }
}

/// lettre's TLS stream (implicit TLS on our socket), seen as a tokio stream so lettre can
/// speak SMTP on it: lettre's stream implements the `futures` I/O traits.
#[allow(deprecated)]
struct Tls(AsyncNetworkStream);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(implicit)")
    }
}

impl AsyncTokioStream for Tls {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.peer_addr()
    }
}

impl tokio::io::AsyncRead for Tls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match futures::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for Tls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}
