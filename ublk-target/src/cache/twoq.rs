//! 2Q replacement (Johnson and Shasha, VLDB 1994) for the clean blocks of the cache.
//!
//! Plain LRU lets one long scan flush every hot block. 2Q keeps blocks seen once in a FIFO
//! (`a1in`); only a block referenced again after it fell out of that FIFO (its key is still
//! remembered in the ghost list `a1out`) enters the main LRU (`am`). A scan therefore cycles
//! through `a1in` and leaves `am` alone. Pure; O(log n) per operation.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// An insertion-ordered set with removal by key.
#[derive(Debug)]
struct Ordered<K> {
    by_tick: BTreeMap<u64, K>,
    tick_of: HashMap<K, u64>,
    next_tick: u64,
}

impl<K: Copy + Eq + Hash> Ordered<K> {
    fn new() -> Self {
        Ordered {
            by_tick: BTreeMap::new(),
            tick_of: HashMap::new(),
            next_tick: 0,
        }
    }

    fn len(&self) -> usize {
        self.tick_of.len()
    }

    fn contains(&self, key: K) -> bool {
        self.tick_of.contains_key(&key)
    }

    /// Appends `key` as the newest (moving it there if present).
    fn push_newest(&mut self, key: K) {
        self.remove(key);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.by_tick.insert(tick, key);
        self.tick_of.insert(key, tick);
    }

    fn remove(&mut self, key: K) -> bool {
        match self.tick_of.remove(&key) {
            Some(tick) => {
                self.by_tick.remove(&tick);
                true
            }
            None => false,
        }
    }

    fn pop_oldest(&mut self) -> Option<K> {
        let (_, key) = self.by_tick.pop_first()?;
        self.tick_of.remove(&key);
        Some(key)
    }
}

/// 2Q over keys `K`: which resident key to evict next.
#[derive(Debug)]
pub struct TwoQ<K> {
    a1in: Ordered<K>,
    am: Ordered<K>,
    a1out: Ordered<K>,
    a1in_target: usize,
    a1out_limit: usize,
}

impl<K: Copy + Eq + Hash> TwoQ<K> {
    /// A 2Q for a cache of `capacity` entries, with the paper's recommended sizes: `a1in` a
    /// quarter of the cache, the ghost list half of it.
    pub fn new(capacity: usize) -> Self {
        TwoQ {
            a1in: Ordered::new(),
            am: Ordered::new(),
            a1out: Ordered::new(),
            a1in_target: (capacity / 4).max(1),
            a1out_limit: (capacity / 2).max(1),
        }
    }

    /// Resident keys.
    pub fn len(&self) -> usize {
        self.a1in.len() + self.am.len()
    }

    /// Whether no key is resident.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is resident in the main (frequently used) list.
    pub fn is_hot(&self, key: K) -> bool {
        self.am.contains(key)
    }

    /// Makes `key` resident: into the main list if it was seen recently (a ghost), otherwise
    /// into the FIFO of first-time keys.
    pub fn insert(&mut self, key: K) {
        if self.a1in.contains(key) || self.am.contains(key) {
            return self.touch(key);
        }
        if self.a1out.remove(key) {
            self.am.push_newest(key);
        } else {
            self.a1in.push_newest(key);
        }
    }

    /// Records a reference to a resident key. A key in the FIFO stays where it is: correlated
    /// references right after the first one do not make a key hot.
    pub fn touch(&mut self, key: K) {
        if self.am.contains(key) {
            self.am.push_newest(key);
        }
    }

    /// Forgets a resident key without remembering it as a ghost (it was invalidated, not
    /// evicted).
    pub fn remove(&mut self, key: K) {
        if !self.a1in.remove(key) {
            self.am.remove(key);
        }
    }

    /// Chooses and removes the key to evict: the oldest first-time key while the FIFO is over its
    /// share (remembered as a ghost), else the least recently used hot key.
    pub fn pop_victim(&mut self) -> Option<K> {
        if self.a1in.len() > self.a1in_target || self.am.len() == 0 {
            let key = self.a1in.pop_oldest()?;
            self.a1out.push_newest(key);
            while self.a1out.len() > self.a1out_limit {
                self.a1out.pop_oldest();
            }
            return Some(key);
        }
        self.am.pop_oldest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs an access on a 2Q-managed cache of `capacity`, evicting when full. Returns whether
    /// it was a hit.
    fn access(q: &mut TwoQ<u64>, capacity: usize, key: u64) -> bool {
        let resident = q.a1in.contains(key) || q.am.contains(key);
        if resident {
            q.touch(key);
            return true;
        }
        if q.len() == capacity {
            q.pop_victim().expect("a full cache has a victim");
        }
        q.insert(key);
        false
    }

    #[test]
    fn a_scan_does_not_flush_the_hot_set() {
        let capacity = 100;
        let mut q = TwoQ::new(capacity);
        let hot: Vec<u64> = (0..50).collect();
        // Warm up: the hot set is seen, pushed out of the FIFO by others, and seen again.
        for round in 0..4 {
            for &k in &hot {
                access(&mut q, capacity, k);
            }
            for k in 0..40 {
                access(&mut q, capacity, 10_000 + round * 100 + k);
            }
        }
        assert!(hot.iter().all(|&k| q.is_hot(k)), "hot set promoted");
        // A long one-pass scan.
        for k in 1_000_000..1_010_000 {
            access(&mut q, capacity, k);
        }
        let hits = hot.iter().filter(|&&k| access(&mut q, capacity, k)).count();
        assert_eq!(hits, hot.len(), "every hot block survived the scan");
    }

    #[test]
    fn plain_lru_behaviour_would_have_lost_them() {
        // The same scan against the FIFO alone (everything first-time) evicts everything: the
        // protection above comes from the ghost list, not from luck.
        let mut q = TwoQ::new(10);
        for k in 0..10 {
            access(&mut q, 10, k);
        }
        for k in 100..200 {
            access(&mut q, 10, k);
        }
        assert!((0..10).all(|k| !q.a1in.contains(k) && !q.am.contains(k)));
    }

    #[test]
    fn ghosts_are_bounded_and_removal_forgets() {
        let mut q = TwoQ::new(8);
        for k in 0..100 {
            access(&mut q, 8, k);
        }
        assert!(q.a1out.len() <= 4);
        assert_eq!(q.len(), 8);
        q.remove(99);
        assert_eq!(q.len(), 7);
        assert!(!q.a1out.contains(99), "invalidated keys are not ghosts");
        let mut emptied = 0;
        while q.pop_victim().is_some() {
            emptied += 1;
        }
        assert_eq!(emptied, 7);
        assert!(q.is_empty());
    }

    #[test]
    fn hot_keys_leave_in_lru_order() {
        let mut q = TwoQ::new(4);
        q.insert(1);
        q.insert(2);
        assert_eq!(q.pop_victim(), Some(1));
        assert_eq!(q.pop_victim(), Some(2));
        // Ghosts that come back are hot.
        q.insert(1);
        q.insert(2);
        assert!(q.is_hot(1) && q.is_hot(2));
        q.touch(1);
        assert_eq!(q.pop_victim(), Some(2));
        assert_eq!(q.pop_victim(), Some(1));
    }
}
