//! Response compression, like omnibus nginx's gzip: which responses are compressed,
//! with which encoding, what happens to their headers, that compressed bodies still
//! stream, and the OIDC documents served precompressed. Bodies are decoded with
//! flate2, brotli and zstd (and curl), never with code of the proxy.

mod support;

use std::future::Future;
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gitlab_oidc_proxy::simulator::{Profile, SimConfig, SimulatedGitLab};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use support::*;

/// No scenario may hang the suite.
async fn bounded(scenario: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), scenario)
        .await
        .expect("scenario ran over 60 s");
}

// ---------------------------------------------------------------- the upstream

/// Text that compresses the way real pages do (not one repeated byte).
fn text(len: usize) -> Vec<u8> {
    let mut out = String::new();
    let mut i = 0u64;
    while out.len() < len {
        out.push_str(&format!(
            "line {i}: merge request !{} by @user{}\n",
            i * 7919 % 10007,
            i % 97
        ));
        i += 1;
    }
    out.truncate(len);
    out.into_bytes()
}

fn json() -> Vec<u8> {
    let items: Vec<String> = (0..60)
        .map(|i| format!(r#"{{"id":{i},"name":"project-{i}","path_with_namespace":"group/project-{i}"}}"#))
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

fn binary(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// What the upstream answers at `path`: status, headers, body.
fn resource(path: &str) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
    let ct = |v: &str| vec![("content-type", v.to_owned())];
    match path {
        "/json" => (
            200,
            vec![
                ("content-type", "application/json; charset=utf-8".into()),
                ("etag", r#""v1""#.into()),
                ("vary", "Origin".into()),
            ],
            json(),
        ),
        "/html" => (200, ct("text/html; charset=utf-8"), text(4096)),
        "/css" => (200, ct("text/css"), text(4096)),
        "/plain" => (200, ct("text/plain"), text(4096)),
        "/js" => (200, ct("application/javascript"), text(4096)),
        "/xml" => (200, ct("application/xml"), text(4096)),
        "/atom" => (200, ct("application/atom+xml"), text(4096)),
        "/vnd-json" => (200, ct("application/vnd.gitlab+json"), json()),
        "/svg" => (200, ct("image/svg+xml"), text(4096)),
        "/not-found" => (404, ct("text/html; charset=utf-8"), text(4096)),
        "/forbidden" => (403, ct("application/json"), json()),
        "/exactly-250" => (200, ct("text/plain"), text(250)),
        "/weak" => (
            200,
            vec![("content-type", "text/plain".into()), ("etag", r#"W/"w1""#.into())],
            text(4096),
        ),
        // Never compressed.
        "/error" => (500, ct("text/html"), text(4096)),
        "/octet" => (200, ct("application/octet-stream"), binary(4096)),
        "/pack" => (200, ct("application/x-git-upload-pack-result"), binary(4096)),
        "/png" => (200, ct("image/png"), binary(4096)),
        "/small" => (200, ct("text/plain"), text(249)),
        "/gzipped" => (
            200,
            vec![
                ("content-type", "text/plain".into()),
                ("content-encoding", "gzip".into()),
            ],
            gzip(&text(4096)),
        ),
        "/partial" => (
            206,
            vec![
                ("content-type", "text/plain".into()),
                ("content-range", "bytes 0-4095/10000".into()),
            ],
            text(4096),
        ),
        "/no-transform" => (
            200,
            vec![
                ("content-type", "text/plain".into()),
                ("cache-control", "private, no-transform".into()),
            ],
            text(4096),
        ),
        "/events" => (200, ct("text/event-stream"), text(4096)),
        "/no-type" => (200, vec![], text(4096)),
        _ => (404, vec![], Vec::new()),
    }
}

const COMPRESSIBLE: [&str; 13] = [
    "/json",
    "/html",
    "/css",
    "/plain",
    "/js",
    "/xml",
    "/atom",
    "/vnd-json",
    "/svg",
    "/not-found",
    "/forbidden",
    "/exactly-250",
    "/weak",
];

const UNTOUCHED: [&str; 11] = [
    "/error",
    "/octet",
    "/pack",
    "/png",
    "/small",
    "/gzipped",
    "/partial",
    "/no-transform",
    "/events",
    "/no-type",
    "/chunked-binary",
];

/// Streams `first`, waits `pause`, then streams `rest` (chunked: no length known).
fn streamed(content_type: &str, first: Vec<u8>, pause: Duration, rest: Vec<u8>) -> Response<TestBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from(first)))).await;
        tokio::time::sleep(pause).await;
        let _ = tx.send(Ok(Frame::data(Bytes::from(rest)))).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Response::builder()
        .header("content-type", content_type)
        .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .unwrap()
}

async fn handler(req: Request<Incoming>) -> Response<TestBody> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        // 400 bytes, then GitLab thinks for 2 s (a job log, a long poll).
        "/stream" => streamed("text/plain", text(400), Duration::from_secs(2), text(3000)),
        "/chunked-text" => streamed("text/plain", text(100), Duration::ZERO, text(3000)),
        "/chunked-binary" => streamed("application/octet-stream", binary(100), Duration::ZERO, binary(3000)),
        _ => {
            let (status, headers, body) = resource(&path);
            let mut resp = Response::builder().status(status);
            for (name, value) in headers {
                resp = resp.header(name, value);
            }
            resp.body(full(body)).unwrap()
        }
    }
}

