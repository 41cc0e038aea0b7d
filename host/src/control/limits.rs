//! What one client, and all of them together, may hold of the host: connections, request
//! bytes, idle time; and how the accept loop backs off when accepting fails.
//!
//! Invariants: bytes are taken from the shared [`ByteBudget`] without waiting (a
//! connection that cannot get them is refused, never blocked holding partial bytes), and
//! given back when a line is parsed or the connection ends; each connection's buffer lives
//! in its own anonymous mapping, so a freed buffer really leaves the process.

use super::MAX_REQUEST_BYTES;
use std::sync::Arc;
use std::time::Duration;

/// The default cap on clients connected at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The default time a connection may send nothing before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The default budget of request bytes buffered across all connections: 64 requests of
/// the largest size at once. Real requests are a few hundred bytes, so only a flood comes
/// near it, and it keeps a flood to a small fraction of a host's memory (without it, 256
/// connections could hold 256 MiB and, before the cap, 2,000 held 2 GB).
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;

/// How much a connection reads at once. Each connection's first chunk is not charged to
/// the shared budget, so a short request is served even while a flood has spent it.
pub(super) const READ_CHUNK: usize = 8 * 1024;

/// A request buffer larger than this goes back to the OS when freed.
const LARGE_BUFFER: usize = 64 * 1024;

/// Refused clients kept open (unread) at once, each for [`REFUSAL_LINGER`]: a client whose
/// socket closed before it wrote its request would see a broken pipe instead of the
/// reason. More are closed at once.
pub(super) const MAX_LINGERING_REFUSALS: usize = 64;

/// The longest a refused client is kept open.
pub(super) const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// What the control socket's clients can make the host hold. Memory for requests is at
/// most `max_connections` × 8 KiB plus `max_buffered_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlLimits {
    /// Clients connected at once; one more gets a one-line error and is closed unread.
    pub max_connections: usize,
    /// The longest request line, in bytes, without its newline; a longer one gets an error
    /// and the connection is closed.
    pub max_request_bytes: usize,
    /// Request bytes buffered across all connections (beyond each connection's first
    /// 8 KiB). A connection that needs more while it is spent gets an error and is closed.
    pub max_buffered_bytes: usize,
    /// A connection that sends nothing while the host waits for a request, or accepts
    /// nothing of a response, for this long is closed.
    pub idle_timeout: Duration,
    /// The first pause after a failed accept; each further failure doubles it, up to
    /// `max_accept_backoff`.
    pub accept_backoff: Duration,
    /// The longest pause between failed accepts.
    pub max_accept_backoff: Duration,
    /// At most one warning about failed (or refused) accepts per interval.
    pub accept_warning_interval: Duration,
}

impl Default for ControlLimits {
    fn default() -> ControlLimits {
        ControlLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_request_bytes: MAX_REQUEST_BYTES as usize,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            accept_backoff: Duration::from_millis(100),
            max_accept_backoff: Duration::from_secs(1),
            accept_warning_interval: Duration::from_secs(10),
        }
    }
}

