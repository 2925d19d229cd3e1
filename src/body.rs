//! Body types shared by the routes. Bodies are streamed frame by frame; nothing
//! here ever collects one.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::BoxError;

/// What every route returns and what goes to GitLab: bytes held in memory
/// (the cached documents, the proxy's own answers) inline, a stream boxed. The
/// held answers are the hot ones: they skip an allocation and a virtual call.
pub(crate) struct ProxyBody(Kind);

enum Kind {
    /// `None` once sent, or when there was nothing to send.
    Held(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

pub(crate) fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ProxyBody(Kind::Stream(body.map_err(Into::into).boxed_unsync()))
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    let bytes = bytes.into();
    // Empty data is no frame at all, as `http_body_util::Full` has it.
    ProxyBody(Kind::Held(Some(bytes).filter(|b| !b.is_empty())))
}

pub(crate) fn empty() -> ProxyBody {
    ProxyBody(Kind::Held(None))
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Held(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Stream(stream) => Pin::new(stream).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Held(data) => data.is_none(),
            Kind::Stream(stream) => stream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Held(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Stream(stream) => stream.size_hint(),
        }
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Held(data) => f.debug_tuple("Held").field(&data.as_ref().map(Bytes::len)).finish(),
            Kind::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// A short plain-text answer of the proxy's own (admin, ACME webroot).
pub(crate) fn text_response(status: http::StatusCode, text: &'static str) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?}")]
pub(crate) struct IdleTimeout(pub Duration);

pin_project! {
    /// Fails the body when the peer goes silent for longer than `idle`, so a stuck
    /// GitLab cannot hold a client forever. The silence is counted from when the
    /// body first has to wait after a frame (or from its first wait): time the
    /// client took to ask for more is not the peer's. The timer is only armed,
    /// and the clock only read, once the body has to wait: a body that is always
    /// ready (most small answers) never touches either.
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        sleep: Option<Pin<Box<Sleep>>>,
        // A frame came since the timer was set: set it afresh at the next wait.
        framed: bool,
        idle: Duration,
    }
}

impl<B> IdleTimeoutBody<B> {
    pub(crate) fn new(inner: B, idle: Duration) -> Self {
        IdleTimeoutBody {
            inner,
            sleep: None,
            framed: false,
            idle,
        }
    }
}

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.framed = true;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let sleep = match this.sleep {
            None => this.sleep.insert(Box::pin(tokio::time::sleep(*this.idle))),
            Some(sleep) => {
                if *this.framed {
                    // Moved, no allocation.
                    sleep.as_mut().reset(Instant::now() + *this.idle);
                }
                sleep
            }
        };
        *this.framed = false;
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimeout(*this.idle))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    #[tokio::test]
    async fn held_bytes_are_one_frame_then_the_end() {
        let mut body = full("abc");
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "abc");
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.frame().await.is_none());
        // Nothing held is no frame at all: hyper then sends no chunk.
        for mut none in [empty(), full(Bytes::new())] {
            assert!(none.is_end_stream());
            assert_eq!(none.size_hint().exact(), Some(0));
            assert!(none.frame().await.is_none());
        }
        // A stream is read through.
        let mut stream = boxed(http_body_util::Full::new(Bytes::from_static(b"xy")));
        assert_eq!(stream.size_hint().exact(), Some(2));
        assert_eq!(stream.frame().await.unwrap().unwrap().into_data().unwrap(), "xy");
        assert!(stream.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_body_fails_after_silence_and_resets_on_data() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let mut body = std::pin::pin!(IdleTimeoutBody::new(StreamBody::new(stream), Duration::from_secs(10)));
        let start = Instant::now();
        // The peer: a frame after 9 s of silence, another 9 s later, then nothing.
        let peer = tokio::spawn(async move {
            for data in ["a", "b"] {
                tokio::time::sleep(Duration::from_secs(9)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(data.as_bytes()))))
                    .await
                    .unwrap();
            }
            // Held open: the body waits on silence, not on an end.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });

        // Bounded: a timer pushed back at every wait would never fire (paused
        // clock: the bound is only reached if nothing else is pending).
        let frames = async {
            assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "a");
            // 18 s after the first wait began: within the limit only if "a" reset the clock.
            assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "b");
            body.frame().await.unwrap().unwrap_err()
        };
        let err = tokio::time::timeout(Duration::from_secs(600), frames)
            .await
            .expect("the silence after the last frame ends the body");
        assert!(err.is::<IdleTimeout>(), "{err}");
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(28),
            "10 s of silence after the last frame"
        );
        peer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_body_counts_only_the_time_spent_waiting_on_the_peer() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let mut body = std::pin::pin!(IdleTimeoutBody::new(StreamBody::new(stream), Duration::from_secs(10)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"a")))).await.unwrap();
        // A slow reader: 30 s pass before the body is first asked for a frame.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "a");
        let start = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(600), body.frame())
            .await
            .expect("the silence ends the body")
            .unwrap()
            .unwrap_err();
        assert!(err.is::<IdleTimeout>(), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        drop(tx);
    }
}
