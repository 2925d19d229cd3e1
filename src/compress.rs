//! Response compression like the omnibus-GitLab nginx (`gzip on`, `gzip_comp_level 2`,
//! `gzip_min_length 250`, `gzip_vary on`), plus `br` and `zstd` for clients that ask.
//!
//! Bodies are compressed frame by frame and never collected: each input frame goes
//! through a synchronous encoder writing into a `Vec`, and whatever that produced is
//! sent on. When GitLab has nothing more for the moment (the inner body is
//! `Pending`), the encoder is sync-flushed first, so long polling, streamed job logs
//! and Workhorse's `X-Accel-Buffering: no` answers reach the client as they come,
//! not when the encoder's block happens to fill.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::{self, ProxyBody};
use crate::error::BoxError;

/// Smallest `Content-Length` worth compressing (nginx `gzip_min_length 250`).
pub(crate) const MIN_LENGTH: u64 = 250;

/// Streaming levels: nginx's level 2 for gzip; cheap settings for br and zstd. On
/// 1.1 MB of job-log-like text (release build): gzip 2 gives 363 KB in 9 ms, br 4
/// 325 KB in 21 ms, zstd 3 336 KB in 4 ms.
const GZIP_LEVEL: u32 = 2;
const BR_QUALITY: u32 = 4;
/// Largest window for the one-off OIDC copies; each gets the smallest that
/// holds it (see `one_off_lgwin`).
const BR_LGWIN: u32 = 22;
/// Windows for streaming, kept small because every response being compressed
/// holds one: brotli 2^18 and zstd 2^19 bytes instead of 4 and 2 MiB, which cost
/// little ratio on web responses (a slow client on 128 h2 streams otherwise pins
/// hundreds of MiB).
const BR_STREAM_LGWIN: u32 = 18;
const ZSTD_WINDOW_LOG: u32 = 19;
const ZSTD_LEVEL: i32 = 3;
/// Size of brotli's internal output buffer (its output is copied on to our `Vec`).
const BR_BUFFER: usize = 16 * 1024;
/// Brotli at quality >= 4 merges input into metablocks of up to 8 MiB (with lgwin 22)
/// before it writes a byte: megabytes held per response, and a client waiting for
/// them. A flush every 64 KiB of input (its input block at quality 4) bounds both,
/// for about 0.2 % of size. gzip and zstd emit as they go (zstd per 128 KiB block).
const BR_FLUSH_EVERY: usize = 64 * 1024;
/// Upper bound for the output capacity reserved ahead of a write.
const MAX_RESERVE: usize = 64 * 1024;
/// At most this many br and zstd streams at once. Measured RSS per open response
/// above an uncompressed one (100 held open, release build): gzip 0.37 MB, zstd
/// 1.2 MB, br 1.8 MB; slow readers asking for br could otherwise pin gigabytes.
/// Past the cap, responses go out identity, always acceptable and free of memory.
pub(crate) const MAX_HEAVY_STREAMS: usize = 64;
static HEAVY_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// A place among the `MAX_HEAVY_STREAMS`, given back on drop.
struct HeavyPermit;

impl HeavyPermit {
    /// None when all are taken.
    fn take() -> Option<HeavyPermit> {
        HEAVY_STREAMS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_HEAVY_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| HeavyPermit)
    }
}

impl Drop for HeavyPermit {
    fn drop(&mut self) {
        HEAVY_STREAMS.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Encoding {
    Gzip,
    Br,
    Zstd,
}

impl Encoding {
    /// In tie-break order: gzip first, like nginx, then br, then zstd.
    pub(crate) const ALL: [Encoding; 3] = [Encoding::Gzip, Encoding::Br, Encoding::Zstd];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Br => "br",
            Encoding::Zstd => "zstd",
        }
    }

    fn index(self) -> usize {
        match self {
            Encoding::Gzip => 0,
            Encoding::Br => 1,
            Encoding::Zstd => 2,
        }
    }

    fn from_coding(coding: &[u8]) -> Option<Encoding> {
        if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
            Some(Encoding::Gzip)
        } else if coding.eq_ignore_ascii_case(b"br") {
            Some(Encoding::Br)
        } else if coding.eq_ignore_ascii_case(b"zstd") {
            Some(Encoding::Zstd)
        } else {
            None
        }
    }
}

/// Picks the coding for a response from the request's `Accept-Encoding` fields (all
/// of them): the highest q of gzip, br and zstd, ties to gzip, then br, then zstd.
/// `*` stands for the codings not listed, `x-gzip` for gzip. A coding listed more
/// than once gets its highest q. An invalid q counts as 0, as in nginx. Elements that
/// do not parse are skipped. `None`: send identity (we never answer 406).
pub(crate) fn negotiate(request_headers: &HeaderMap) -> Option<Encoding> {
    let accepted = accepted_q(request_headers);
    let mut best: Option<(Encoding, u16)> = None;
    for encoding in Encoding::ALL {
        let q = accepted[encoding.index()];
        // Strictly greater: on a tie the earlier one in ALL stays.
        if q > 0 && best.is_none_or(|(_, best_q)| q > best_q) {
            best = Some((encoding, q));
        }
    }
    best.map(|(encoding, _)| encoding)
}

/// Whether a response in `coding` (a `Content-Encoding` value; empty or `identity`
/// for none) may go to a client that sent `request_headers`: identity always, gzip,
/// br and zstd when the client gives them a q above 0, anything else never.
pub(crate) fn accepts(request_headers: &HeaderMap, coding: &[u8]) -> bool {
    let coding = coding.trim_ascii();
    if coding.is_empty() || coding.eq_ignore_ascii_case(b"identity") {
        return true;
    }
    Encoding::from_coding(coding).is_some_and(|e| accepted_q(request_headers)[e.index()] > 0)
}

