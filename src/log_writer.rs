//! Where every log line goes: into a memory buffer that a thread of its own
//! writes to stderr, so neither a request nor a runtime thread ever waits on a
//! write (a slow journald, a full pipe), as nginx's `access_log ... buffer=`
//! never does. A line that does not fit while the buffer is full is dropped and
//! counted (`gitlab_oidc_proxy_log_lines_dropped_total`); what is held is
//! written within [`FLUSH_EVERY`], at once past [`FLUSH_AT`] bytes, and on
//! [`flush`] at exit. The access lines and `tracing`'s share the one buffer, so
//! they keep their order.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// Longest a line waits in memory.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full is written at once.
const FLUSH_AT: usize = 32 * 1024;
/// Held and not yet written: beyond this, lines are dropped.
const CAPACITY: usize = 1024 * 1024;

/// The buffer between the requests and the writer thread.
pub(crate) struct LineBuffer {
    state: Mutex<State>,
    /// The writer thread waits here for a full buffer or a flush.
    wake: Condvar,
    /// [`LineBuffer::flush`] waits here for the writer to have written everything.
    written: Condvar,
    capacity: usize,
    dropped: Counter,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// Lines taken by the writer thread and being written.
    writing: bool,
    /// How many times a flush asked for everything to be written.
    flushes_asked: u64,
    /// Flushes waiting for the writer (most of the time none: no wake then).
    flushing: u32,
    /// The writer was woken for a full buffer and has not taken it yet: the
    /// lines appended meanwhile wake it no more (each wake is a system call,
    /// and on a shared core the writer may run only much later).
    woken: bool,
}

static STDERR: OnceLock<&'static LineBuffer> = OnceLock::new();

/// The process's log, on stderr; its thread starts with the first line.
pub(crate) fn stderr() -> &'static LineBuffer {
    STDERR.get_or_init(|| {
        let buffer: &'static LineBuffer = Box::leak(Box::new(LineBuffer::new(CAPACITY, dropped_lines())));
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || buffer.write_forever(std::io::stderr()))
            .expect("the log writer thread starts");
        buffer
    })
}

/// Lines dropped because the buffer was full: registered by the metrics.
pub(crate) fn dropped_lines() -> Counter {
    static DROPPED: OnceLock<Counter> = OnceLock::new();
    DROPPED.get_or_init(Counter::default).clone()
}

/// `tracing`'s writer: each event is gathered, then appended whole.
pub(crate) struct Stderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = EventLine;

    fn make_writer(&'a self) -> EventLine {
        EventLine(Vec::new())
    }
}

/// One `tracing` event as it is formatted; appended to the log when dropped.
pub(crate) struct EventLine(Vec<u8>);

impl Write for EventLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            stderr().append(|buf| buf.extend_from_slice(&self.0));
        }
    }
}

/// Writes out every line so far and waits for it (at exit).
pub(crate) fn flush() {
    if let Some(buffer) = STDERR.get() {
        buffer.flush();
    }
}

impl LineBuffer {
    pub(crate) fn new(capacity: usize, dropped: Counter) -> Self {
        LineBuffer {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
            capacity,
            dropped,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves bytes, never a broken invariant.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one line made by `write` (which ends it with `\n`); drops it
    /// and counts it when the buffer is full.
    pub(crate) fn append(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let mut state = self.lock();
        if state.buf.len() >= self.capacity {
            drop(state);
            self.dropped.inc();
            return;
        }
        write(&mut state.buf);
        if state.buf.len() >= FLUSH_AT && !state.woken {
            state.woken = true;
            self.wake.notify_one();
        }
    }

    /// Waits until every line appended so far is written (at most 5 s: a
    /// stopped reader of stderr must not keep the process from exiting).
    pub(crate) fn flush(&self) {
        let mut state = self.lock();
        state.flushes_asked += 1;
        state.flushing += 1;
        self.wake.notify_one();
        while !state.buf.is_empty() || state.writing {
            let (next, waited) = self
                .written
                .wait_timeout(state, Duration::from_secs(5))
                .unwrap_or_else(PoisonError::into_inner);
            state = next;
            if waited.timed_out() {
                break;
            }
        }
        state.flushing -= 1;
    }

    /// The writer thread: takes what is held every [`FLUSH_EVERY`], when
    /// [`FLUSH_AT`] bytes are held, or on a flush, and writes it to `out`.
    pub(crate) fn write_forever(&self, mut out: impl Write) {
        let mut spare = Vec::with_capacity(FLUSH_AT);
        loop {
            let mut state = self.lock();
            let asked = state.flushes_asked;
            state = self
                .wake
                .wait_timeout_while(state, FLUSH_EVERY, |s| {
                    s.buf.len() < FLUSH_AT && s.flushes_asked == asked
                })
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            std::mem::swap(&mut state.buf, &mut spare);
            state.writing = !spare.is_empty();
            state.woken = false;
            drop(state);
            if !spare.is_empty() {
                // Nothing to do about a failed write but to go on: the log is not the service.
                let _ = out.write_all(&spare);
                let _ = out.flush();
                spare.clear();
                // A burst's buffer is not kept for ever.
                spare.shrink_to(FLUSH_AT);
            }
            let mut state = self.lock();
            state.writing = false;
            if state.buf.is_empty() && state.flushing > 0 {
                self.written.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer that can be held still, as a full pipe would.
    #[derive(Clone, Default)]
    struct Held {
        out: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Held {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn started(capacity: usize, out: Held) -> &'static LineBuffer {
        let buffer: &'static LineBuffer = Box::leak(Box::new(LineBuffer::new(capacity, Counter::default())));
        std::thread::spawn(move || buffer.write_forever(out));
        buffer
    }

    #[test]
    fn lines_are_written_in_order_and_flush_waits_for_them() {
        let out = Held::default();
        let buffer = started(CAPACITY, out.clone());
        for i in 0..1000 {
            buffer.append(|b| b.extend_from_slice(format!("line {i}\n").as_bytes()));
        }
        buffer.flush();
        let written = String::from_utf8(out.out.lock().unwrap().clone()).unwrap();
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(written, expected);
        assert_eq!(buffer.dropped.get(), 0);
    }

    #[test]
    fn a_stuck_writer_costs_lines_not_waits() {
        let out = Held::default();
        let gate = out.gate.lock().unwrap();
        let buffer = started(4096, out.clone());
        buffer.append(|b| b.extend_from_slice(b"first\n"));
        let line = [b'x'; 99];
        for _ in 0..100 {
            buffer.append(|b| {
                b.extend_from_slice(&line);
                b.push(b'\n');
            });
        }
        // 10,000 bytes offered to 4,096 of room (twice at most, if the writer
        // took a batch meanwhile): some are dropped, none waited.
        assert!(buffer.dropped.get() > 0);
        drop(gate);
        buffer.flush();
        let written = out.out.lock().unwrap().len();
        assert_eq!(written as u64, 6 + (100 - buffer.dropped.get()) * 100);
    }
}
