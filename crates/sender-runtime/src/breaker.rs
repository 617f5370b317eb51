//! The circuit breaker: after repeated provider faults the sender stops taking jobs (they
//! wait in the queue, nothing is dropped), probes the provider, and resumes by itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_runtime::amqp::consumer::PauseGate;
use herald_runtime::health::Health;
use messaging_core::Channel;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::sender::ChannelSender;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Closed {
        consecutive_faults: u32,
    },
    Open {
        reason: String,
    },
    /// A probe succeeded; jobs flow again and the next result decides.
    HalfOpen,
}

pub struct Breaker {
    channel: Channel,
    threshold: u32,
    state: Mutex<State>,
    gate: watch::Sender<Option<String>>,
    health: Health,
}

impl Breaker {
    pub fn new(channel: Channel, threshold: u32, health: Health) -> Self {
        let breaker = Breaker {
            channel,
            threshold: threshold.max(1),
            state: Mutex::new(State::Closed {
                consecutive_faults: 0,
            }),
            gate: watch::Sender::new(None),
            health,
        };
        breaker.report(&State::Closed {
            consecutive_faults: 0,
        });
        breaker
    }

    fn component(&self) -> String {
        format!("sender:{}", self.channel)
    }

    /// The consumer's pause gate: `Some(reason)` while the breaker is open.
    pub fn gate(&self) -> PauseGate {
        self.gate.subscribe()
    }

    pub fn is_open(&self) -> bool {
        matches!(*self.lock(), State::Open { .. })
    }

    /// The provider answered properly (delivered, or a clear answer about the recipient).
    pub fn record_success(&self) {
        self.transition(|_| {
            Some(State::Closed {
                consecutive_faults: 0,
            })
        });
    }

    /// The provider failed in a way that is its fault, not the recipient's.
    pub fn record_fault(&self, reason: &str) {
        let threshold = self.threshold;
        self.transition(|state| match state {
            State::Closed { consecutive_faults } if consecutive_faults + 1 < threshold => {
                Some(State::Closed {
                    consecutive_faults: consecutive_faults + 1,
                })
            }
            State::Open { .. } => None,
            _ => Some(State::Open {
                reason: reason.to_owned(),
            }),
        });
    }

    /// A probe succeeded while open: let jobs flow, and the next result decide.
    fn half_open(&self) {
        self.transition(|state| matches!(state, State::Open { .. }).then_some(State::HalfOpen));
    }

    /// Reads the state, decides the next one, stores it and tells the consumer, all under one
    /// lock: jobs finish concurrently, and a success and a fault deciding on the same old
    /// state must not leave the state closed but the consumer paused (or the reverse).
    fn transition(&self, decide: impl FnOnce(&State) -> Option<State>) {
        let mut state = self.lock();
        let Some(next) = decide(&state) else { return };
        if *state == next {
            return;
        }
        let was_open = matches!(*state, State::Open { .. });
        *state = next.clone();
        match &next {
            State::Open { reason } => {
                tracing::error!(channel = %self.channel, %reason, "circuit breaker open: provider unhealthy; jobs wait in the queue");
                self.gate.send_replace(Some(reason.clone()));
            }
            _ => {
                if was_open {
                    tracing::info!(channel = %self.channel, "circuit breaker half-open: provider answered a probe; resuming");
                }
                self.gate.send_replace(None);
            }
        }
        self.report(&next);
    }

    fn report(&self, state: &State) {
        let (ready, detail) = match state {
            State::Closed { .. } => (true, "provider healthy".to_owned()),
            State::HalfOpen => (true, "provider recovering (breaker half-open)".to_owned()),
            State::Open { reason } => {
                (false, format!("provider unhealthy, breaker open: {reason}"))
            }
        };
        self.health.set(&self.component(), ready, detail);
        metrics::gauge!("herald_sender_breaker_open", "channel" => self.channel.as_str())
            .set(if ready { 0.0 } else { 1.0 });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// While open, probes the provider every `every`; a good probe half-opens the breaker.
    pub async fn probe_while_open<S: ChannelSender>(
        self: Arc<Self>,
        sender: Arc<S>,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut gate = self.gate();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = gate.wait_for(Option::is_some) => if changed.is_err() { return },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if !self.is_open() {
                continue;
            }
            match sender.probe().await {
                Ok(()) => self.half_open(),
                Err(reason) => {
                    tracing::warn!(channel = %self.channel, %reason, "probe failed; breaker stays open")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_closes_on_success() {
        let health = Health::new();
        let breaker = Breaker::new(Channel::Sms, 3, health.clone());
        let gate = breaker.gate();
        breaker.record_fault("500");
        breaker.record_fault("500");
        assert!(!breaker.is_open());
        breaker.record_success();
        breaker.record_fault("500");
        breaker.record_fault("500");
        assert!(!breaker.is_open(), "a success resets the count");
        breaker.record_fault("503");
        assert!(breaker.is_open());
        assert_eq!(gate.borrow().as_deref(), Some("503"));
        breaker.record_success();
        assert!(!breaker.is_open());
        assert!(gate.borrow().is_none());
    }
}