/// The q (thousandths) the request's `Accept-Encoding` gives gzip, br and zstd, in
/// [`Encoding::ALL`]'s order, `*` applied; 0 when not acceptable.
fn accepted_q(request_headers: &HeaderMap) -> [u16; 3] {
    let values = request_headers.get_all(header::ACCEPT_ENCODING);
    let mut each = values.iter();
    match (each.next(), each.next()) {
        // Most API clients send none: nothing to parse.
        (None, _) => return [0; 3],
        // Python's http.client and urllib send this one (none of ours).
        (Some(only), None) if only.as_bytes().eq_ignore_ascii_case(b"identity") => return [0; 3],
        _ => {}
    }
    // None = not listed.
    let mut listed: [Option<u16>; 3] = [None; 3];
    let mut star: Option<u16> = None;
    for value in values {
        for element in value.as_bytes().split(|&b| b == b',') {
            let mut parts = element.split(|&b| b == b';');
            let coding = parts.next().unwrap_or_default().trim_ascii();
            if coding.is_empty() {
                continue;
            }
            let mut q = 1000;
            for param in parts {
                let Some(eq) = param.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if param[..eq].trim_ascii().eq_ignore_ascii_case(b"q") {
                    q = parse_q(param[eq + 1..].trim_ascii()).unwrap_or(0);
                }
            }
            let slot = if coding == b"*" {
                &mut star
            } else if let Some(encoding) = Encoding::from_coding(coding) {
                &mut listed[encoding.index()]
            } else {
                continue;
            };
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
    }
    Encoding::ALL.map(|encoding| listed[encoding.index()].or(star).unwrap_or(0))
}

/// RFC 9110 qvalue: `0[.ddd]` or `1[.000]`, in thousandths. Anything else is None.
fn parse_q(value: &[u8]) -> Option<u16> {
    let (&first, rest) = value.split_first()?;
    let whole = match first {
        b'0' => 0,
        b'1' => 1000,
        _ => return None,
    };
    let fraction = match rest.split_first() {
        None => return Some(whole),
        Some((b'.', digits)) => digits,
        Some(_) => return None,
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + fraction.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    if whole == 1000 && thousandths > 0 {
        return None;
    }
    Some(whole + thousandths)
}

/// Whether nginx (as omnibus configures it) would compress this response: status 200,
/// 403 or 404; not HEAD; not already encoded (`identity` aside); no Content-Range;
/// no `Cache-Control: no-transform`; one Content-Type, textual (not
/// `text/event-stream`), JSON, JavaScript, XML or SVG; Content-Length, when present,
/// at least [`MIN_LENGTH`]. Unknown length (chunked) is eligible.
pub(crate) fn eligible(method: &Method, status: StatusCode, response_headers: &HeaderMap) -> bool {
    if *method == Method::HEAD {
        return false;
    }
    if !matches!(status, StatusCode::OK | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) {
        return false;
    }
    let h = response_headers;
    // The checks that turn most answers away come first: small ones (most API
    // answers) and binary ones (packs, images) then cost two lookups, not six.
    // Every Content-Length (normally one) must parse and reach MIN_LENGTH.
    let long_enough = h.get_all(header::CONTENT_LENGTH).iter().all(|v| {
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|len| len >= MIN_LENGTH)
    });
    if !long_enough {
        return false;
    }
    // Exactly one Content-Type, of a compressible type.
    let mut content_types = h.get_all(header::CONTENT_TYPE).iter();
    let (Some(content_type), None) = (content_types.next(), content_types.next()) else {
        return false;
    };
    if !compressible_type(content_type.as_bytes()) {
        return false;
    }
    // Already encoded: only an empty or `identity` Content-Encoding lets us in.
    let already_encoded = h.get_all(header::CONTENT_ENCODING).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"))
    });
    if already_encoded || h.contains_key(header::CONTENT_RANGE) {
        return false;
    }
    !h.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|directive| {
            let name = directive.split(|&b| b == b'=').next().unwrap_or_default();
            name.trim_ascii().eq_ignore_ascii_case(b"no-transform")
        })
    })
}

fn compressible_type(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let Some(slash) = essence.iter().position(|&b| b == b'/') else {
        return false;
    };
    let (top, sub) = (&essence[..slash], &essence[slash + 1..]);
    if sub.is_empty() {
        return false;
    }
    let ends_with =
        |suffix: &[u8]| sub.len() > suffix.len() && sub[sub.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
    if top.eq_ignore_ascii_case(b"text") {
        // Server-sent events are never finished; nginx's gzip_types leaves them out.
        !sub.eq_ignore_ascii_case(b"event-stream")
    } else if top.eq_ignore_ascii_case(b"application") {
        [&b"json"[..], b"javascript", b"x-javascript", b"ecmascript", b"xml"]
            .iter()
            .any(|t| sub.eq_ignore_ascii_case(t))
            || ends_with(b"+json")
            || ends_with(b"+xml")
    } else if top.eq_ignore_ascii_case(b"image") {
        sub.eq_ignore_ascii_case(b"svg+xml")
    } else {
        false
    }
}

/// Applies `choice` to an eligible response: `Vary: Accept-Encoding` (also when
/// `choice` is None, like `gzip_vary on`), and for Some: Content-Encoding, no
/// Content-Length or Accept-Ranges, a weak ETag, and the streaming encoder.
/// A response that is not eligible is returned untouched.
pub(crate) fn apply(method: &Method, choice: Option<Encoding>, resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if !eligible(method, resp.status(), resp.headers()) {
        return resp;
    }
    let (mut parts, inner) = resp.into_parts();
    add_vary(&mut parts.headers);
    let Some(encoding) = choice else {
        return Response::from_parts(parts, inner);
    };
    let permit = match encoding {
        Encoding::Gzip => None,
        Encoding::Br | Encoding::Zstd => match HeavyPermit::take() {
            Some(permit) => Some(permit),
            None => {
                tracing::debug!(
                    encoding = encoding.as_str(),
                    "too many br/zstd streams open; sending identity"
                );
                return Response::from_parts(parts, inner);
            }
        },
    };
    let encoder = match Encoder::new(encoding) {
        Ok(encoder) => encoder,
        // Only an allocation failure inside zstd; identity is still a correct answer.
        Err(_) => return Response::from_parts(parts, inner),
    };
    let h = &mut parts.headers;
    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding.as_str()));
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::ACCEPT_RANGES);
    weaken_etag(h);
    let mut body = CompressBody::with_encoder(inner, encoder);
    body.permit = permit;
    Response::from_parts(parts, body::boxed(body))
}