/// The body the upstream sends at `path` (streamed ones included).
fn upstream_body(path: &str) -> Vec<u8> {
    match path {
        "/stream" => [text(400), text(3000)].concat(),
        "/chunked-text" => [text(100), text(3000)].concat(),
        "/chunked-binary" => [binary(100), binary(3000)].concat(),
        _ => resource(path).2,
    }
}

fn status_of(path: &str) -> u16 {
    match path {
        "/stream" | "/chunked-text" | "/chunked-binary" => 200,
        _ => resource(path).0,
    }
}

// ---------------------------------------------------------------- the client

struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Fetched {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn encoding(&self) -> Option<&str> {
        self.header("content-encoding")
    }

    fn varies_on_accept_encoding(&self) -> bool {
        self.headers
            .get_all("vary")
            .iter()
            .flat_map(|v| v.to_str().unwrap().split(','))
            .any(|v| v.trim().eq_ignore_ascii_case("accept-encoding"))
    }

    /// The body decoded per its Content-Encoding.
    fn decoded(&self) -> Vec<u8> {
        decode(self.encoding(), &self.body)
    }
}

fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        None => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body).read_to_end(&mut out).unwrap();
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096).read_to_end(&mut out).unwrap();
        }
        Some("zstd") => out = zstd::decode_all(body).unwrap(),
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    out
}

async fn fetch_with(url: &str, method: Method, headers: &[(&str, &str)]) -> Fetched {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req.body(empty()).unwrap()))
        .await
        .expect("no answer in 10 s")
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    Fetched {
        status,
        headers,
        body: body_bytes(resp).await,
    }
}

async fn fetch(proxy: &Proxy, path: &str, accept_encoding: Option<&str>) -> Fetched {
    let headers: Vec<(&str, &str)> = accept_encoding.map(|ae| ("accept-encoding", ae)).into_iter().collect();
    fetch_with(&proxy.url(path), Method::GET, &headers).await
}

async fn start(extra: &[&str]) -> (Upstream, Proxy) {
    let up = upstream(Transport::Tcp, handler).await;
    let proxy = Proxy::start(&up.target, extra);
    (up, proxy)
}

// ---------------------------------------------------------------- pass-through

#[tokio::test]
async fn text_and_json_are_gzipped() {
    bounded(async {
        let (_up, proxy) = start(&[]).await;
        for path in COMPRESSIBLE.iter().chain(&["/chunked-text"]) {
            let expected = upstream_body(path);
            let got = fetch(&proxy, path, Some("gzip")).await;
            assert_eq!(got.status, status_of(path), "{path}");
            assert_eq!(got.encoding(), Some("gzip"), "{path}: {:?}", got.headers);
            assert!(!got.headers.contains_key("content-length"), "{path}: {:?}", got.headers);
            assert!(got.varies_on_accept_encoding(), "{path}: {:?}", got.headers);
            assert_eq!(got.decoded(), expected, "{path}: decoded body differs");
            assert!(got.body.len() < expected.len(), "{path}: not smaller");
        }
        // The same over HTTP/2 (h2c).
        let req = Request::get(proxy.url("/json"))
            .header("accept-encoding", "gzip")
            .body(empty())
            .unwrap();
        let resp = h2c_client().request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.headers()["content-encoding"], "gzip");
        assert_eq!(decode(Some("gzip"), &body_bytes(resp).await), json());
    })
    .await
}

