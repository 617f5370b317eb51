//! The load: direct messages to one person each, through both ingresses (published to the
//! ingress exchange with a publisher confirm, and `POST /messages`), at a steady rate, with a
//! ledger of what Herald accepted. A message's text carries its key, so the fake provider's
//! records say which accepted message arrived how often.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_runtime::amqp::{Broker, Message, Publisher};
use messaging_core::ingress::{Content, DirectContent, Ingress, NotifyRequest, Recipients};
use messaging_core::topology::Names;
use messaging_core::values::{IdempotencyKey, TenantKey, UserId};
use messaging_core::{Channel, EnvelopeVersion};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::stack::{Stack, TENANT};

/// Sends in flight at once; past it the load waits (a client backing off), so an outage
/// slows the offered rate instead of piling up tasks.
const IN_FLIGHT: usize = 256;
/// The word before the key in every message's text.
pub const MARK: &str = "chaos-key";

#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Keys are `<prefix>-<i>`.
    pub prefix: String,
    /// Messages per second offered.
    pub rate: u32,
    pub duration: Duration,
    /// Every n-th message goes through `POST /messages`, the others through RabbitMQ
    /// (0: none through the API).
    pub rest_every: u32,
    /// Every n-th AMQP message is poison instead (malformed, wrong types, oversized, too
    /// deep, an unknown tenant, in turn); `None`: no poison.
    pub poison_every: Option<u32>,
}

/// What the producers were told.
#[derive(Default)]
pub struct Ledger {
    accepted: Mutex<HashSet<String>>,
    pub offered: AtomicU64,
    /// Poison messages the broker confirmed.
    pub poison: AtomicU64,
    /// `503` from the API with a `Retry-After` (class (c), "try later").
    pub refused_retry_after: AtomicU64,
    /// A `5xx` without `Retry-After`, or any other status than `202`.
    pub refused_other: AtomicU64,
    /// No answer (connection refused or reset, timeout, a publish that failed).
    pub failed: AtomicU64,
    /// The first few distinct failure texts, with counts.
    errors: Mutex<BTreeMap<String, u64>>,
    /// The API's messages, in the order it accepted them: `(key, Location)`.
    through_api: Mutex<Vec<(String, String)>>,
}

impl Ledger {
    pub fn accepted(&self) -> HashSet<String> {
        lock(&self.accepted).clone()
    }

    fn accept(&self, key: String) {
        lock(&self.accepted).insert(key);
    }

    fn error(&self, what: String) {
        let mut errors = lock(&self.errors);
        if errors.len() < 8 || errors.contains_key(&what) {
            *errors.entry(what).or_default() += 1;
        }
    }

    /// The `Location` (`/api/messaging/messages/<id>`) of API messages accepted after the
    /// first `skip`, with their keys.
    pub fn api_messages(&self, skip: usize) -> Vec<(String, String)> {
        lock(&self.through_api)
            .get(skip..)
            .unwrap_or_default()
            .to_vec()
    }

    pub fn api_messages_len(&self) -> usize {
        lock(&self.through_api).len()
    }

    /// What the producers were answered, other than yes.
    pub fn answers(&self) -> Answers {
        Answers {
            refused: self.refused_other(),
            unanswered: self.failed.load(Ordering::Relaxed),
            errors: self
                .errors()
                .into_iter()
                .map(|(what, n)| format!("{what} x{n}"))
                .collect(),
        }
    }

