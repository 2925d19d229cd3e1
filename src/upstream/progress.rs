//! How far a request body has got on its way to GitLab, so that one timer can
//! bound both of GitLab's silences in an exchange: not taking the upload (nginx's
//! `proxy_send_timeout`) and, once it is sent, not answering.
//!
//! hyper asks the body for a frame only when its write buffer (~400 KiB) has
//! room for one. A body left unasked while it has a frame to give means that
//! buffer is not draining: GitLab stopped reading. Frames go to hyper in pieces
//! of at most [`PIECE`], so that room comes back, and a piece is taken, each
//! time GitLab reads that much: a GitLab reading slowly but steadily is never
//! taken for a silent one (whole client frames, up to ~400 KiB, would need
//! GitLab to read that much within each period). A body waiting on the client
//! is the client's silence, which `--client-body-timeout` bounds; it is not
//! counted here. What is left in the buffers once the last piece is taken
//! counts as sent: a GitLab that stops reading only those bytes gets the
//! response timeout's 504 rather than this one.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::body::{self, ProxyBody};
use crate::error::BoxError;

/// The largest piece of a client's frame handed to hyper at once.
const PIECE: usize = 64 * 1024;

/// The body is waiting on the client for its next bytes.
const WAITING_ON_CLIENT: u64 = u64::MAX;
/// Set over the time at which the body was sent in full (or dropped).
const SENT: u64 = 1 << 63;

/// Shared by the body (which writes) and the exchange's timer (which reads).
/// The state is one word: the nanoseconds since `start` at which hyper last
/// took a frame, `SENT` over the time the body ended, or `WAITING_ON_CLIENT`.
pub(super) struct Progress {
    start: Instant,
    state: AtomicU64,
}

/// What the exchange's timer makes of the body's progress when it fires.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing overdue: look again at this instant.
    WaitUntil(Instant),
    /// GitLab took no body bytes for the whole limit.
    NotTaken,
    /// The body was sent in full and no answer came within the limit.
    NotAnswered,
}

impl Progress {
    fn since_start(&self) -> u64 {
        // Saturates far beyond any limit (2^63 ns is 292 years), below the
        // bits that mark the other states.
        u64::try_from(self.start.elapsed().as_nanos()).map_or(SENT - 2, |ns| ns.min(SENT - 2))
    }

    fn record(&self, state: u64) {
        self.state.store(state, Ordering::Relaxed);
    }

    /// Checked when the timer fires at `now`: `limit` is `--idle-timeout`.
    pub(super) fn verdict(&self, now: Instant, limit: Duration) -> Verdict {
        let state = self.state.load(Ordering::Relaxed);
        if state == WAITING_ON_CLIENT {
            // The client is the slow one; GitLab's clock starts again once
            // there are bytes for it.
            return Verdict::WaitUntil(now + limit);
        }
        let since = self.start + Duration::from_nanos(state & !SENT) + limit;
        if now < since {
            Verdict::WaitUntil(since)
        } else if state & SENT != 0 {
            Verdict::NotAnswered
        } else {
            Verdict::NotTaken
        }
    }
}

/// Wraps a request body so its progress can be watched; the counting starts now,
/// as though GitLab had just taken bytes (the request head is on its way).
pub(super) fn watched(body: ProxyBody) -> (ProxyBody, Arc<Progress>) {
    let progress = Arc::new(Progress {
        start: Instant::now(),
        state: AtomicU64::new(0),
    });
    let watched = Watched {
        inner: body,
        rest: Bytes::new(),
        progress: progress.clone(),
        ended: false,
    };
    (body::boxed(watched), progress)
}

struct Watched {
    inner: ProxyBody,
    /// What is left of the client's last frame, handed on before asking for more.
    rest: Bytes,
    progress: Arc<Progress>,
    ended: bool,
}

impl Watched {
    /// hyper took a piece: GitLab made room for it.
    fn taken(&self) {
        self.progress.record(self.progress.since_start());
    }

    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.progress.record(SENT | self.progress.since_start());
        }
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.rest.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    this.progress.record(WAITING_ON_CLIENT);
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(trailers) => {
                        this.taken();
                        return Poll::Ready(Some(Ok(trailers)));
                    }
                },
                // An error ends the exchange on its own; the end of the body
                // starts the wait for GitLab's answer.
                end @ Poll::Ready(None | Some(Err(_))) => {
                    this.end();
                    return end;
                }
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(PIECE));
        this.taken();
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The inner body's count no longer holds what is kept here.
        let inner = self.inner.size_hint();
        let held = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

