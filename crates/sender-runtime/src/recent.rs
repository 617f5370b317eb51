//! Delivery ids recently sent by this process, so a redelivered job (its ack was lost, the
//! connection dropped after the send) is not sent twice (R44).
//!
//! A delivery being sent right now is claimed, so a second copy arriving at the same moment
//! (the router published twice, a redelivery overtook the first attempt) waits instead of
//! racing it. Bounded by count: the oldest ids are forgotten first. It covers one process;
//! across replicas the router's delivery records make repeated events harmless.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::sender::Receipt;

pub struct RecentDeliveries {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    receipts: HashMap<Uuid, Receipt>,
    order: VecDeque<Uuid>,
    in_flight: HashSet<Uuid>,
}

/// What a job finds when it asks to be sent.
pub enum Claim {
    /// Send it; report the result through the guard.
    Mine(ClaimGuard),
    /// Sent before: repeat its result, do not send again.
    AlreadySent(Receipt),
    /// Another copy is being sent right now: wait for it.
    InFlight,
}

/// Holds a delivery id as "being sent" until [`ClaimGuard::sent`] or drop (a failed send,
/// a cancelled task), so a later copy can try again.
pub struct ClaimGuard {
    recent: Arc<RecentDeliveries>,
    id: Uuid,
}

impl ClaimGuard {
    pub fn sent(self, receipt: Receipt) {
        self.recent.insert(self.id, receipt);
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.recent.lock().in_flight.remove(&self.id);
    }
}

impl RecentDeliveries {
    pub fn new(capacity: usize) -> Self {
        RecentDeliveries {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    pub fn claim(self: &Arc<Self>, delivery_id: Uuid) -> Claim {
        let mut inner = self.lock();
        if let Some(receipt) = inner.receipts.get(&delivery_id) {
            return Claim::AlreadySent(receipt.clone());
        }
        if !inner.in_flight.insert(delivery_id) {
            return Claim::InFlight;
        }
        Claim::Mine(ClaimGuard {
            recent: self.clone(),
            id: delivery_id,
        })
    }

    pub fn get(&self, delivery_id: &Uuid) -> Option<Receipt> {
        self.lock().receipts.get(delivery_id).cloned()
    }

    pub fn insert(&self, delivery_id: Uuid, receipt: Receipt) {
        let mut inner = self.lock();
        if inner.receipts.insert(delivery_id, receipt).is_none() {
            inner.order.push_back(delivery_id);
        }
        while inner.order.len() > self.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.receipts.remove(&oldest);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_copy_waits_while_the_first_is_sent_then_sees_its_receipt() {
        let recent = Arc::new(RecentDeliveries::new(10));
        let id = Uuid::new_v4();
        let Claim::Mine(guard) = recent.claim(id) else {
            panic!("first claim")
        };
        assert!(matches!(recent.claim(id), Claim::InFlight));
        guard.sent(Receipt {
            provider_message_id: Some("SM1".into()),
        });
        assert!(
            matches!(recent.claim(id), Claim::AlreadySent(r) if r.provider_message_id.as_deref() == Some("SM1"))
        );
    }

    #[test]
    fn a_failed_attempt_releases_its_claim() {
        let recent = Arc::new(RecentDeliveries::new(10));
        let id = Uuid::new_v4();
        let Claim::Mine(guard) = recent.claim(id) else {
            panic!()
        };
        drop(guard);
        assert!(matches!(recent.claim(id), Claim::Mine(_)));
    }

    #[test]
    fn remembers_receipts_and_forgets_the_oldest_beyond_capacity() {
        let recent = RecentDeliveries::new(2);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        recent.insert(
            a,
            Receipt {
                provider_message_id: Some("1".into()),
            },
        );
        recent.insert(b, Receipt::default());
        assert_eq!(
            recent.get(&a).unwrap().provider_message_id.as_deref(),
            Some("1")
        );
        recent.insert(c, Receipt::default());
        assert!(recent.get(&a).is_none());
        assert!(recent.get(&b).is_some() && recent.get(&c).is_some());
    }
}
