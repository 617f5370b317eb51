//! This replica's connections, by routing key (`<tenant>/<address>`), and the deliveries
//! waiting for their clients' answers.
//!
//! A connection's frames wait in a bounded queue its socket task drains: a client that does
//! not read fills it, and the next message closes that connection instead of growing this
//! process's memory (the client reconnects; what it did not acknowledge is sent again).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::protocol::{RefusalClass, ServerFrame};

pub type ConnId = u64;

/// A client's answer to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAnswer {
    Ack,
    Refuse { class: RefusalClass, reason: String },
}

struct Conn {
    keys: Vec<String>,
    frames: mpsc::Sender<ServerFrame>,
    /// Cancelled when the client is too slow: its socket task closes the connection.
    too_slow: CancellationToken,
}

#[derive(Default)]
struct State {
    next_id: ConnId,
    conns: HashMap<ConnId, Conn>,
    by_key: HashMap<String, HashSet<ConnId>>,
    waiting: HashMap<Uuid, mpsc::UnboundedSender<(ConnId, ClientAnswer)>>,
}

#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
}

impl Hub {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection; returns its id and the keys no other local connection had.
    pub fn register(
        &self,
        keys: Vec<String>,
        frames: mpsc::Sender<ServerFrame>,
        too_slow: CancellationToken,
    ) -> (ConnId, Vec<String>) {
        let mut state = self.state();
        state.next_id += 1;
        let id = state.next_id;
        let mut new = Vec::new();
        for key in &keys {
            let holders = state.by_key.entry(key.clone()).or_default();
            if holders.is_empty() {
                new.push(key.clone());
            }
            holders.insert(id);
        }
        state.conns.insert(
            id,
            Conn {
                keys,
                frames,
                too_slow,
            },
        );
        (id, new)
    }

    /// Removes a connection; returns the keys no local connection has any more.
    pub fn remove(&self, id: ConnId) -> Vec<String> {
        let mut state = self.state();
        let Some(conn) = state.conns.remove(&id) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for key in conn.keys {
            if let Some(holders) = state.by_key.get_mut(&key) {
                holders.remove(&id);
                if holders.is_empty() {
                    state.by_key.remove(&key);
                    gone.push(key);
                }
            }
        }
        gone
    }

    /// Every key some local connection holds (to bind again after a reconnect).
    pub fn keys(&self) -> Vec<String> {
        self.state().by_key.keys().cloned().collect()
    }

    pub fn connections(&self) -> usize {
        self.state().conns.len()
    }

    /// Queues `frame` for every local connection holding `key`; returns how many took it.
    /// A connection whose queue is full is told to close (too slow) and does not count.
    pub fn push(&self, key: &str, frame: &ServerFrame) -> usize {
        let state = self.state();
        let Some(holders) = state.by_key.get(key) else {
            return 0;
        };
        let mut took = 0;
        for id in holders {
            let Some(conn) = state.conns.get(id) else {
                continue;
            };
            match conn.frames.try_send(frame.clone()) {
                Ok(()) => took += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        connection = id,
                        "a WebSocket client does not read its messages; closing it"
                    );
                    conn.too_slow.cancel();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        took
    }

    /// Answers to `delivery` from this replica's clients, until [`Hub::unwait`].
    pub fn wait(&self, delivery: Uuid) -> mpsc::UnboundedReceiver<(ConnId, ClientAnswer)> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state().waiting.insert(delivery, tx);
        rx
    }

    pub fn unwait(&self, delivery: Uuid) {
        self.state().waiting.remove(&delivery);
    }

    /// A client's answer; one for a delivery nobody waits for (late, or not ours) is dropped.
    pub fn answer(&self, delivery: Uuid, conn: ConnId, answer: ClientAnswer) {
        if let Some(waiting) = self.state().waiting.get(&delivery) {
            let _ = waiting.send((conn, answer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_and_go_with_their_last_connection() {
        let hub = Hub::default();
        let (tx, _rx) = mpsc::channel(4);
        let (a, new) = hub.register(
            vec!["acme/bot/1".into()],
            tx.clone(),
            CancellationToken::new(),
        );
        assert_eq!(new, ["acme/bot/1"]);
        let (b, new) = hub.register(
            vec!["acme/bot/1".into(), "acme/bot/2".into()],
            tx,
            CancellationToken::new(),
        );
        assert_eq!(new, ["acme/bot/2"]);
        assert!(hub.remove(a).is_empty(), "b still holds acme/bot/1");
        let mut gone = hub.remove(b);
        gone.sort();
        assert_eq!(gone, ["acme/bot/1", "acme/bot/2"]);
        assert!(hub.keys().is_empty());
    }

    #[test]
    fn a_client_that_does_not_read_is_closed_not_buffered_without_end() {
        let hub = Hub::default();
        let (tx, _rx) = mpsc::channel(2);
        let slow = CancellationToken::new();
        hub.register(vec!["k".into()], tx, slow.clone());
        let frame = ServerFrame::Error {
            code: "x".into(),
            message: "y".into(),
        };
        assert_eq!(hub.push("k", &frame), 1);
        assert_eq!(hub.push("k", &frame), 1);
        assert_eq!(hub.push("k", &frame), 0, "the queue is full");
        assert!(slow.is_cancelled());
        assert_eq!(hub.push("nobody", &frame), 0);
    }
}
