//! Group commit (issue #16): many handlers hand their work to one collector, which handles
//! what is waiting together (one transaction, one publish with confirms) and answers each
//! handler with its own result. The router groups requests and delivery events this way, the
//! sender runtime its `delivered` events.
//!
//! A batch closes when nothing more is waiting, when it is full, or after `linger`, so a lone
//! request is not held up for company: under load the requests that arrive while a batch is
//! in work make the next one. At most `parallel` batches are in work at once, which also
//! bounds the database connections the batches hold.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// The settings of a [`Batcher`].
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// The most items in one batch.
    pub max: usize,
    /// How long a batch that is not full waits for more after the first item, at most.
    pub linger: Duration,
    /// Batches in work at once.
    pub parallel: usize,
    /// `herald_batch_size{batcher=...}`: what the batches are of, for the histogram.
    pub name: &'static str,
}

/// Hands items to the collector; cheap to clone.
pub struct Batcher<I, O> {
    items: mpsc::Sender<(I, oneshot::Sender<O>)>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher {
            items: self.items.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the collector. `work` gets each batch and must return one output per item, in
    /// the items' order.
    pub fn spawn<W, F>(settings: BatchSettings, work: W) -> Self
    where
        W: Fn(Vec<I>) -> F + Send + Sync + 'static,
        F: Future<Output = Vec<O>> + Send + 'static,
    {
        let max = settings.max.max(1);
        let (items, waiting) = mpsc::channel(max * settings.parallel.max(1) * 2);
        tokio::spawn(collect(settings, max, waiting, Arc::new(work)));
        Batcher { items }
    }

    /// Handles `item` in the next batch; `None` when the collector is gone (the process is
    /// stopping) or the batch's work panicked, and the caller must handle the item alone.
    pub async fn submit(&self, item: I) -> Option<O> {
        let (answer, answered) = oneshot::channel();
        self.items.send((item, answer)).await.ok()?;
        answered.await.ok()
    }
}

async fn collect<I, O, W, F>(
    settings: BatchSettings,
    max: usize,
    mut waiting: mpsc::Receiver<(I, oneshot::Sender<O>)>,
    work: Arc<W>,
) where
    I: Send + 'static,
    O: Send + 'static,
    W: Fn(Vec<I>) -> F + Send + Sync + 'static,
    F: Future<Output = Vec<O>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(settings.parallel.max(1)));
    loop {
        // A slot first: while every batch is in work, items pile up for the next one.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + settings.linger;
        while batch.len() < max {
            match waiting.try_recv() {
                Ok(item) => batch.push(item),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, waiting.recv()).await {
                        Ok(Some(item)) => batch.push(item),
                        _ => break,
                    }
                }
            }
        }
        // A handler that stopped waiting (its message timed out, or the task was cancelled)
        // has dropped its receiver: its item is not worked on behind its back, which could
        // fan out a message the runner has already given up on.
        batch.retain(|(_, answer)| !answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        let work = work.clone();
        tokio::spawn(async move {
            let (items, answers): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
            metrics::histogram!("herald_batch_size", "batcher" => settings.name)
                .record(items.len() as f64);
            let outputs = work(items).await;
            // A handler that stopped waiting (its task was cancelled) drops its receiver.
            for (answer, output) in answers.into_iter().zip(outputs) {
                let _ = answer.send(output);
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn a_lone_item_is_not_held_and_waiting_items_go_together() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::spawn(
            BatchSettings {
                max: 10,
                linger: Duration::ZERO,
                parallel: 1,
                name: "test",
            },
            move |items: Vec<u32>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(items.len());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    items.into_iter().map(|i| i * 2).collect::<Vec<_>>()
                }
            },
        );
        assert_eq!(batcher.submit(1).await, Some(2));
        // Twelve at once while one batch is in work: the rest wait and go together, ten at
        // most to a batch, and each gets its own answer.
        let answers = futures::future::join_all((0..12).map(|i| batcher.submit(i))).await;
        assert_eq!(answers, (0..12).map(|i| Some(i * 2)).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes[0], 1, "{sizes:?}");
        assert!(sizes.iter().all(|s| *s <= 10), "{sizes:?}");
        assert!(sizes.len() <= 4, "{sizes:?}");
    }

    #[tokio::test]
    async fn a_batch_that_panics_leaves_its_items_to_their_callers() {
        let batcher = Batcher::spawn(
            BatchSettings {
                max: 4,
                linger: Duration::ZERO,
                parallel: 2,
                name: "test",
            },
            |items: Vec<u32>| async move {
                assert!(!items.contains(&13), "thirteen");
                items
            },
        );
        assert_eq!(batcher.submit(13).await, None);
        assert_eq!(batcher.submit(7).await, Some(7));
    }
}
