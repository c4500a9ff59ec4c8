//! IdAllocator: disjoint 64-bit ID chunks, as pure logic.
//!
//! Chunks come from a free list of returned tails (first fit) or from the
//! high-water mark. A chunk's used part is retired for good; only the tail
//! above the last ID a failed attempt reported using comes back. The chunk
//! of a lost attempt, or of a failed one that reported no ID, is retired
//! whole: its program may have used IDs it never reported, so handing them
//! out again could issue an ID twice.

use crate::protocol::IdRange;

#[derive(Debug, Clone, Default)]
pub struct IdAllocator {
    next: u64,
    /// Returned, never-used ranges, sorted by `lo`, pairwise disjoint.
    free: Vec<IdRange>,
}

impl IdAllocator {
    /// Start above `high_water` (every ID below it may have been issued).
    pub fn new(high_water: u64) -> Self {
        Self {
            next: high_water,
            free: Vec::new(),
        }
    }

    /// Every ID at or above this has never been issued.
    pub fn high_water(&self) -> u64 {
        self.next
    }

    pub fn free_ranges(&self) -> &[IdRange] {
        &self.free
    }

    /// Reserve `size` IDs; `None` when the 64-bit space is exhausted.
    pub fn allocate(&mut self, size: u64) -> Option<IdRange> {
        let size = size.max(1);
        if let Some(i) = self.free.iter().position(|r| r.len() >= size) {
            let r = self.free[i];
            let chunk = IdRange {
                lo: r.lo,
                hi: r.lo + size,
            };
            if chunk.hi == r.hi {
                self.free.remove(i);
            } else {
                self.free[i].lo = chunk.hi;
            }
            return Some(chunk);
        }
        let hi = self.next.checked_add(size)?;
        let chunk = IdRange { lo: self.next, hi };
        self.next = hi;
        Some(chunk)
    }

    /// After a restart: issue nothing below `floor`, and forget returned
    /// tails (one of them may have been handed out again before the crash).
    pub fn resume_above(&mut self, floor: u64) {
        self.next = self.next.max(floor);
        self.free.clear();
    }

    /// Give back the never-used tail of a chunk.
    pub fn release(&mut self, tail: IdRange) {
        if tail.is_empty() || tail.lo >= self.next {
            return;
        }
        let tail = IdRange {
            lo: tail.lo,
            hi: tail.hi.min(self.next),
        };
        if self.free.iter().any(|r| r.overlaps(&tail)) {
            // A double release would hand the same IDs out twice: refuse it.
            return;
        }
        let at = self.free.partition_point(|r| r.lo < tail.lo);
        self.free.insert(at, tail);
        // Merge neighbours so the list stays short.
        let mut merged: Vec<IdRange> = Vec::with_capacity(self.free.len());
        for r in self.free.drain(..) {
            match merged.last_mut() {
                Some(last) if last.hi == r.lo => last.hi = r.hi,
                _ => merged.push(r),
            }
        }
        self.free = merged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunks_are_disjoint_and_tails_are_reused() {
        let mut a = IdAllocator::new(0);
        let c1 = a.allocate(100).unwrap();
        let c2 = a.allocate(100).unwrap();
        assert!(!c1.overlaps(&c2));
        a.release(IdRange { lo: 40, hi: 100 });
        let c3 = a.allocate(50).unwrap();
        assert_eq!(c3, IdRange { lo: 40, hi: 90 });
        let c4 = a.allocate(50).unwrap();
        assert_eq!(c4.lo, 200, "the 10 left do not fit: fresh IDs");
        assert_eq!(a.free_ranges(), &[IdRange { lo: 90, hi: 100 }]);
    }

    #[test]
    fn a_double_release_is_ignored() {
        let mut a = IdAllocator::new(0);
        a.allocate(100).unwrap();
        a.release(IdRange { lo: 50, hi: 100 });
        a.release(IdRange { lo: 60, hi: 100 });
        assert_eq!(a.free_ranges(), &[IdRange { lo: 50, hi: 100 }]);
    }

    #[test]
    fn exhaustion_is_none_not_a_wrap() {
        let mut a = IdAllocator::new(u64::MAX - 10);
        assert!(a.allocate(5).is_some());
        assert!(a.allocate(10).is_none());
    }

    proptest! {
        #[test]
        fn outstanding_chunks_never_overlap(ops in proptest::collection::vec((1u64..50, any::<bool>(), 0u64..60), 1..200)) {
            let mut a = IdAllocator::new(1000);
            let mut live: Vec<IdRange> = Vec::new();
            for (size, release, used) in ops {
                if release && !live.is_empty() {
                    let c = live.remove(0);
                    let cut = (c.lo + used).min(c.hi);
                    a.release(IdRange { lo: cut, hi: c.hi });
                    if cut > c.lo {
                        live.push(IdRange { lo: c.lo, hi: cut }); // retired, still counts
                    }
                } else if let Some(c) = a.allocate(size) {
                    prop_assert_eq!(c.len(), size);
                    prop_assert!(c.lo >= 1000);
                    for l in &live {
                        prop_assert!(!l.overlaps(&c), "{:?} overlaps {:?}", c, l);
                    }
                    live.push(c);
                }
                for f in a.free_ranges() {
                    for l in &live {
                        prop_assert!(!l.overlaps(f));
                    }
                }
            }
        }
    }
}
