//! What a connection does between requests: the clock that bounds its quiet,
//! and parking. hyper keeps ~24 KiB of buffers per HTTP/1 connection for as
//! long as it lives, idle or not; an HTTP/1 connection quiet for `PARK_AFTER`
//! is taken back from hyper at a request boundary (its buffers freed) and
//! waits for its next bytes with only the socket held, as nginx's keep-alive
//! connections do.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long an HTTP/1 connection has no request in flight before it is parked.
/// Long enough that a busy keep-alive client never pays for it.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// What a connection's requests are doing, for its idle clock.
pub(crate) struct Activity {
    start: Instant,
    /// Requests begun and not yet answered in full.
    in_flight: AtomicU32,
    /// Requests begun, ever.
    asked: AtomicU32,
    /// Milliseconds after `start` when the last request ended.
    quiet_since_ms: AtomicU64,
    /// The last request begun had no body: hyper read it whole before
    /// answering, so once it is answered the stream is at a request boundary.
    last_bodiless: AtomicBool,
    /// A request asked for an upgrade (or was a CONNECT): hyper keeps the
    /// upgrade pending for the connection's life, whatever the answer, and
    /// would hand the socket over instead of ending; such a connection is
    /// never parked.
    upgrade_asked: AtomicBool,
    /// The last write or flush to the client waited for it to read: hyper may
    /// still hold a response's end.
    write_waiting: AtomicBool,
    /// Set while hyper is asked to end so that the connection is parked: the
    /// socket's shutdown is then skipped (`ParkIo::poll_shutdown`).
    parking: AtomicBool,
}

pub(crate) enum Idle {
    Busy,
    /// No request in flight for this long.
    Since(Duration),
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicU32::new(0),
            asked: AtomicU32::new(0),
            quiet_since_ms: AtomicU64::new(0),
            last_bodiless: AtomicBool::new(false),
            upgrade_asked: AtomicBool::new(false),
            write_waiting: AtomicBool::new(false),
            parking: AtomicBool::new(false),
        }
    }

    pub(crate) fn ever_asked(&self) -> bool {
        self.asked.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn idle_for(&self) -> Idle {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Idle::Busy;
        }
        let since = self.start + Duration::from_millis(self.quiet_since_ms.load(Ordering::Acquire));
        Idle::Since(Instant::now().saturating_duration_since(since))
    }

    /// Whether hyper can be asked to end at a request boundary: every request
    /// answered in full and written out, the last one without a body (a body
    /// still being read, or dropped unread, would leave the stream
    /// mid-message), no upgrade ever asked.
    pub(crate) fn at_boundary(&self) -> bool {
        self.ever_asked()
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.last_bodiless.load(Ordering::Acquire)
            && !self.write_waiting.load(Ordering::Acquire)
            && !self.never_parked()
    }

    /// Whether the connection can never be parked.
    pub(crate) fn never_parked(&self) -> bool {
        self.upgrade_asked.load(Ordering::Acquire)
    }

    pub(crate) fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Release);
    }

    fn parking(&self) -> bool {
        self.parking.load(Ordering::Acquire)
    }
}

/// One request in flight on a connection, until its response body is done
/// (or the request is dropped, the client gone). Carried by the request's
/// access record, which ends it with the clock read it makes anyway.
pub(crate) struct InFlight {
    activity: Arc<Activity>,
    ended: bool,
}

impl InFlight {
    pub(crate) fn begin(activity: Arc<Activity>, bodiless: bool, upgrade: bool) -> Self {
        activity.asked.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.last_bodiless.store(bodiless, Ordering::Release);
        if upgrade {
            activity.upgrade_asked.store(true, Ordering::Release);
        }
        InFlight { activity, ended: false }
    }

    /// The request ended at `at`.
    pub(crate) fn end_at(mut self, at: Instant) {
        self.end(at);
    }

    fn end(&mut self, at: Instant) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let a = &self.activity;
        let ms = at.saturating_duration_since(a.start).as_millis() as u64;
        a.quiet_since_ms.fetch_max(ms, Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.ended {
            self.end(Instant::now());
        }
    }
}

/// Most bytes taken off the socket at once while no hyper connection holds it;
/// hyper reads the rest itself.
const READ_AHEAD: usize = 2048;

/// The client's stream as hyper sees it: bytes read before hyper took the
/// connection come first; shutdown is skipped while the connection is parking.
pub(crate) struct ParkIo<S> {
    unread: Bytes,
    io: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ParkIo<S> {
    pub(crate) fn new(io: S, activity: Arc<Activity>) -> Self {
        ParkIo {
            unread: Bytes::new(),
            io,
            activity,
        }
    }

    /// Bytes read and not yet handed to hyper.
    pub(crate) fn unread(&self) -> &[u8] {
        &self.unread
    }

    /// Puts back what hyper read and did not use (the start of a next request).
    pub(crate) fn put_back(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        // Copied: the bytes are a view of hyper's whole read buffer.
        self.unread = join(Bytes::copy_from_slice(&bytes), std::mem::take(&mut self.unread));
    }

    /// Waits for the peer's next bytes and keeps them for hyper. `false`: the
    /// peer closed its side.
    pub(crate) async fn read_more(&mut self) -> io::Result<bool> {
        poll_fn(|cx| {
            // On the stack for one poll only: not kept in the connection's task.
            let mut space = [0u8; READ_AHEAD];
            let mut buf = ReadBuf::new(&mut space);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let got = buf.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(false));
            }
            self.unread = join(std::mem::take(&mut self.unread), Bytes::copy_from_slice(got));
            Poll::Ready(Ok(true))
        })
        .await
    }
}

fn join(front: Bytes, back: Bytes) -> Bytes {
    if front.is_empty() {
        return back;
    }
    if back.is_empty() {
        return front;
    }
    let mut joined = BytesMut::with_capacity(front.len() + back.len());
    joined.extend_from_slice(&front);
    joined.extend_from_slice(&back);
    joined.freeze()
}

impl<S> ParkIo<S> {
    fn wrote<T>(&self, result: Poll<T>) -> Poll<T> {
        self.activity
            .write_waiting
            .store(result.is_pending(), Ordering::Relaxed);
        result
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ParkIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            if n == self.unread.len() {
                // Empty, it would still hold its allocation.
                self.unread = Bytes::new();
            } else {
                self.unread.advance(n);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ParkIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.parking() {
            // hyper ends its part; the socket stays open for the next request.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