fn add_vary(h: &mut HeaderMap) {
    let covered = h.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|f| f == b"*" || f.eq_ignore_ascii_case(b"accept-encoding"))
    });
    if !covered {
        // A line of its own, as nginx's gzip_vary does; equivalent to a comma list.
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// The encoded body is not byte-identical to the original, so a strong validator
/// no longer holds; a malformed one is dropped (nginx `ngx_http_weak_etag`).
fn weaken_etag(h: &mut HeaderMap) {
    // Normally one; `remove` drops every value but returns only the first.
    let etags: Vec<HeaderValue> = h.get_all(header::ETAG).iter().cloned().collect();
    h.remove(header::ETAG);
    for etag in etags {
        let bytes = etag.as_bytes();
        if bytes.starts_with(b"W/") {
            h.append(header::ETAG, etag);
        } else if bytes.starts_with(b"\"") {
            let mut weak = Vec::with_capacity(bytes.len() + 2);
            weak.extend_from_slice(b"W/");
            weak.extend_from_slice(bytes);
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                h.append(header::ETAG, weak);
            }
        }
    }
}

/// Whole-buffer compression at the best level, for the small cached OIDC documents.
pub(crate) fn encode_all(encoding: Encoding, data: &[u8]) -> Bytes {
    const VEC_WRITE: &str = "writing to a Vec cannot fail";
    let out = match encoding {
        Encoding::Gzip => {
            let mut enc =
                flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 2), flate2::Compression::best());
            enc.write_all(data).expect(VEC_WRITE);
            enc.finish().expect(VEC_WRITE)
        }
        Encoding::Br => {
            let lgwin = one_off_lgwin(data.len());
            let mut enc = brotli::CompressorWriter::new(Vec::with_capacity(data.len() / 2), 4096, 11, lgwin);
            enc.write_all(data).expect(VEC_WRITE);
            enc.into_inner()
        }
        Encoding::Zstd => zstd::bulk::compress(data, *zstd::compression_level_range().end()).expect(VEC_WRITE),
    };
    Bytes::from(out)
}

/// The smallest brotli window (10..=22 bits) that holds `len` bytes: a wider one
/// compresses no better, and quality 11 sizes its match finder by the window
/// (~37 MB of short-lived heap at 22 bits, for a document of a few KB).
fn one_off_lgwin(len: usize) -> u32 {
    // Brotli's window is 2^lgwin - 16 bytes.
    (10..BR_LGWIN)
        .find(|&bits| (1usize << bits) - 16 >= len)
        .unwrap_or(BR_LGWIN)
}