    pub fn refused_other(&self) -> u64 {
        self.refused_other.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        lock(&self.errors).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The answers other than yes that producers got, summed over loads.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    /// Other statuses than `202`, and `503` without `Retry-After`.
    pub refused: u64,
    /// No answer at all.
    pub unanswered: u64,
    /// The first distinct failure texts, with counts.
    pub errors: Vec<String>,
}

impl Answers {
    pub fn add(&mut self, other: Answers) {
        self.refused += other.refused;
        self.unanswered += other.unanswered;
        self.errors.extend(other.errors);
    }
}

/// The producers' side: a publisher on the suite's own connection (straight to the broker,
/// so a fault between the services and the broker is not also one of the producer) and an
/// HTTP client.
#[derive(Clone)]
pub struct Producers {
    publisher: Publisher,
    http: reqwest::Client,
    api: String,
    api_key: String,
    names: Names,
    users: u32,
}

impl Producers {
    pub fn new(stack: &Stack) -> anyhow::Result<Producers> {
        Ok(Producers {
            publisher: Publisher::new(
                Broker::new(stack.amqp.clone(), "chaos-producer"),
                "producer",
            ),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(64)
                .build()?,
            api: stack.api_base(),
            api_key: stack.api_key.clone(),
            names: stack.names.clone(),
            users: stack.users,
        })
    }