#[tokio::test]
async fn br_and_zstd_only_when_ranked_above_gzip() {
    bounded(async {
        let (_up, proxy) = start(&[]).await;
        let cases: [(Option<&str>, Option<&str>); 19] = [
            (Some("gzip;q=1.0, identity; q=0.5, *;q=0"), Some("gzip")),
            (Some("gzip;q=0.999, br;q=1"), Some("br")),
            (Some("identity;q=1, *;q=0"), None),
            (Some("gzip"), Some("gzip")),
            (Some("GZIP"), Some("gzip")),
            (Some("gzip, br, zstd"), Some("gzip")),
            (Some("gzip, deflate, br, zstd"), Some("gzip")),
            (Some("br, gzip"), Some("gzip")),
            (Some("br;q=1, gzip;q=0.5"), Some("br")),
            (Some("zstd;q=1, gzip;q=0.5"), Some("zstd")),
            (Some("gzip;q=0.5, br;q=0.9, zstd;q=1.0"), Some("zstd")),
            (Some("br"), Some("br")),
            (Some("zstd"), Some("zstd")),
            (Some("gzip;q=0, br"), Some("br")),
            (Some("gzip;q=0"), None),
            (Some("deflate"), None),
            (Some("identity"), None),
            (Some(""), None),
            (None, None),
        ];
        for (accept, expected) in cases {
            let got = fetch(&proxy, "/html", accept).await;
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(
                got.encoding(),
                expected,
                "Accept-Encoding {accept:?}: {:?}",
                got.headers
            );
            assert!(
                got.varies_on_accept_encoding(),
                "Accept-Encoding {accept:?}: {:?}",
                got.headers
            );
            assert_eq!(got.decoded(), text(4096), "Accept-Encoding {accept:?}");
            if expected.is_none() {
                // Identity: the upstream's bytes and length as they were.
                assert_eq!(got.body, text(4096), "Accept-Encoding {accept:?}");
                assert_eq!(got.header("content-length"), Some("4096"), "Accept-Encoding {accept:?}");
            }
        }
    })
    .await
}

#[tokio::test]
async fn ineligible_responses_pass_byte_for_byte() {
    bounded(async {
        let (_up, proxy) = start(&[]).await;
        for path in UNTOUCHED {
            let headers = resource(path).1;
            let got = fetch(&proxy, path, Some("gzip, br, zstd")).await;
            assert_eq!(got.status, status_of(path), "{path}");
            assert_eq!(got.body, upstream_body(path), "{path}: body changed");
            let upstream_encoding = headers
                .iter()
                .find(|(n, _)| *n == "content-encoding")
                .map(|(_, v)| v.as_str());
            assert_eq!(got.encoding(), upstream_encoding, "{path}: {:?}", got.headers);
            if !path.starts_with("/chunked") {
                let length = upstream_body(path).len().to_string();
                assert_eq!(
                    got.header("content-length"),
                    Some(length.as_str()),
                    "{path}: {:?}",
                    got.headers
                );
            }
        }
        // HEAD is never compressed.
        let got = fetch_with(&proxy.url("/html"), Method::HEAD, &[("accept-encoding", "gzip")]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.encoding(), None, "{:?}", got.headers);
        assert!(got.body.is_empty());
    })
    .await
}

