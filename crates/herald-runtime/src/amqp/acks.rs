//! Acks in runs (issue #16): one `basic.ack` with `multiple` for every delivery of a channel
//! that is done, instead of one ack per message.
//!
//! A quorum queue writes each ack it gets to its log, and every ack frame costs the broker's
//! channel and the client a round of work; under load the handlers of a consumer finish in
//! bursts (a group answers all its requests at once), so most acks can go together.
//!
//! `multiple` acks every unacked delivery of the channel up to the tag it names, so a run may
//! only end below the lowest delivery still in work. The consume loop reports each delivery
//! it takes ([`Acks::taken`]) before its handler starts, the handler reports it done
//! ([`Acks::done`]) after its retry or dead letter is published, and one task per channel
//! acks: the done deliveries below the lowest one in work with one `multiple` ack, and those
//! above it (a slow handler holds the run back) each alone once they have waited `hold`, so a
//! slow message never keeps the others from being acked for long.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lapin::Acker;
use lapin::options::BasicAckOptions;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a done delivery waits for the ones before it before it is acked alone.
pub const HOLD: Duration = Duration::from_millis(20);

enum Event<A> {
    Taken(u64),
    Done(u64, A),
}

/// The channel's ack task's handle; cheap to clone. The task ends, after acking what is
/// done, when every handle is dropped.
#[derive(Clone)]
pub struct Acks {
    events: mpsc::UnboundedSender<Event<Acker>>,
}

impl Acks {
    /// Starts the ack task of one channel.
    pub fn start(hold: Duration) -> (Acks, JoinHandle<()>) {
        let (events, received) = mpsc::unbounded_channel();
        (Acks { events }, tokio::spawn(run(received, hold)))
    }

    /// The consume loop took delivery `tag`; call before its handler starts.
    pub fn taken(&self, tag: u64) {
        let _ = self.events.send(Event::Taken(tag));
    }

    /// Delivery `tag` is done and may be acked. If the task is gone (the channel is being
    /// torn down) it stays unacked and the broker delivers it again.
    pub fn done(&self, tag: u64, acker: Acker) {
        let _ = self.events.send(Event::Done(tag, acker));
    }
}

/// What the task knows: the deliveries in work and those done but not acked (with what acks
/// each, an [`Acker`] but for tests).
struct Ledger<A> {
    open: BTreeSet<u64>,
    done: BTreeMap<u64, A>,
    /// When the oldest done delivery above the lowest open one started waiting.
    held_since: Option<Instant>,
}

/// One ack to send: the acker of the delivery it names and whether it covers all before.
type Ack<A> = (A, bool);

impl<A> Ledger<A> {
    fn new() -> Self {
        Ledger {
            open: BTreeSet::new(),
            done: BTreeMap::new(),
            held_since: None,
        }
    }

    fn apply(&mut self, event: Event<A>) {
        match event {
            Event::Taken(tag) => {
                self.open.insert(tag);
            }
            Event::Done(tag, acker) => {
                self.open.remove(&tag);
                self.done.insert(tag, acker);
            }
        }
    }

    /// The run below the lowest delivery in work, as one `multiple` ack.
    fn run(&mut self) -> Option<Ack<A>> {
        let floor = self.open.first().copied().unwrap_or(u64::MAX);
        let below = self.done.split_off(&floor);
        let run = std::mem::replace(&mut self.done, below);
        let (_, last) = run.into_iter().next_back()?;
        Some((last, true))
    }

    /// Every done delivery, each alone (what waits above a slow one).
    fn each(&mut self) -> Vec<Ack<A>> {
        self.held_since = None;
        std::mem::take(&mut self.done)
            .into_values()
            .map(|acker| (acker, false))
            .collect()
    }
}

async fn run(mut received: mpsc::UnboundedReceiver<Event<Acker>>, hold: Duration) {
    let mut ledger = Ledger::new();
    loop {
        let event = match ledger.held_since {
            None => received.recv().await,
            Some(since) => tokio::select! {
                event = received.recv() => event,
                () = tokio::time::sleep_until(since + hold) => {
                    send(ledger.each()).await;
                    continue;
                }
            },
        };
        let Some(event) = event else {
            // Every handle is gone: what is done is acked; what was never done (a handler
            // given up at the drain deadline) stays unacked and comes back.
            let mut last = ledger.run().into_iter().collect::<Vec<_>>();
            last.extend(ledger.each());
            send(last).await;
            return;
        };
        ledger.apply(event);
        while let Ok(event) = received.try_recv() {
            ledger.apply(event);
        }
        send(ledger.run().into_iter().collect()).await;
        if ledger.done.is_empty() {
            ledger.held_since = None;
        } else {
            ledger.held_since.get_or_insert_with(Instant::now);
        }
    }
}

async fn send(acks: Vec<Ack<Acker>>) {
    for (acker, multiple) in acks {
        if let Err(error) = acker.ack(BasicAckOptions { multiple }).await {
            // The channel is gone; the broker redelivers and the repeat is dropped
            // downstream by its id.
            tracing::warn!(%error, "ack failed; the messages will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(ledger: &mut Ledger<u64>, tag: u64) {
        ledger.apply(Event::Done(tag, tag));
    }

    #[test]
    fn a_run_ends_below_the_lowest_delivery_in_work() {
        let mut ledger = Ledger::new();
        for tag in 1..=5 {
            ledger.apply(Event::Taken(tag));
        }
        for tag in [2, 3, 5] {
            done(&mut ledger, tag);
        }
        // 1 is in work: nothing may be acked with `multiple`.
        assert_eq!(ledger.run(), None);
        done(&mut ledger, 1);
        // 1, 2 and 3 are done, 4 is in work: one ack of 3 covers them; 5 waits.
        assert_eq!(ledger.run(), Some((3, true)));
        assert_eq!(ledger.done.keys().copied().collect::<Vec<_>>(), [5]);
        done(&mut ledger, 4);
        assert_eq!(ledger.run(), Some((5, true)));
        assert!(ledger.done.is_empty());
    }

    #[test]
    fn what_waits_above_a_slow_delivery_is_acked_alone() {
        let mut ledger = Ledger::new();
        for tag in 1..=4 {
            ledger.apply(Event::Taken(tag));
        }
        done(&mut ledger, 3);
        done(&mut ledger, 4);
        assert_eq!(ledger.run(), None);
        // Each alone: a `multiple` ack of 4 would take 1 and 2, still in work.
        assert_eq!(ledger.each(), [(3, false), (4, false)]);
        // Tags taken later do not let an old run reach past the slow one.
        ledger.apply(Event::Taken(5));
        done(&mut ledger, 5);
        assert_eq!(ledger.run(), None);
        done(&mut ledger, 1);
        assert_eq!(ledger.run(), Some((1, true)));
    }
}