    pub async fn close(&self) {
        self.publisher.close().await;
    }
}

pub struct Load {
    /// Aborted on drop: a scenario that ends early must not leave load running into the
    /// next one.
    task: Option<tokio::task::JoinHandle<()>>,
    pub ledger: Arc<Ledger>,
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Load {
    /// Starts offering `spec` in the background.
    pub fn start(producers: &Producers, spec: LoadSpec) -> Load {
        let ledger = Arc::new(Ledger::default());
        let task = tokio::spawn(offer(producers.clone(), spec, ledger.clone()));
        Load {
            task: Some(task),
            ledger,
        }
    }

    /// Waits until every message was offered and answered.
    pub async fn finish(mut self) -> Arc<Ledger> {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.ledger.clone()
    }
}

async fn offer(producers: Producers, spec: LoadSpec, ledger: Arc<Ledger>) {
    let total = u64::from(spec.rate) * spec.duration.as_millis() as u64 / 1000;
    let interval = Duration::from_secs(1) / spec.rate.max(1);
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut sends = JoinSet::new();
    let started = Instant::now();
    let mut poison_turn = 0u32;
    for i in 0..total {
        tokio::time::sleep_until(started + interval * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        ledger.offered.fetch_add(1, Ordering::Relaxed);
        let key = format!("{}-{i}", spec.prefix);
        let user = format!("c{}", i % u64::from(producers.users.max(1)) + 1);
        let via_rest = spec.rest_every > 0 && i % u64::from(spec.rest_every) == 0;
        let poison = !via_rest
            && spec
                .poison_every
                .is_some_and(|n| n > 0 && i % u64::from(n) == u64::from(n) / 2);
        let producers = producers.clone();
        let ledger = ledger.clone();
        let turn = poison_turn;
        if poison {
            poison_turn += 1;
        }
        sends.spawn(async move {
            if poison {
                producers.publish_poison(turn, &ledger).await;
            } else if via_rest {
                producers.post(key, &user, &ledger).await;
            } else {
                producers.publish(key, &user, &ledger).await;
            }
            drop(permit);
        });
        while sends.try_join_next().is_some() {}
    }
    while sends.join_next().await.is_some() {}
}

impl Producers {
    async fn publish(&self, key: String, user: &str, ledger: &Ledger) {
        let body = match request(&key, user) {
            Ok(body) => body,
            Err(error) => {
                ledger.error(format!("encode: {error}"));
                ledger.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let message = Message::new(self.names.ingress_exchange(), "chaos", &body)
            .message_id(uuid::Uuid::now_v7().to_string());
        match self.publisher.publish(&message).await {
            Ok(()) => ledger.accept(key),
            Err(error) => {
                ledger.error(format!("publish: {error}"));
                ledger.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn post(&self, key: String, user: &str, ledger: &Ledger) {
        let body = serde_json::json!({
            "to": {"users": [user]},
            "content": {"direct": {"body": text(&key)}},
            "channels": ["sms"],
        });
        let answer = self
            .http
            .post(format!("{}/messages", self.api))
            .header("x-api-key", &self.api_key)
            .header("idempotency-key", &key)
            .json(&body)
            .send()
            .await;
        match answer {
            Ok(response) if response.status().as_u16() == 202 => {
                if let Some(location) = response
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                {
                    lock(&ledger.through_api).push((key.clone(), location.to_owned()));
                }
                ledger.accept(key);
            }
            Ok(response) => {
                let status = response.status().as_u16();
                if status == 503 && response.headers().contains_key("retry-after") {
                    ledger.refused_retry_after.fetch_add(1, Ordering::Relaxed);
                } else {
                    ledger.refused_other.fetch_add(1, Ordering::Relaxed);
                    ledger.error(format!("POST /messages: {status}"));
                }
            }
            Err(error) => {
                let what = if error.is_connect() {
                    "connection refused".to_owned()
                } else if error.is_timeout() {
                    "timeout".to_owned()
                } else {
                    error.to_string()
                };
                ledger.error(format!("POST /messages: {what}"));
                ledger.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn publish_poison(&self, turn: u32, ledger: &Ledger) {
        let body = poison(turn);
        let message = Message::new(self.names.ingress_exchange(), "chaos", &body)
            .message_id(uuid::Uuid::now_v7().to_string());
        match self.publisher.publish(&message).await {
            Ok(()) => {
                ledger.poison.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                ledger.error(format!("publish poison: {error}"));
                ledger.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The text of the message with this key.
pub fn text(key: &str) -> String {
    format!("{MARK} {key}")
}

/// The key in a text made by [`text`] (the sender may add to it, not change it).
pub fn key_of(text: &str) -> Option<&str> {
    let rest = &text[text.find(MARK)? + MARK.len()..];
    rest.split_whitespace().next()
}

fn request(key: &str, user: &str) -> anyhow::Result<Vec<u8>> {
    let notify = NotifyRequest {
        version: EnvelopeVersion,
        tenant: TenantKey::parse(TENANT)?,
        idempotency_key: Some(IdempotencyKey::parse(key)?),
        to: Recipients::Users(vec![UserId::parse(user)?]),
        content: Content::Direct(DirectContent {
            subject: None,
            body: text(key),
            html: None,
        }),
        channels: Some(vec![Channel::Sms]),
        mode: None,
        expires_at: None,
    };
    Ok(Ingress::Notify(notify).encode())
}

/// Poison of kind `turn % 5`: each one the router must dead-letter with a reason.
pub fn poison(turn: u32) -> Vec<u8> {
    match turn % 5 {
        0 => b"{\"version\": 1, \"kind\": \"notify\", \"tenant\": ".to_vec(),
        1 => serde_json::json!({
            "version": 1, "kind": "notify", "tenant": 42, "to": {"users": "c1"},
            "content": {"direct": {"body": 7}}
        })
        .to_string()
        .into_bytes(),
        2 => {
            let mut body =
                br#"{"version": 1, "kind": "notify", "tenant": "chaos", "pad": ""#.to_vec();
            body.extend(std::iter::repeat_n(b'x', messaging_core::MAX_MESSAGE_BYTES));
            body.extend(b"\"}");
            body
        }
        3 => {
            let depth = 500;
            let mut body = "[".repeat(depth);
            body.push_str(&"]".repeat(depth));
            body.into_bytes()
        }
        _ => serde_json::json!({
            "version": 1, "kind": "notify", "tenant": "no-such-tenant",
            "to": {"users": ["c1"]}, "content": {"direct": {"body": "poison"}}
        })
        .to_string()
        .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_survives_the_text_and_what_a_sender_adds() {
        assert_eq!(key_of(&text("s2-17")), Some("s2-17"));
        assert_eq!(
            key_of(&format!("Acme: {} (reply STOP)", text("a-1"))),
            Some("a-1")
        );
        assert_eq!(key_of("no mark here"), None);
    }

    #[test]
    fn every_poison_kind_is_refused_by_the_decoder() {
        for turn in 0..5 {
            let body = poison(turn);
            if turn == 4 {
                // Decodes; the router refuses it for its tenant.
                assert!(Ingress::decode(&body).is_ok());
            } else {
                assert!(Ingress::decode(&body).is_err(), "kind {turn} decoded");
            }
        }
    }
}