#[tokio::test]
async fn strong_etags_are_weakened_when_compressed() {
    bounded(async {
        let (_up, proxy) = start(&[]).await;
        for ae in ["gzip", "br", "zstd"] {
            let got = fetch(&proxy, "/json", Some(ae)).await;
            assert_eq!(got.encoding(), Some(ae));
            assert_eq!(got.header("etag"), Some(r#"W/"v1""#), "{ae}");
            let vary: Vec<String> = got
                .headers
                .get_all("vary")
                .iter()
                .flat_map(|v| v.to_str().unwrap().split(',').map(|s| s.trim().to_ascii_lowercase()))
                .collect();
            assert!(
                vary.contains(&"origin".to_owned()) && vary.contains(&"accept-encoding".to_owned()),
                "GitLab's Vary is kept and Accept-Encoding added: {vary:?}"
            );
        }
        let identity = fetch(&proxy, "/json", None).await;
        assert_eq!(identity.header("etag"), Some(r#""v1""#), "uncompressed: ETag untouched");
        let weak = fetch(&proxy, "/weak", Some("gzip")).await;
        assert_eq!(weak.encoding(), Some("gzip"));
        assert_eq!(weak.header("etag"), Some(r#"W/"w1""#));
    })
    .await
}

/// Feeds compressed bytes in as they come; the decoded length so far.
enum Streaming {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Streaming {
    fn new(encoding: &str) -> Streaming {
        match encoding {
            "gzip" => Streaming::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            "br" => Streaming::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            "zstd" => Streaming::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
            other => panic!("{other}"),
        }
    }

    fn feed(&mut self, data: &[u8]) -> usize {
        match self {
            Streaming::Gzip(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref().len()
            }
            Streaming::Br(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref().len()
            }
            Streaming::Zstd(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref().len()
            }
        }
    }
}

#[tokio::test]
async fn compressed_responses_still_stream() {
    bounded(async {
        let (_up, proxy) = start(&[]).await;
        let mut all = tokio::task::JoinSet::new();
        for (ae, encoding) in [
            ("gzip", "gzip"),
            ("br;q=1, gzip;q=0.5", "br"),
            ("zstd;q=1, gzip;q=0.5", "zstd"),
        ] {
            let url = proxy.url("/stream");
            all.spawn(async move {
                let started = Instant::now();
                let req = Request::get(url).header("accept-encoding", ae).body(empty()).unwrap();
                let resp = client().request(req).await.unwrap();
                assert_eq!(resp.headers()["content-encoding"], encoding);
                let mut body = resp.into_body();
                let mut decoder = Streaming::new(encoding);
                let mut compressed = Vec::new();
                let mut first_part_at = None;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        compressed.extend_from_slice(&data);
                        if decoder.feed(&data) >= 400 && first_part_at.is_none() {
                            first_part_at = Some(started.elapsed());
                        }
                    }
                }
                let first = first_part_at.expect("the first part never decoded");
                assert!(
                    first < Duration::from_secs(1),
                    "{encoding}: the first 400 bytes decoded only after {first:?} (GitLab sent them at once)"
                );
                assert_eq!(
                    decode(Some(encoding), &compressed),
                    upstream_body("/stream"),
                    "{encoding}"
                );
            });
        }
        while let Some(done) = all.join_next().await {
            done.unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn compression_off_changes_nothing() {
    bounded(async {
        let (_up, proxy) = start(&["--compression", "off"]).await;
        for path in ["/json", "/html", "/chunked-text"] {
            let got = fetch(&proxy, path, Some("gzip, br, zstd")).await;
            assert_eq!(got.encoding(), None, "{path}: {:?}", got.headers);
            assert_eq!(got.body, upstream_body(path), "{path}");
        }
        let got = fetch(&proxy, "/json", Some("gzip")).await;
        assert_eq!(got.header("etag"), Some(r#""v1""#));
        assert_eq!(got.header("content-length"), Some(json().len().to_string().as_str()));
        // From the environment too.
        let up = upstream(Transport::Tcp, handler).await;
        let proxy = Proxy::start_with_env(&up.target, &[], &[("GITLAB_OIDC_PROXY_COMPRESSION", "off")]);
        assert_eq!(fetch(&proxy, "/json", Some("gzip")).await.encoding(), None);
    })
    .await
}

/// nginx's `gzip_http_version 1.1`: an HTTP/1.0 client gets the body as GitLab
/// sent it, whatever its Accept-Encoding (an HTTP/1.1 one on the same proxy does not).
#[tokio::test]
async fn http_1_0_clients_get_identity() {
    bounded(async {
        let (_up, proxy) = start(&[]).await;
        for ae in ["gzip", "br", "zstd", "gzip, br, zstd"] {
            let head = format!("GET /json HTTP/1.0\r\nHost: gitlab.example.com\r\nAccept-Encoding: {ae}\r\n\r\n");
            let answer = raw_exchange(proxy.addr, head.as_bytes(), Duration::from_secs(5)).await;
            let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
            assert!(
                head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
                "{head}"
            );
            let names = raw_header_names(&answer);
            assert!(!names.contains(&"content-encoding".to_owned()), "{ae}: {head}");
            assert_eq!(body.as_bytes(), json(), "{ae}");
        }
        // The same request over HTTP/1.1 is compressed: the version alone decided.
        let got = fetch(&proxy, "/json", Some("gzip")).await;
        assert_eq!(got.encoding(), Some("gzip"));
    })
    .await
}

/// The README's cap: at most 64 br or zstd streams at once (each holds 1–2 MB);
/// past it, identity. gzip is not capped, and a finished stream frees its place.
const HEAVY_STREAMS: usize = 64;

/// An upstream whose every response is 400 bytes of text at once, and the rest
/// (3000 bytes) once `released` says true.
async fn held_text(released: tokio::sync::watch::Receiver<bool>) -> Upstream {
    upstream(Transport::Tcp, move |_req| {
        let mut released = released.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from(text(400))))).await;
                let _ = released.wait_for(|r| *r).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from(text(3000))))).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
            Response::builder()
                .header("content-type", "text/plain")
                .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
                .unwrap()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_64_br_or_zstd_streams_at_once() {
    bounded(async {
        let (release, released) = tokio::sync::watch::channel(false);
        let up = held_text(released).await;
        let proxy = Proxy::start(&up.target, &[]);
        let client = client();
        let open = |ae: &'static str| {
            let client = client.clone();
            let url = proxy.url("/-/jobs/1/trace");
            async move {
                let req = Request::get(url).header("accept-encoding", ae).body(empty()).unwrap();
                tokio::time::timeout(Duration::from_secs(10), client.request(req))
                    .await
                    .expect("no answer in 10 s")
                    .unwrap()
            }
        };
        let encoding = |resp: &Response<Incoming>| {
            resp.headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned())
        };
        // 64 br and zstd responses held open: each holds a place.
        let mut held = Vec::new();
        for i in 0..HEAVY_STREAMS {
            let ae = if i % 2 == 0 { "br" } else { "zstd" };
            let resp = open(ae).await;
            assert_eq!(
                encoding(&resp).as_deref(),
                Some(ae),
                "response {} of {HEAVY_STREAMS}",
                i + 1
            );
            held.push((ae, resp));
        }
        // The 65th and 66th go out identity, still marked as varying.
        for ae in ["br", "zstd"] {
            let resp = open(ae).await;
            assert_eq!(encoding(&resp), None, "{ae} past {HEAVY_STREAMS} open streams");
            assert!(
                resp.headers()["vary"]
                    .to_str()
                    .unwrap()
                    .to_ascii_lowercase()
                    .contains("accept-encoding"),
                "{:?}",
                resp.headers()
            );
            held.push(("identity", resp));
        }
        // gzip is not capped.
        let resp = open("gzip").await;
        assert_eq!(encoding(&resp).as_deref(), Some("gzip"));
        held.push(("gzip", resp));

        // GitLab finishes: every body is whole, in its encoding.
        release.send(true).unwrap();
        for (ae, resp) in held {
            let body = body_bytes(resp).await;
            let encoding = (ae != "identity").then_some(ae);
            assert_eq!(decode(encoding, &body), [text(400), text(3000)].concat(), "{ae}");
        }
        // The places are free again (given back as each response ends).
        let freed = wait_until(Duration::from_secs(10), || {
            let open = &open;
            async move {
                let resp = open("br").await;
                let br = encoding(&resp).as_deref() == Some("br");
                body_bytes(resp).await;
                br
            }
        })
        .await;
        assert!(freed, "no br stream after the first {HEAVY_STREAMS} ended");
    })
    .await
}

#[test]
fn bad_compression_value_exits_2() {
    let (status, stderr) = Proxy::start_expecting_exit(
        "http://127.0.0.1:1",
        &["--compression", "maybe"],
        Duration::from_secs(10),
    );
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--compression"), "{stderr}");
}

#[tokio::test]
async fn curl_compressed_decodes() {
    bounded(async {
        let (_up, proxy) = start(&[]).await;
        let dir = tempfile::tempdir().unwrap();
        for path in ["/json", "/html"] {
            let out_file = dir.path().join("body");
            let child = tokio::process::Command::new("curl")
                .args(["-sS", "--max-time", "10", "--compressed", "-o"])
                .arg(&out_file)
                .args(["-w", "%{http_code} %header{content-encoding}", &proxy.url(path)])
                .stdin(Stdio::null())
                .output();
            let out = tokio::time::timeout(Duration::from_secs(20), child)
                .await
                .unwrap()
                .unwrap();
            assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
            let written = String::from_utf8_lossy(&out.stdout);
            assert_eq!(written, "200 gzip", "curl --compressed {path}");
            assert_eq!(std::fs::read(&out_file).unwrap(), upstream_body(path), "{path}");
        }
    })
    .await
}

// ---------------------------------------------------------------- OIDC documents

const EXTERNAL: &str = "https://gitlab.example.com";

#[tokio::test]
async fn oidc_documents_are_served_precompressed() {
    bounded(async {
        let config = SimConfig {
            profile: Profile::V16_8,
            external_url: EXTERNAL.to_owned(),
            token_issuer: None,
        };
        let gitlab = tokio::task::spawn_blocking(move || SimulatedGitLab::new(config))
            .await
            .unwrap()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("http://{}", listener.local_addr().unwrap());
        let task = gitlab.serve(listener);
        let proxy = tokio::task::spawn_blocking(move || Proxy::start(&target, &["--external-url", EXTERNAL]))
            .await
            .unwrap();
        let proxy = Arc::new(proxy);
        let ready = proxy.clone();
        assert!(
            wait_until(Duration::from_secs(10), move || {
                let proxy = ready.clone();
                async move { fetch_with(&proxy.admin_url("/readyz"), Method::GET, &[]).await.status == StatusCode::OK }
            })
            .await,
            "the proxy never held the documents:\n{}",
            proxy.logs()
        );

        for path in ["/.well-known/openid-configuration", "/oauth/discovery/keys", "/-/jwks"] {
            let identity = fetch(&proxy, path, None).await;
            assert_eq!(identity.status, StatusCode::OK, "{path}");
            assert_eq!(identity.encoding(), None, "{path}");
            assert!(identity.varies_on_accept_encoding(), "{path}: {:?}", identity.headers);
            serde_json::from_slice::<serde_json::Value>(&identity.body).expect("identity body is JSON");
            let mut etags = vec![identity.header("etag").expect("an ETag").to_owned()];
            for (ae, encoding) in [
                ("gzip", "gzip"),
                ("br;q=1, gzip;q=0.5", "br"),
                ("zstd;q=1, gzip;q=0.5", "zstd"),
            ] {
                let got = fetch(&proxy, path, Some(ae)).await;
                assert_eq!(got.status, StatusCode::OK, "{path} {ae}");
                assert_eq!(got.encoding(), Some(encoding), "{path} {ae}: {:?}", got.headers);
                assert!(got.varies_on_accept_encoding(), "{path} {ae}: {:?}", got.headers);
                assert_eq!(got.decoded(), identity.body, "{path} {encoding}: decoded body differs");
                assert_eq!(
                    got.header("cache-control"),
                    identity.header("cache-control"),
                    "{path} {ae}"
                );
                let etag = got.header("etag").expect("an ETag").to_owned();
                // Revalidation with the encoding's own ETag.
                let revalidated = fetch_with(
                    &proxy.url(path),
                    Method::GET,
                    &[("accept-encoding", ae), ("if-none-match", &etag)],
                )
                .await;
                assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED, "{path} {ae}");
                etags.push(etag);
            }
            let mut distinct = etags.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 4, "{path}: one ETag per encoding, got {etags:?}");
        }
        task.abort();
    })
    .await
}