/// A synchronous encoder writing into a `Vec` that we empty after every step.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(encoding: Encoding) -> io::Result<Encoder> {
        Ok(match encoding {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Encoding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BR_BUFFER,
                BR_QUALITY,
                BR_STREAM_LGWIN,
            ))),
            Encoding::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
                encoder.window_log(ZSTD_WINDOW_LOG)?;
                Encoder::Zstd(encoder)
            }
        })
    }

    /// Input after which to flush even though more is ready; None: never needed.
    fn flush_every(&self) -> Option<usize> {
        match self {
            Encoder::Br(_) => Some(BR_FLUSH_EVERY),
            Encoder::Gzip(_) | Encoder::Zstd(_) => None,
        }
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Br(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let out = self.output();
        if out.capacity() == 0 {
            // After a take: room for about this frame's worth, so a typical frame's
            // output lands without regrowing (and copying) the Vec.
            out.reserve(data.len().clamp(1024, MAX_RESERVE));
        }
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Br(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Sync flush: everything written so far becomes decodable from the output.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Br(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// The output produced so far, without copying. An empty buffer stays, with
    /// whatever capacity it has, for the next write.
    fn take(&mut self) -> Option<Vec<u8>> {
        let out = self.output();
        if out.is_empty() {
            None
        } else {
            Some(std::mem::take(out))
        }
    }

    /// Ends the stream (gzip trailer, last brotli metablock, zstd epilogue) and
    /// returns the output not yet taken.
    fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Br(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

enum State {
    Streaming,
    /// The inner body failed; output flushed before the error goes out first.
    Failed(BoxError),
    Done,
}

pin_project! {
    /// Compresses a body as it streams. Output is emitted as each input frame is
    /// encoded; when the inner body has to wait, the encoder is sync-flushed first so
    /// the client sees all data received so far. Trailers are dropped: hyper cannot
    /// send them on a chunked HTTP/1.1 response the client did not ask for with
    /// `TE: trailers`, and the encoded body is the client's only view of the data.
    pub struct CompressBody {
        #[pin]
        inner: ProxyBody,
        encoder: Option<Encoder>,
        // Input bytes written since the last flush, maybe not in the output yet.
        unflushed: usize,
        state: State,
        permit: Option<HeavyPermit>,
    }
}

impl CompressBody {
    #[cfg(test)]
    pub(crate) fn new(inner: ProxyBody, encoding: Encoding) -> io::Result<CompressBody> {
        Ok(CompressBody::with_encoder(inner, Encoder::new(encoding)?))
    }

    fn with_encoder(inner: ProxyBody, encoder: Encoder) -> CompressBody {
        CompressBody {
            inner,
            encoder: Some(encoder),
            unflushed: 0,
            state: State::Streaming,
            permit: None,
        }
    }
}

fn data_frame(out: Vec<u8>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
}

impl Body for CompressBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match std::mem::replace(this.state, State::Done) {
            State::Streaming => *this.state = State::Streaming,
            State::Failed(err) => return Poll::Ready(Some(Err(err))),
            State::Done => return Poll::Ready(None),
        }
        let Some(encoder) = this.encoder.as_mut() else {
            *this.state = State::Done;
            return Poll::Ready(None);
        };
        loop {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    if *this.unflushed == 0 {
                        return Poll::Pending;
                    }
                    // GitLab paused: make everything so far decodable for the client.
                    *this.unflushed = 0;
                    if let Err(err) = encoder.flush() {
                        return fail(this.state, this.encoder, err.into());
                    }
                    return match encoder.take() {
                        // The caller polls again, and we go back to the inner body.
                        Some(out) => data_frame(out),
                        // Nothing to send; the inner body has our waker.
                        None => Poll::Pending,
                    };
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Not data: trailers, dropped (see the type's docs).
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    *this.unflushed += data.len();
                    let mut result = encoder.write(&data);
                    if result.is_ok() && encoder.flush_every().is_some_and(|limit| *this.unflushed >= limit) {
                        *this.unflushed = 0;
                        result = encoder.flush();
                    }
                    if let Err(err) = result {
                        return fail(this.state, this.encoder, err.into());
                    }
                    if let Some(out) = encoder.take() {
                        return data_frame(out);
                    }
                    // The encoder kept it all; read on (a ready frame is no reason to flush).
                }
                Poll::Ready(Some(Err(err))) => {
                    // Send what the client would have had without us, then the error.
                    let flushed = *this.unflushed > 0 && encoder.flush().is_ok();
                    let out = if flushed { encoder.take() } else { None };
                    *this.encoder = None;
                    let Some(out) = out else {
                        *this.state = State::Done;
                        return Poll::Ready(Some(Err(err)));
                    };
                    *this.state = State::Failed(err);
                    return data_frame(out);
                }
                Poll::Ready(None) => {
                    *this.state = State::Done;
                    let encoder = this.encoder.take().expect("present while streaming");
                    return match encoder.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => data_frame(out),
                        Err(err) => Poll::Ready(Some(Err(err.into()))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn fail(
    state: &mut State,
    encoder: &mut Option<Encoder>,
    err: BoxError,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    *state = State::Done;
    *encoder = None;
    Poll::Ready(Some(Err(err)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use http_body_util::{BodyExt, StreamBody};
    use std::io::Read;

    use Encoding::{Br, Gzip, Zstd};

    /// assert_eq for big byte strings: reports lengths and the first difference, not the bytes.
    #[track_caller]
    fn assert_same(got: impl AsRef<[u8]>, want: impl AsRef<[u8]>, context: impl std::fmt::Debug) {
        let (got, want) = (got.as_ref(), want.as_ref());
        if got != want {
            let at = got
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            panic!(
                "{context:?}: got {} bytes, want {}, first difference at {at}",
                got.len(),
                want.len()
            );
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    fn accept(values: &[&str]) -> Option<Encoding> {
        let pairs: Vec<_> = values.iter().map(|v| ("accept-encoding", *v)).collect();
        negotiate(&headers(&pairs))
    }

    fn frames_body(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> ProxyBody {
        body::boxed(StreamBody::new(futures_util::stream::iter(frames)))
    }

    fn data_body(chunks: &[&[u8]]) -> ProxyBody {
        frames_body(
            chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect(),
        )
    }

    /// A body fed by hand: frames arrive when the test sends them.
    fn channel_body() -> (tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>, ProxyBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        (tx, body::boxed(StreamBody::new(stream)))
    }

    fn decode(encoding: Encoding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match encoding {
            Gzip => {
                flate2::read::GzDecoder::new(data).read_to_end(&mut out).unwrap();
            }
            Br => {
                brotli::Decompressor::new(data, 4096).read_to_end(&mut out).unwrap();
            }
            Zstd => out = zstd::decode_all(data).unwrap(),
        }
        out
    }

    /// A streaming decoder: what the client can read from the bytes received so far.
    enum StreamDecoder {
        Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
        Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
        Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
    }

    impl StreamDecoder {
        fn new(encoding: Encoding) -> StreamDecoder {
            match encoding {
                Gzip => StreamDecoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
                // brotli-decompressor 6.3's writer stops at one buffer's worth of output
                // when the input ends at a flush point; a buffer bigger than the test
                // data sidesteps that (its reader, and the C decoder, are fine).
                Br => StreamDecoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 1 << 20))),
                Zstd => StreamDecoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
            }
        }

        fn feed(&mut self, data: &[u8]) -> Vec<u8> {
            match self {
                StreamDecoder::Gzip(d) => {
                    d.write_all(data).unwrap();
                    d.flush().unwrap();
                    d.get_ref().clone()
                }
                StreamDecoder::Br(d) => {
                    d.write_all(data).unwrap();
                    d.flush().unwrap();
                    d.get_ref().clone()
                }
                StreamDecoder::Zstd(d) => {
                    d.write_all(data).unwrap();
                    d.flush().unwrap();
                    d.get_ref().clone()
                }
            }
        }
    }

    /// Polls once per frame without waiting: the frames available right now.
    fn ready_frames(body: &mut ProxyBody) -> (Vec<Bytes>, bool) {
        let mut frames = Vec::new();
        loop {
            match body.frame().now_or_never() {
                None => return (frames, false),
                Some(None) => return (frames, true),
                Some(Some(frame)) => {
                    let data = frame.unwrap().into_data().unwrap();
                    assert!(!data.is_empty(), "empty data frame");
                    frames.push(data);
                }
            }
        }
    }

    async fn all_frames(mut body: ProxyBody) -> Vec<Bytes> {
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().expect("only data frames");
            assert!(!data.is_empty(), "empty data frame");
            frames.push(data);
        }
        assert!(body.is_end_stream());
        frames
    }

    fn compressed(encoding: Encoding, inner: ProxyBody) -> ProxyBody {
        body::boxed(CompressBody::new(inner, encoding).unwrap())
    }

    /// Compressible, log-like text, deterministic.
    fn log_text(len: usize) -> Vec<u8> {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut out = Vec::with_capacity(len + 100);
        let mut line = 0u32;
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            line += 1;
            let step = ["fetch", "build", "test", "upload", "cache"][(seed % 5) as usize];
            let text = format!(
                "2024-05-01T12:{:02}:{:02}Z job {} step {step}: {:016x}\n",
                line / 60 % 60,
                line % 60,
                seed >> 48,
                seed
            );
            out.extend_from_slice(text.as_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn negotiate_table() {
        let cases: &[(&[&str], Option<Encoding>)] = &[
            (&[], None),
            (&[""], None),
            (&["identity"], None),
            (&["IDENTITY"], None),
            (&["identity", "gzip"], Some(Gzip)),
            (&["identity;q=0"], None),
            (&["deflate"], None),
            (&["gzip"], Some(Gzip)),
            (&["br"], Some(Br)),
            (&["zstd"], Some(Zstd)),
            (&["x-gzip"], Some(Gzip)),
            (&["GZIP"], Some(Gzip)),
            (&["Br"], Some(Br)),
            (&["ZSTD;Q=1"], Some(Zstd)),
            // Ties: gzip, then br, then zstd, whatever the listed order.
            (&["gzip, deflate, br, zstd"], Some(Gzip)),
            (&["zstd, br, gzip"], Some(Gzip)),
            (&["zstd, br"], Some(Br)),
            (&["zstd;q=0.5, br;q=0.5"], Some(Br)),
            // q-values decide.
            (&["gzip;q=0.9, br"], Some(Br)),
            (&["gzip;q=0.5, br;q=0.4, zstd;q=0.6"], Some(Zstd)),
            (&["gzip;q=0.001"], Some(Gzip)),
            (&["gzip;q=0.999, br;q=1.000"], Some(Br)),
            (&["gzip;q=1., br"], Some(Gzip)),
            (&["gzip;q=0"], None),
            (&["gzip;q=0.000, br"], Some(Br)),
            (&["gzip;q=0, x-gzip;q=0"], None),
            // `*` counts for codings not listed.
            (&["*"], Some(Gzip)),
            (&["*;q=0"], None),
            (&["gzip;q=0, *"], Some(Br)),
            (&["gzip;q=0, br;q=0, *"], Some(Zstd)),
            (&["*;q=0.5, zstd"], Some(Zstd)),
            (&["*;q=0, br"], Some(Br)),
            (&["identity;q=0, *"], Some(Gzip)),
            (&["identity;q=0, gzip;q=0"], None),
            // Whitespace, tabs, empty elements, other parameters.
            (&["  gzip ; q = 0.5 ,  br ; q=0.6 "], Some(Br)),
            (&["\tbr\t;\tq=1"], Some(Br)),
            (&[",,gzip,,"], Some(Gzip)),
            (&["br;level=3;q=0.3, gzip;q=0.2"], Some(Br)),
            (&["br;q"], Some(Br)),
            // Bad q counts as 0 (nginx), and garbage is skipped.
            (&["gzip;q=2"], None),
            (&["gzip;q=1.5, br;q=0.1"], Some(Br)),
            (&["gzip;q=0.1234, br;q=0.1"], Some(Br)),
            (&["gzip;q=abc, zstd"], Some(Zstd)),
            (&["gzip;q=-1"], None),
            (&["gzip;q=", "br;q=0.2"], Some(Br)),
            (&["gzip;q=.5"], None),
            (&["gzip;q=\"0.5\""], None),
            (&["gzipx, brotli, zst, gzip2"], None),
            (&[";q=1, =, ;;;, gzip"], Some(Gzip)),
            // Every header line counts.
            (&["deflate", "br"], Some(Br)),
            (&["br;q=0.5", "gzip;q=0.4", "zstd;q=0.6"], Some(Zstd)),
            (&["gzip;q=0", "gzip"], Some(Gzip)),
            (&["", "zstd"], Some(Zstd)),
        ];
        for (values, want) in cases {
            assert_eq!(accept(values), *want, "Accept-Encoding: {values:?}");
        }
    }

    #[test]
    fn negotiate_tolerates_non_utf8() {
        let mut h = HeaderMap::new();
        h.append(
            header::ACCEPT_ENCODING,
            HeaderValue::from_bytes(b"\xff\xfe, br;q=0.\xff").unwrap(),
        );
        h.append(
            header::ACCEPT_ENCODING,
            HeaderValue::from_bytes(b"zstd;q=0.1, \xe9gzip").unwrap(),
        );
        assert_eq!(negotiate(&h), Some(Zstd));
    }

    #[test]
    fn parse_q_values() {
        for (q, want) in [
            ("0", Some(0)),
            ("1", Some(1000)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.123", Some(123)),
            ("1.000", Some(1000)),
            ("1.", Some(1000)),
            ("0.", Some(0)),
            ("1.001", None),
            ("0.1234", None),
            ("2", None),
            ("", None),
            ("0x", None),
            ("0.a", None),
        ] {
            assert_eq!(parse_q(q.as_bytes()), want, "q={q}");
        }
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    /// Whether a 200 response to GET with these headers is eligible.
    fn eligible_get(pairs: &[(&str, &str)]) -> bool {
        eligible(&Method::GET, StatusCode::OK, &headers(pairs))
    }

    #[test]
    fn eligible_by_status_and_method() {
        let json = headers(&[JSON]);
        assert!(eligible(&Method::GET, StatusCode::OK, &json));
        assert!(eligible(&Method::GET, StatusCode::FORBIDDEN, &json));
        assert!(eligible(&Method::GET, StatusCode::NOT_FOUND, &json));
        for status in [201, 204, 206, 301, 302, 304, 400, 401, 500, 502] {
            assert!(
                !eligible(&Method::GET, StatusCode::from_u16(status).unwrap(), &json),
                "{status}"
            );
        }
        assert!(!eligible(&Method::HEAD, StatusCode::OK, &json));
        assert!(eligible(&Method::POST, StatusCode::OK, &json));
    }

    #[test]
    fn eligible_by_content_encoding_and_range() {
        assert!(eligible_get(&[JSON, ("content-encoding", "identity")]));
        assert!(eligible_get(&[JSON, ("content-encoding", "IDENTITY")]));
        assert!(eligible_get(&[JSON, ("content-encoding", "")]));
        assert!(!eligible_get(&[JSON, ("content-encoding", "gzip")]));
        assert!(!eligible_get(&[JSON, ("content-encoding", "br")]));
        assert!(!eligible_get(&[JSON, ("content-encoding", "identity, gzip")]));
        assert!(!eligible_get(&[
            JSON,
            ("content-encoding", "identity"),
            ("content-encoding", "zstd")
        ]));
        // Ranges.
        assert!(!eligible_get(&[JSON, ("content-range", "bytes 0-99/1000")]));
        assert!(!eligible(&Method::GET, StatusCode::PARTIAL_CONTENT, &headers(&[JSON])));
    }

    #[test]
    fn eligible_by_cache_control() {
        assert!(eligible_get(&[JSON, ("cache-control", "public, max-age=60")]));
        assert!(!eligible_get(&[JSON, ("cache-control", "no-transform")]));
        assert!(!eligible_get(&[
            JSON,
            ("cache-control", "public, No-Transform, max-age=60")
        ]));
        assert!(!eligible_get(&[
            JSON,
            ("cache-control", "private"),
            ("cache-control", " no-transform ")
        ]));
        assert!(eligible_get(&[JSON, ("cache-control", "no-transformer, x=\"no\"")]));
    }

    #[test]
    fn eligible_by_content_type() {
        for ct in [
            "text/html",
            "text/html; charset=utf-8",
            "TEXT/PLAIN",
            "text/css",
            "text/csv",
            "text/javascript",
            "text/xml",
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            "application/vnd.api+json",
            "application/manifest+json",
            "application/javascript",
            "application/x-javascript",
            "application/ecmascript",
            "application/xml",
            "application/atom+xml",
            "application/rss+xml",
            "image/svg+xml",
            "IMAGE/SVG+XML",
        ] {
            assert!(eligible_get(&[("content-type", ct)]), "{ct}");
        }
        for ct in [
            "text/event-stream",
            "Text/Event-Stream; charset=utf-8",
            "application/octet-stream",
            "application/zip",
            "application/gzip",
            "application/pdf",
            "application/+json",
            "application/jsonx",
            "application/x-ndjson",
            "image/png",
            "image/svg",
            "video/mp4",
            "multipart/form-data",
            "text",
            "text/",
            "json",
            "",
        ] {
            assert!(!eligible_get(&[("content-type", ct)]), "{ct}");
        }
        assert!(!eligible_get(&[]), "no content type");
        assert!(
            !eligible_get(&[JSON, ("content-type", "text/html")]),
            "two content types"
        );
    }

    #[test]
    fn eligible_by_content_length() {
        assert!(eligible_get(&[JSON, ("content-length", "250")]));
        assert!(eligible_get(&[JSON, ("content-length", "1000000")]));
        assert!(!eligible_get(&[JSON, ("content-length", "249")]));
        assert!(!eligible_get(&[JSON, ("content-length", "0")]));
        assert!(!eligible_get(&[JSON, ("content-length", "lots")]));
        assert!(eligible_get(&[JSON]), "unknown length");
    }

    fn response(status: u16, pairs: &[(&str, &str)], body: ProxyBody) -> Response<ProxyBody> {
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        *resp.headers_mut() = headers(pairs);
        resp
    }

    fn values(resp: &Response<ProxyBody>, name: header::HeaderName) -> Vec<String> {
        resp.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// What every apply test starts from: a compressible, ranged, tagged response.
    const BASE: [(&str, &str); 5] = [
        ("content-type", "text/plain"),
        ("content-length", "1000"),
        ("accept-ranges", "bytes"),
        ("etag", "\"abc\""),
        ("vary", "Origin"),
    ];

    #[tokio::test]
    async fn apply_compresses_and_rewrites_headers() {
        let text = log_text(1000);
        let resp = apply(&Method::GET, Some(Gzip), response(200, &BASE, body::full(text.clone())));
        assert_eq!(values(&resp, header::CONTENT_ENCODING), ["gzip"]);
        assert!(resp.headers().get(header::CONTENT_LENGTH).is_none());
        assert!(resp.headers().get(header::ACCEPT_RANGES).is_none());
        assert_eq!(values(&resp, header::ETAG), ["W/\"abc\""]);
        assert_eq!(values(&resp, header::VARY), ["Origin", "Accept-Encoding"]);
        assert_eq!(resp.body().size_hint().exact(), None);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_same(decode(Gzip, &bytes), &text, "apply");
    }

    #[test]
    fn apply_leaves_a_vary_that_covers_it_alone() {
        // Vary already covering it, in any case, or `*`.
        for vary in [
            &["Accept-Encoding"][..],
            &["origin, accept-encoding"],
            &["Origin", "ACCEPT-ENCODING"],
            &["*"],
        ] {
            let mut pairs = vec![("content-type", "text/plain")];
            pairs.extend(vary.iter().map(|v| ("vary", *v)));
            let resp = apply(&Method::GET, Some(Br), response(200, &pairs, body::empty()));
            assert_eq!(values(&resp, header::VARY), *vary);
        }
    }

    #[test]
    fn apply_weakens_etags_and_replaces_identity() {
        // Weak ETag stays, malformed one goes, Content-Encoding identity replaced.
        let pairs = [
            ("content-type", "text/plain"),
            ("etag", "W/\"x\""),
            ("content-encoding", "identity"),
        ];
        let resp = apply(&Method::GET, Some(Zstd), response(200, &pairs, body::empty()));
        assert_eq!(values(&resp, header::ETAG), ["W/\"x\""]);
        assert_eq!(values(&resp, header::CONTENT_ENCODING), ["zstd"]);
        let pairs = [
            ("content-type", "text/html"),
            ("etag", "\"a\""),
            ("etag", "W/\"b\""),
            ("etag", "bad"),
        ];
        let resp = apply(&Method::GET, Some(Gzip), response(200, &pairs, body::empty()));
        assert_eq!(values(&resp, header::ETAG), ["W/\"a\"", "W/\"b\""]);
        let resp = apply(
            &Method::GET,
            Some(Zstd),
            response(404, &[("content-type", "text/html"), ("etag", "abc")], body::empty()),
        );
        assert!(resp.headers().get(header::ETAG).is_none());
    }

    #[tokio::test]
    async fn apply_without_a_choice_only_adds_vary() {
        // No choice: only Vary, the body and everything else untouched.
        let text = log_text(1000);
        let resp = apply(&Method::GET, None, response(200, &BASE, body::full(text.clone())));
        assert_eq!(values(&resp, header::VARY), ["Origin", "Accept-Encoding"]);
        assert!(resp.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(values(&resp, header::CONTENT_LENGTH), ["1000"]);
        assert_eq!(values(&resp, header::ETAG), ["\"abc\""]);
        assert_eq!(values(&resp, header::ACCEPT_RANGES), ["bytes"]);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), text);
        let resp = apply(
            &Method::GET,
            None,
            response(200, &[("content-type", "text/plain")], body::empty()),
        );
        assert_eq!(values(&resp, header::VARY), ["Accept-Encoding"]);
    }

    #[tokio::test]
    async fn apply_leaves_ineligible_responses_untouched() {
        // Whatever the choice.
        for (method, status, pairs) in [
            (Method::HEAD, 200, &BASE[..]),
            (Method::GET, 500, &BASE[..]),
            (
                Method::GET,
                200,
                &[("content-type", "image/png"), ("etag", "\"abc\"")][..],
            ),
            (
                Method::GET,
                200,
                &[("content-type", "text/plain"), ("content-length", "10")][..],
            ),
            (
                Method::GET,
                200,
                &[("content-type", "text/plain"), ("content-encoding", "br")][..],
            ),
        ] {
            for choice in [None, Some(Gzip)] {
                let resp = apply(&method, choice, response(status, pairs, body::full("0123456789")));
                assert_eq!(resp.headers(), &headers(pairs), "{method} {status} {pairs:?}");
                assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "0123456789");
            }
        }
    }

    #[tokio::test]
    async fn round_trip_multi_frame() {
        let text = log_text(200_000);
        let chunks: Vec<&[u8]> = text.chunks(7_777).collect();
        for encoding in Encoding::ALL {
            let frames = all_frames(compressed(encoding, data_body(&chunks))).await;
            let joined: Vec<u8> = frames.concat();
            assert!(joined.len() < text.len() / 2, "{encoding:?}: {} bytes", joined.len());
            assert_same(decode(encoding, &joined), &text, encoding);
        }
    }

    #[tokio::test]
    async fn empty_and_tiny_bodies() {
        for encoding in Encoding::ALL {
            for chunks in [&[][..], &[&b""[..]], &[b"x"], &[b"", b"a", b"", b"b"]] {
                let frames = all_frames(compressed(encoding, data_body(chunks))).await;
                assert_eq!(
                    decode(encoding, &frames.concat()),
                    chunks.concat(),
                    "{encoding:?} {chunks:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn trailers_dropped() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        for encoding in Encoding::ALL {
            let inner = frames_body(vec![
                Ok(Frame::data(Bytes::from_static(b"hello "))),
                Ok(Frame::data(Bytes::from_static(b"world"))),
                Ok(Frame::trailers(trailers.clone())),
            ]);
            let frames = all_frames(compressed(encoding, inner)).await;
            assert_same(decode(encoding, &frames.concat()), b"hello world", encoding);
        }
    }

    /// The point of the sync flush: what GitLab sent before it paused is decodable
    /// by the client before GitLab sends more.
    #[tokio::test]
    async fn flushes_when_inner_body_waits() {
        let first = log_text(3_000);
        let second = b"second frame".to_vec();
        for encoding in Encoding::ALL {
            let (tx, inner) = channel_body();
            let mut body = compressed(encoding, inner);
            let mut decoder = StreamDecoder::new(encoding);

            let (frames, ended) = ready_frames(&mut body);
            assert!(frames.is_empty() && !ended, "{encoding:?}: nothing to send yet");

            tx.send(Ok(Frame::data(Bytes::from(first.clone())))).await.unwrap();
            let (frames, ended) = ready_frames(&mut body);
            assert!(!ended);
            assert_same(
                decoder.feed(&frames.concat()),
                &first,
                (encoding, "first frame not flushed"),
            );
            // Flushed once; waiting again does not emit (empty) flushes.
            assert!(ready_frames(&mut body).0.is_empty());

            tx.send(Ok(Frame::data(Bytes::from(second.clone())))).await.unwrap();
            let (frames, _) = ready_frames(&mut body);
            assert_same(
                decoder.feed(&frames.concat()),
                [&first[..], &second[..]].concat(),
                encoding,
            );

            drop(tx);
            let (frames, ended) = ready_frames(&mut body);
            assert!(ended && body.is_end_stream(), "{encoding:?}");
            assert!(!frames.is_empty(), "{encoding:?}: the stream's end");
            assert_same(
                decoder.feed(&frames.concat()),
                [&first[..], &second[..]].concat(),
                encoding,
            );
        }
    }

    /// Frames that are ready at once are not flushed one by one: a gzip sync flush
    /// leaves an empty stored block (00 00 ff ff) in the stream.
    #[tokio::test]
    async fn no_flush_between_ready_frames() {
        let text = log_text(20_000);
        let chunks: Vec<&[u8]> = text.chunks(100).collect();
        let frames = all_frames(compressed(Gzip, data_body(&chunks))).await;
        let joined = frames.concat();
        assert!(
            !joined.windows(4).any(|w| w == [0, 0, 0xff, 0xff]),
            "sync flush in a ready stream"
        );
        assert_same(decode(Gzip, &joined), &text, "gzip");
    }

    #[tokio::test]
    async fn inner_error_propagates() {
        for encoding in Encoding::ALL {
            let inner = frames_body(vec![
                Ok(Frame::data(Bytes::from(log_text(5_000)))),
                Err("upstream reset".into()),
                Ok(Frame::data(Bytes::from_static(b"never"))),
            ]);
            let mut body = compressed(encoding, inner);
            let mut data = Vec::new();
            let err = loop {
                match body.frame().await.expect("the error comes before the end") {
                    Ok(frame) => data.extend_from_slice(&frame.into_data().unwrap()),
                    Err(err) => break err,
                }
            };
            assert_eq!(err.to_string(), "upstream reset");
            assert!(body.is_end_stream());
            assert!(body.frame().await.is_none(), "{encoding:?}: ends after the error");
            // What came before the error was flushed out, as it would have been unencoded.
            assert_same(StreamDecoder::new(encoding).feed(&data), log_text(5_000), encoding);
        }
    }

    #[tokio::test]
    async fn large_body_streams_in_bounded_frames() {
        const FRAME: usize = 16 * 1024;
        let text = log_text(1_100_000);
        let chunks: Vec<&[u8]> = text.chunks(FRAME).collect();
        for encoding in Encoding::ALL {
            let mut body = compressed(encoding, data_body(&chunks));
            let (mut total, mut largest, mut count) = (Vec::new(), 0, 0);
            while let Some(frame) = body.frame().await {
                let data = frame.unwrap().into_data().unwrap();
                assert!(!data.is_empty());
                largest = largest.max(data.len());
                count += 1;
                total.extend_from_slice(&data);
            }
            assert!(largest <= 2 * FRAME, "{encoding:?}: a {largest} byte frame");
            assert!(count > 8, "{encoding:?}: streamed, not collected ({count} frames)");
            assert_same(decode(encoding, &total), &text, encoding);
        }
    }

    /// Incompressible input (which the eligible types rarely are): output still comes
    /// as it goes, at most one encoder block at a time (zstd's is 128 KiB of input,
    /// brotli's is cut at BR_FLUSH_EVERY), never the whole body at the end.
    #[tokio::test]
    async fn incompressible_body_streams_in_blocks() {
        const FRAME: usize = 16 * 1024;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = std::iter::repeat_with(|| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .take(1_100_000)
        .collect();
        let chunks: Vec<&[u8]> = noise.chunks(FRAME).collect();
        for encoding in Encoding::ALL {
            let frames = all_frames(compressed(encoding, data_body(&chunks))).await;
            let largest = frames.iter().map(Bytes::len).max().unwrap();
            assert!(largest <= 128 * 1024 + 1024, "{encoding:?}: a {largest} byte frame");
            assert!(frames.len() > 8, "{encoding:?}: {} frames", frames.len());
            assert_same(decode(encoding, &frames.concat()), &noise, encoding);
        }
    }

    #[test]
    fn br_and_zstd_streams_are_capped_and_slots_come_back() {
        let open = |encoding| {
            let resp = response(200, &[("content-type", "text/plain")], data_body(&[b"hello"]));
            apply(&Method::GET, Some(encoding), resp)
        };
        let encoded = |r: &Response<ProxyBody>| r.headers().contains_key(header::CONTENT_ENCODING);
        // Other tests may hold a few slots meanwhile: fill until refused.
        let mut held = Vec::new();
        for i in 0..2 * MAX_HEAVY_STREAMS {
            let resp = open(if i % 2 == 0 { Br } else { Zstd });
            if !encoded(&resp) {
                break;
            }
            held.push(resp);
        }
        assert!(held.len() <= MAX_HEAVY_STREAMS, "{} streams open", held.len());
        let refused = open(Zstd);
        assert!(!encoded(&refused), "a stream past the cap was compressed");
        assert!(refused.headers().contains_key(header::VARY));
        assert!(encoded(&open(Gzip)), "gzip is not capped");
        drop(held);
        assert!(encoded(&open(Br)), "slots were not given back");
    }

    #[test]
    fn encode_all_round_trips() {
        let doc = br#"{"issuer":"https://gitlab.example.com","jwks_uri":"https://gitlab.example.com/-/jwks","response_types_supported":["code"]}"#.repeat(8);
        for encoding in Encoding::ALL {
            let packed = encode_all(encoding, &doc);
            assert!(packed.len() < doc.len() / 3, "{encoding:?}: {}", packed.len());
            assert_same(decode(encoding, &packed), &doc, encoding);
            assert_same(decode(encoding, &encode_all(encoding, b"")), b"", encoding);
            // Deterministic: every replica derives the same bytes.
            assert_eq!(encode_all(encoding, &doc), packed);
        }
    }

    #[test]
    fn one_off_window_fits_the_document() {
        assert_eq!(one_off_lgwin(0), 10);
        assert_eq!(one_off_lgwin(1008), 10);
        assert_eq!(one_off_lgwin(1009), 11);
        assert_eq!(one_off_lgwin(5_000), 13);
        assert_eq!(one_off_lgwin(64 << 20), BR_LGWIN);
        // At each edge the whole document is one window: it round-trips.
        for len in [1008, 1009, 4080, 4081] {
            let doc: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            assert_same(decode(Br, &encode_all(Br, &doc)), &doc, Br);
        }
    }

    #[test]
    fn encoding_names() {
        assert_eq!(Encoding::ALL.map(Encoding::as_str), ["gzip", "br", "zstd"]);
    }
}