impl Drop for Watched {
    /// hyper drops a body once it is done with it, often without asking for
    /// the end (a `Content-Length` body is whole with its last byte).
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const LIMIT: Duration = Duration::from_secs(10);

    type Frames = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

    /// A watched body whose frames the test sends as the client would.
    fn fed_by_client() -> (Frames, ProxyBody, Arc<Progress>) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let (body, progress) = watched(body::boxed(http_body_util::StreamBody::new(stream)));
        (tx, body, progress)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_gitlab_stops_taking_is_overdue_after_the_limit() {
        let (tx, mut body, progress) = fed_by_client();
        let start = Instant::now();
        // Nothing taken yet: the count runs from the start.
        assert_eq!(progress.verdict(start, LIMIT), Verdict::WaitUntil(start + LIMIT));
        assert_eq!(progress.verdict(start + LIMIT, LIMIT), Verdict::NotTaken);

        // GitLab takes a frame 3 s in: the count restarts there.
        tokio::time::advance(Duration::from_secs(3)).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"part")))).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let taken = start + Duration::from_secs(3);
        assert_eq!(
            progress.verdict(start + LIMIT, LIMIT),
            Verdict::WaitUntil(taken + LIMIT)
        );
        assert_eq!(progress.verdict(taken + LIMIT, LIMIT), Verdict::NotTaken);

        // Waiting on the client is never GitLab's fault, however long.
        assert!(futures_util::poll!(body.frame()).is_pending());
        let late = start + Duration::from_secs(3600);
        assert_eq!(progress.verdict(late, LIMIT), Verdict::WaitUntil(late + LIMIT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sent_body_starts_the_wait_for_the_answer() {
        let start = Instant::now();
        // Ended by asking for the end.
        let (mut body, progress) = watched(body::full("abc"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.is_none());
        let sent = start + Duration::from_secs(2);
        assert_eq!(progress.verdict(start + LIMIT, LIMIT), Verdict::WaitUntil(sent + LIMIT));
        assert_eq!(progress.verdict(sent + LIMIT, LIMIT), Verdict::NotAnswered);
        // Nothing after the end moves it.
        drop(body);
        assert_eq!(progress.verdict(sent + LIMIT, LIMIT), Verdict::NotAnswered);

        // Ended by hyper dropping it after its last frame.
        let (mut body, progress) = watched(body::full("abc"));
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(body);
        let dropped = start + Duration::from_secs(7);
        assert_eq!(progress.verdict(dropped, LIMIT), Verdict::WaitUntil(dropped + LIMIT));
        assert_eq!(progress.verdict(dropped + LIMIT, LIMIT), Verdict::NotAnswered);
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_frame_goes_in_pieces_each_counted_as_taken() {
        let whole = Bytes::from(vec![7u8; 3 * PIECE + 100]);
        let (mut body, progress) = watched(body::full(whole.clone()));
        let mut pieces = Vec::new();
        while !body.is_end_stream() {
            // The length still to come stays exact, as Content-Length framing needs.
            let left = whole.len() - pieces.iter().map(Bytes::len).sum::<usize>();
            assert_eq!(body.size_hint().exact(), Some(left as u64));
            tokio::time::advance(Duration::from_secs(4)).await;
            pieces.push(body.frame().await.unwrap().unwrap().into_data().unwrap());
            // Each piece taken restarts the count.
            let now = Instant::now();
            assert_eq!(progress.verdict(now, LIMIT), Verdict::WaitUntil(now + LIMIT));
        }
        assert_eq!(
            pieces.iter().map(Bytes::len).collect::<Vec<_>>(),
            [PIECE, PIECE, PIECE, 100]
        );
        assert_eq!(pieces.concat(), whole);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_body_is_no_longer_counted_as_waiting() {
        let (tx, mut body, progress) = fed_by_client();
        let start = Instant::now();
        assert!(futures_util::poll!(body.frame()).is_pending());
        tx.send(Err("client went away".into())).await.unwrap();
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(progress.verdict(start + LIMIT, LIMIT), Verdict::NotAnswered);
    }
}
