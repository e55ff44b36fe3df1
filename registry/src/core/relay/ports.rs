//! The relayed ports: drawn from a configured range, next-fit from a cursor
//! that keeps moving, so a port just given back is the last to be handed
//! out again (late datagrams for a gone allocation do not reach its
//! successor). No socket is ever bound on them: relayed addresses are
//! names the relay routes between its own allocations.

use std::collections::HashSet;

pub(super) struct PortPool {
    first: u16,
    last: u16,
    next: u16,
    in_use: HashSet<u16>,
}

impl PortPool {
    /// An empty or reversed range holds no port.
    pub fn new(range: (u16, u16)) -> Self {
        PortPool { first: range.0, last: range.1, next: range.0, in_use: HashSet::new() }
    }

    pub fn capacity(&self) -> usize {
        if self.first > self.last { 0 } else { usize::from(self.last - self.first) + 1 }
    }

    /// A free port (an even one when `even`), or `None` when none is left.
    pub fn take(&mut self, even: bool) -> Option<u16> {
        let capacity = self.capacity();
        if self.in_use.len() >= capacity {
            return None;
        }
        let mut port = self.next.clamp(self.first, self.last);
        for _ in 0..capacity {
            let candidate = port;
            port = if port >= self.last { self.first } else { port + 1 };
            if (!even || candidate.is_multiple_of(2)) && !self.in_use.contains(&candidate) {
                self.in_use.insert(candidate);
                self.next = port;
                return Some(candidate);
            }
        }
        None
    }

    pub fn give_back(&mut self, port: u16) {
        self.in_use.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fit_wraps_and_skips_ports_in_use() {
        let mut pool = PortPool::new((50_000, 50_003));
        assert_eq!(pool.capacity(), 4);
        let taken: Vec<u16> = (0..4).map(|_| pool.take(false).unwrap()).collect();
        assert_eq!(taken, vec![50_000, 50_001, 50_002, 50_003]);
        assert_eq!(pool.take(false), None);
        pool.give_back(50_001);
        assert_eq!(pool.take(false), Some(50_001));
        pool.give_back(50_000);
        pool.give_back(50_002);
        // The cursor is past 50_001: 50_002 comes before 50_000.
        assert_eq!(pool.take(false), Some(50_002));
        assert_eq!(pool.take(true), Some(50_000));
        assert_eq!(pool.take(true), None);
    }

    #[test]
    fn even_ports_and_degenerate_ranges() {
        let mut pool = PortPool::new((101, 104));
        assert_eq!(pool.take(true), Some(102));
        assert_eq!(pool.take(true), Some(104));
        assert_eq!(pool.take(true), None);
        assert_eq!(pool.take(false), Some(101));
        let mut reversed = PortPool::new((10, 9));
        assert_eq!((reversed.capacity(), reversed.take(false)), (0, None));
        let mut full = PortPool::new((0, u16::MAX));
        assert_eq!(full.capacity(), 65_536);
        assert_eq!(full.take(false), Some(0));
        let mut top = PortPool::new((u16::MAX, u16::MAX));
        assert_eq!((top.take(false), top.take(false)), (Some(u16::MAX), None));
    }
}
