//! A small map with a capacity that starts over when full: what a sender remembers per
//! delivery or per recipient (the parts of a long text already sent, a DM channel), where
//! forgetting an entry only costs a repeat (a part sent again, a channel opened again).
//! Simpler than an LRU, and its memory stays bounded.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

pub struct Bounded<K, V> {
    capacity: usize,
    entries: Mutex<HashMap<K, V>>,
}

impl<K: Eq + Hash, V: Clone> Bounded<K, V> {
    pub fn new(capacity: usize) -> Self {
        Bounded {
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.lock().get(key).cloned()
    }

    /// Inserts; a new key into a full map clears it first.
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, value);
    }

    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_starts_over_and_an_existing_key_never_clears_it() {
        let map = Bounded::new(2);
        map.insert(1, "a");
        map.insert(2, "b");
        map.insert(2, "B");
        assert_eq!((map.get(&1), map.get(&2)), (Some("a"), Some("B")));
        map.insert(3, "c");
        assert_eq!((map.get(&1), map.get(&3)), (None, Some("c")));
        map.remove(&3);
        assert_eq!(map.get(&3), None);
    }
}
