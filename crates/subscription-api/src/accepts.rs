//! Group commit of accepted messages (issue #16): `POST /messages` and `/trigger` hand the
//! message to store to one collector, which stores what is waiting in one transaction (one
//! insert for the messages, one for their outbox rows, one `NOTIFY`) and answers each
//! request with its own message.
//!
//! One transaction a request cost a commit each, and the outbox's `NOTIFY` serializes
//! commits in PostgreSQL (a notifying transaction holds a global lock through its commit), so
//! the API stopped near one request per commit flush. A batch closes as soon as nothing more
//! waits, so a lone request is not held up for company.
//!
//! A batch that fails (a row the database refuses, a connection lost mid-way) is stored again
//! one request at a time, each in its own transaction, so one bad request fails alone.

use herald_runtime::batching::{BatchSettings, Batcher};
use herald_storage::messages::{self, Message, NewMessage};
use herald_storage::{PgPool, StoreError};
use messaging_core::MessageSource;
use uuid::Uuid;

/// Messages stored in one transaction, at most.
const GROUP_MAX: usize = 64;
/// Transactions in work at once. Each holds a connection of the pool; the rest of the pool
/// serves authentication and the other routes.
const GROUP_PARALLEL: usize = 3;

/// One message to store, as a request hands it over.
pub struct Accept {
    pub tenant_id: Uuid,
    pub idempotency_key: Option<String>,
    pub subscription_id: Option<Uuid>,
    /// The versioned notify request, as the router reads it.
    pub request: serde_json::Value,
    /// Where the outbox relay publishes it.
    pub exchange: String,
}

impl Accept {
    fn new_message(&self) -> NewMessage<'_> {
        NewMessage {
            tenant_id: self.tenant_id,
            idempotency_key: self.idempotency_key.as_deref(),
            source: MessageSource::Api,
            subscription_id: self.subscription_id,
            request: &self.request,
            exchange: &self.exchange,
            routing_key: "api",
        }
    }
}

type Stored = Result<(Message, bool), StoreError>;

/// Stores accepted messages in groups; cheap to clone.
#[derive(Clone)]
pub struct Accepts {
    batcher: Batcher<Accept, Stored>,
}

impl Accepts {
    /// Starts the collector (a task on the current runtime).
    pub fn spawn(pool: PgPool) -> Accepts {
        let batcher = Batcher::spawn(
            BatchSettings {
                max: GROUP_MAX,
                linger: std::time::Duration::ZERO,
                parallel: GROUP_PARALLEL,
                name: "api_accepts",
            },
            move |items: Vec<Accept>| {
                let pool = pool.clone();
                async move { store(&pool, &items).await }
            },
        );
        Accepts { batcher }
    }

    /// Stores the message with its outbox row, or returns the tenant's first message with
    /// this idempotency key (`false`: not new).
    pub async fn accept(&self, accept: Accept) -> Stored {
        match self.batcher.submit(accept).await {
            Some(stored) => stored,
            // The collector is gone (the process is stopping) or the batch panicked: whether
            // the message was stored is unknown, so the client is told to repeat the request
            // (with its idempotency key, a repeat cannot store it twice).
            None => Err(StoreError::Unavailable(
                "the message could not be stored now; repeat the request".into(),
            )),
        }
    }
}

/// Stores a group in one transaction, or, when the database refused a statement of it, each
/// message alone.
///
/// Two failures are not retried alone, and every request of the group is told to repeat
/// (503): a database that cannot be reached (each retry would wait for the pool again, one
/// after the other), and a commit whose outcome is unknown (the connection lost while
/// committing). There, storing again would give a request without an idempotency key a
/// second message; the client's repeat with its key cannot.
async fn store(pool: &PgPool, items: &[Accept]) -> Vec<Stored> {
    let news: Vec<NewMessage<'_>> = items.iter().map(Accept::new_message).collect();
    let written = async {
        let mut tx = pool.begin().await?;
        let stored = messages::accept_many(&mut tx, &news).await?;
        Ok::<_, StoreError>((tx, stored))
    }
    .await;
    let error = match written {
        Ok((tx, stored)) => {
            return match tx.commit().await {
                Ok(()) => stored.into_iter().map(Ok).collect(),
                Err(error) => {
                    tracing::warn!(%error, messages = items.len(), "the commit of a group of accepted messages failed: its outcome is unknown");
                    unavailable(
                        items.len(),
                        "the database did not confirm storing the message",
                    )
                }
            };
        }
        Err(error) => error,
    };
    if let StoreError::Unavailable(reason) = &error {
        return unavailable(items.len(), reason);
    }
    if items.len() > 1 {
        tracing::warn!(%error, messages = items.len(), "a group of accepted messages failed: storing each alone");
    }
    let mut each = Vec::with_capacity(items.len());
    for new in news {
        each.push(alone(pool, new).await);
    }
    each
}

/// The same 503 for `n` requests.
fn unavailable(n: usize, reason: &str) -> Vec<Stored> {
    (0..n)
        .map(|_| {
            Err(StoreError::Unavailable(format!(
                "{reason}; repeat the request with its Idempotency-Key"
            )))
        })
        .collect()
}

async fn alone(pool: &PgPool, new: NewMessage<'_>) -> Stored {
    let mut tx = pool.begin().await?;
    let stored = messages::accept(&mut tx, new).await?;
    tx.commit().await?;
    Ok(stored)
}