/// The request bytes buffered across connections, against a limit. Never waits: a
/// connection that cannot take bytes is refused, so none blocks holding partial bytes.
#[derive(Debug)]
pub(super) struct ByteBudget {
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl ByteBudget {
    pub(super) fn new(limit: usize) -> ByteBudget {
        ByteBudget {
            limit,
            used: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Takes `bytes` if they fit; whether they did.
    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |used| used.checked_add(bytes).filter(|&total| total <= self.limit),
            )
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used
            .fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// One connection's unparsed bytes, in an anonymous mapping of their own (none while
/// empty): freeing it hands the memory straight back to the OS, whatever the allocator
/// keeps in its arenas. Its capacity beyond the first [`READ_CHUNK`] is charged to the
/// shared budget (invariant: `charged` is that amount, always).
pub(super) struct LineBuffer {
    storage: Option<memmap2::MmapMut>,
    /// The unparsed bytes are `storage[start..end]`: a parsed line only moves `start`, so
    /// many lines in one read cost no copying; they move to the front before a read.
    start: usize,
    end: usize,
    charged: usize,
    budget: Arc<ByteBudget>,
}

/// Why a connection could not buffer more bytes.
pub(super) enum BufferRefusal {
    /// The shared budget is spent.
    BudgetSpent,
    /// The OS gave no memory.
    NoMemory(std::io::Error),
}

impl LineBuffer {
    pub(super) fn new(budget: Arc<ByteBudget>) -> LineBuffer {
        LineBuffer {
            storage: None,
            start: 0,
            end: 0,
            charged: 0,
            budget,
        }
    }

    fn capacity(&self) -> usize {
        self.storage.as_ref().map_or(0, |storage| storage.len())
    }

    /// The buffered bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        self.storage
            .as_ref()
            .map_or(&[], |storage| &storage[self.start..self.end])
    }

    /// The room after the buffered bytes, to read into.
    pub(super) fn spare(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Some(storage) => &mut storage[self.end..],
            None => &mut [],
        }
    }

    /// Records `count` bytes read into [`LineBuffer::spare`].
    pub(super) fn filled(&mut self, count: usize) {
        self.end += count;
    }

    /// Makes room to read one more chunk, growing the capacity at most to `max_capacity`
    /// (nothing changes when it fails).
    pub(super) fn reserve_chunk(&mut self, max_capacity: usize) -> Result<(), BufferRefusal> {
        if let Some(storage) = &mut self.storage {
            storage.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let needed = self.end + READ_CHUNK;
        if needed <= self.capacity() {
            return Ok(());
        }
        let capacity = (self.capacity() * 2).min(max_capacity).max(needed);
        let charged = self.charged;
        if !self.charge_for(capacity) {
            return Err(BufferRefusal::BudgetSpent);
        }
        if let Err(error) = self.move_to(capacity) {
            let restored = self.charge_for(charged + READ_CHUNK);
            debug_assert!(restored, "giving bytes back always succeeds");
            return Err(BufferRefusal::NoMemory(error));
        }
        Ok(())
    }

    /// Moves the bytes to the front of a new mapping of `capacity` bytes (the old one is
    /// unmapped).
    fn move_to(&mut self, capacity: usize) -> std::io::Result<()> {
        let mut storage = memmap2::MmapMut::map_anon(capacity)?;
        let bytes = self.bytes();
        storage[..bytes.len()].copy_from_slice(bytes);
        self.end = bytes.len();
        self.start = 0;
        self.storage = Some(storage);
        Ok(())
    }

    /// Brings the charge to what `capacity` costs; false (and no change) when that needs
    /// more than the budget has left.
    fn charge_for(&mut self, capacity: usize) -> bool {
        let due = capacity.saturating_sub(READ_CHUNK);
        if due > self.charged {
            if !self.budget.try_take(due - self.charged) {
                return false;
            }
        } else {
            self.budget.give_back(self.charged - due);
        }
        self.charged = due;
        true
    }

    /// Drops the first `count` bytes (a line that was parsed). An empty buffer is unmapped
    /// (an idle connection holds none) and a large one shrinks to what remains.
    pub(super) fn consume(&mut self, count: usize) {
        let capacity = self.capacity();
        self.start += count;
        let remaining = self.end - self.start;
        if remaining == 0 {
            self.storage = None;
            self.start = 0;
            self.end = 0;
        } else if capacity <= LARGE_BUFFER
            || remaining >= capacity / 4
            || self.move_to(remaining.max(READ_CHUNK)).is_err()
        {
            return;
        }
        let shrunk = self.charge_for(self.capacity());
        debug_assert!(shrunk, "a smaller buffer needs no more budget");
        if capacity > LARGE_BUFFER {
            crate::process::return_free_memory_soon();
        }
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        self.budget.give_back(self.charged);
        if self.capacity() > LARGE_BUFFER {
            self.storage = None;
            crate::process::return_free_memory_soon();
        }
    }
}

/// The pause between failed accepts: it starts at `accept_backoff` and doubles up to
/// `max_accept_backoff`; a successful accept resets it.
#[derive(Debug)]
pub(super) struct AcceptBackoff {
    first: Duration,
    longest: Duration,
    next: Duration,
}

impl AcceptBackoff {
    pub(super) fn new(limits: &ControlLimits) -> AcceptBackoff {
        AcceptBackoff {
            first: limits.accept_backoff,
            longest: limits.max_accept_backoff,
            next: limits.accept_backoff,
        }
    }

    /// The pause after one more failure.
    pub(super) fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.longest);
        pause
    }

    pub(super) fn succeeded(&mut self) {
        self.next = self.first;
    }
}

/// One warning per interval; the occurrences in between are counted, not logged.
#[derive(Debug)]
pub(super) struct RateLimitedWarning {
    interval: Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedWarning {
    pub(super) fn new(interval: Duration) -> RateLimitedWarning {
        RateLimitedWarning {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// An occurrence at `now`: `Some(occurrences suppressed since the last warning)` when a
    /// warning is due, else `None` (and it is counted).
    pub(super) fn due(&mut self, now: std::time::Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_budget_refuses_what_does_not_fit_and_takes_back_what_is_given() {
        let budget = ByteBudget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(41), "60 + 41 is over 100");
        assert!(budget.try_take(40));
        budget.give_back(100);
        assert!(budget.try_take(100));
    }

    #[test]
    fn a_line_buffer_charges_its_capacity_beyond_the_first_chunk_and_frees_what_it_consumed() {
        let budget = Arc::new(ByteBudget::new(4 * READ_CHUNK));
        let mut buffer = LineBuffer::new(Arc::clone(&budget));
        let max_capacity = 1024 * 1024;
        assert!(buffer.reserve_chunk(max_capacity).is_ok());
        assert_eq!(buffer.capacity(), READ_CHUNK);
        assert_eq!(buffer.charged, 0, "the first chunk is free");
        buffer.spare().fill(b'x');
        buffer.filled(READ_CHUNK);
        assert!(buffer.reserve_chunk(max_capacity).is_ok());
        assert_eq!(buffer.capacity(), 2 * READ_CHUNK);
        assert_eq!(buffer.bytes(), vec![b'x'; READ_CHUNK]);
        assert_eq!(
            budget.used.load(std::sync::atomic::Ordering::Acquire),
            READ_CHUNK
        );
        buffer.filled(READ_CHUNK);
        assert!(buffer.reserve_chunk(max_capacity).is_ok());
        buffer.filled(2 * READ_CHUNK);
        assert!(
            matches!(
                buffer.reserve_chunk(max_capacity),
                Err(BufferRefusal::BudgetSpent)
            ),
            "8 chunks would charge 7, over the budget of 4"
        );
        assert_eq!(
            buffer.capacity(),
            4 * READ_CHUNK,
            "a refusal changes nothing"
        );
        buffer.spare();
        buffer.consume(4 * READ_CHUNK);
        assert_eq!(buffer.capacity(), 0, "an emptied buffer is unmapped");
        assert_eq!(budget.used.load(std::sync::atomic::Ordering::Acquire), 0);
        assert!(buffer.reserve_chunk(max_capacity).is_ok());
        buffer.spare()[..3].copy_from_slice(b"a\nb");
        buffer.filled(3);
        buffer.consume(2);
        assert_eq!(buffer.bytes(), b"b");
        assert_eq!(buffer.start, 2, "a parsed line moves nothing");
        assert!(buffer.reserve_chunk(max_capacity).is_ok());
        assert_eq!(
            buffer.start, 0,
            "before a read, the rest moves to the front"
        );
        assert_eq!(buffer.bytes(), b"b");
        drop(buffer);
        assert_eq!(budget.used.load(std::sync::atomic::Ordering::Acquire), 0);
    }

    #[test]
    fn a_large_buffer_shrinks_to_what_remains_after_a_line_and_returns_its_charge() {
        let budget = Arc::new(ByteBudget::new(usize::MAX));
        let mut buffer = LineBuffer::new(Arc::clone(&budget));
        while buffer.capacity() < 256 * 1024 {
            assert!(buffer.reserve_chunk(1024 * 1024).is_ok());
            let room = buffer.spare().len();
            buffer.filled(room);
        }
        buffer.consume(buffer.bytes().len() - 10);
        assert_eq!(buffer.capacity(), READ_CHUNK);
        assert_eq!(buffer.bytes().len(), 10);
        assert_eq!(budget.used.load(std::sync::atomic::Ordering::Acquire), 0);
    }

    #[test]
    fn failed_accepts_pause_longer_each_time_up_to_the_longest_and_a_success_resets_it() {
        let mut backoff = AcceptBackoff::new(&ControlLimits::default());
        let pauses: Vec<_> = (0..6).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(100));
    }

    #[test]
    fn a_warning_is_due_once_per_interval_with_the_count_of_those_suppressed() {
        let mut warning = RateLimitedWarning::new(Duration::from_secs(10));
        let start = std::time::Instant::now();
        assert_eq!(warning.due(start), Some(0));
        for second in 1..10 {
            assert_eq!(warning.due(start + Duration::from_secs(second)), None);
        }
        assert_eq!(warning.due(start + Duration::from_secs(10)), Some(9));
        assert_eq!(warning.due(start + Duration::from_secs(11)), None);
    }
}
