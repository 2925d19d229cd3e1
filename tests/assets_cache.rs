//! The in-memory `/assets/` cache (omnibus nginx's `proxy_cache gitlab`), through
//! the real binary in front of an upstream that counts the requests it gets.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use support::*;
use tokio::sync::Notify;

/// No scenario may hang the suite.
async fn bounded(scenario: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), scenario)
        .await
        .expect("scenario ran over 60 s");
}

const FOREVER: &str = "public, max-age=31536000";
const ETAG: &str = "\"5f3c2a\"";
const LAST_MODIFIED: &str = "Tue, 01 Dec 2026 10:00:00 GMT";

/// A JavaScript-like body of `len` bytes.
fn script(len: usize) -> Vec<u8> {
    let line = b"function f(a,b){return a+b;} // asset line\n";
    line.iter().copied().cycle().take(len).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}

/// The simulated GitLab: each path says how it answers. It counts requests per
/// path; `release` lets the held bodies (`/assets/held-*`) go on.
#[derive(Clone, Default)]
struct GitLab {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    release: Arc<Notify>,
}

impl GitLab {
    fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    async fn answer(self, req: Request<Incoming>) -> Response<TestBody> {
        let path = req.uri().path().to_owned();
        let nth = {
            let mut counts = self.counts.lock().unwrap();
            let n = counts.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        let js = |cache_control: &str, body: Vec<u8>| {
            Response::builder()
                .header("content-type", "application/javascript")
                .header("cache-control", cache_control)
                .header("etag", ETAG)
                .header("last-modified", LAST_MODIFIED)
                .header("x-request-id", format!("req-{nth}"))
                .body(full(body))
                .unwrap()
        };
        match path.as_str() {
            "/assets/private.js" => js("private, max-age=60", script(1000)),
            "/assets/no-store.js" => js("public, max-age=60, no-store", script(1000)),
            "/assets/short.js" => js("public, max-age=1", script(1000)),
            "/assets/cookie.js" => {
                let mut resp = js(FOREVER, script(1000));
                resp.headers_mut()
                    .insert("set-cookie", "_gitlab_session=x".parse().unwrap());
                resp
            }
            "/assets/big.js" => js(FOREVER, script(2 << 20)),
            "/assets/gz.js" => variant(&req),
            "/assets/slow.js" => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                js(FOREVER, script(50_000))
            }
            "/assets/held-stream.js" => held(js(FOREVER, Vec::new()), self.release.clone(), None),
            "/assets/held-cut.js" if nth == 1 => held(js(FOREVER, Vec::new()), self.release.clone(), Some(100_000)),
            "/assets/held-cut.js" => js(FOREVER, script(100_000)),
            _ => js(FOREVER, script(300_000)),
        }
    }
}

/// GitLab's precompressed asset: gzip for clients that accept it, else identity.
fn variant(req: &Request<Incoming>) -> Response<TestBody> {
    let gzipped = req
        .headers()
        .get("accept-encoding")
        .is_some_and(|v| v.to_str().unwrap_or("").contains("gzip"));
    let plain = script(20_000);
    let builder = Response::builder()
        .header("content-type", "application/javascript")
        .header("cache-control", FOREVER)
        .header("vary", "Accept-Encoding");
    if gzipped {
        builder
            .header("content-encoding", "gzip")
            .body(full(gzip(&plain)))
            .unwrap()
    } else {
        builder.body(full(plain)).unwrap()
    }
}

/// Sends the first 50,000 bytes of the body, waits for `release`, then the rest
/// (50,000 bytes). With `length`, the response declares it.
fn held(template: Response<TestBody>, release: Arc<Notify>, length: Option<usize>) -> Response<TestBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
    let body = script(100_000);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::copy_from_slice(&body[..50_000])))).await;
        release.notified().await;
        let _ = tx.send(Ok(Frame::data(Bytes::copy_from_slice(&body[50_000..])))).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let (mut parts, _) = template.into_parts();
    if let Some(length) = length {
        parts.headers.insert("content-length", length.into());
    }
    Response::from_parts(parts, BodyExt::boxed_unsync(StreamBody::new(stream)))
}

async fn start(extra: &[&str]) -> (GitLab, Upstream, Proxy) {
    let gitlab = GitLab::default();
    let handler = gitlab.clone();
    let up = upstream(Transport::Tcp, move |req| handler.clone().answer(req)).await;
    let proxy = Proxy::start(&up.target, extra);
    (gitlab, up, proxy)
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn send(proxy: &Proxy, method: Method, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::builder().method(method).uri(proxy.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = client().request(req.body(empty()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn get(proxy: &Proxy, path: &str) -> Got {
    send(proxy, Method::GET, path, &[]).await
}

#[tokio::test]
async fn second_get_is_a_hit_with_age_and_the_same_bytes() {
    bounded(async {
        let (gitlab, _up, proxy) = start(&[]).await;
        let first = get(&proxy, "/assets/app-1.js").await;
        assert_eq!(first.status, StatusCode::OK);
        assert!(first.header("age").is_none());
        let second = get(&proxy, "/assets/app-1.js").await;
        assert_eq!(gitlab.count("/assets/app-1.js"), 1);
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(second.body, first.body);
        assert_eq!(second.body.len(), 300_000);
        assert!(second.header("age").is_some_and(|a| a.parse::<u64>().is_ok()));
        assert_eq!(second.header("etag"), Some(ETAG));
        assert_eq!(second.header("cache-control"), Some(FOREVER));
        assert_eq!(second.header("content-length"), Some("300000"));
        // Per-request headers of the fill are not handed to hits.
        assert!(second.header("x-request-id").is_none(), "{:?}", second.headers);
        // Another query string is another resource.
        get(&proxy, "/assets/app-1.js?v=2").await;
        assert_eq!(gitlab.count("/assets/app-1.js"), 2);
        // Outside /assets/ nothing is cached.
        get(&proxy, "/api/app-1.js").await;
        get(&proxy, "/api/app-1.js").await;
        assert_eq!(gitlab.count("/api/app-1.js"), 2);
    })
    .await;
}

#[tokio::test]
async fn our_gzip_applies_to_hits_as_to_misses() {
    bounded(async {
        let (gitlab, _up, proxy) = start(&[]).await;
        let gz = [("accept-encoding", "gzip")];
        let miss = send(&proxy, Method::GET, "/assets/app-2.js", &gz).await;
        let hit = send(&proxy, Method::GET, "/assets/app-2.js", &gz).await;
        let plain = get(&proxy, "/assets/app-2.js").await;
        assert_eq!(gitlab.count("/assets/app-2.js"), 1);
        for got in [&miss, &hit] {
            assert_eq!(got.header("content-encoding"), Some("gzip"));
            assert_eq!(gunzip(&got.body), script(300_000));
        }
        assert!(hit.header("age").is_some());
        assert_eq!(plain.header("content-encoding"), None);
        assert_eq!(plain.body.as_ref(), script(300_000).as_slice());
    })
    .await;
}

#[tokio::test]
async fn head_and_conditional_requests_are_answered_from_memory() {
    bounded(async {
        let (gitlab, _up, proxy) = start(&[]).await;
        // A HEAD before anything is held goes to GitLab and stores nothing.
        send(&proxy, Method::HEAD, "/assets/app-3.js", &[]).await;
        assert_eq!(gitlab.count("/assets/app-3.js"), 1);
        get(&proxy, "/assets/app-3.js").await;
        assert_eq!(gitlab.count("/assets/app-3.js"), 2);

        let head = send(&proxy, Method::HEAD, "/assets/app-3.js", &[]).await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        assert_eq!(head.header("content-length"), Some("300000"));
        assert!(head.header("age").is_some());

        for inm in [ETAG, "W/\"5f3c2a\"", "\"other\", \"5f3c2a\"", "*"] {
            let revalidated = send(&proxy, Method::GET, "/assets/app-3.js", &[("if-none-match", inm)]).await;
            assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED, "{inm}");
            assert!(revalidated.body.is_empty());
            assert_eq!(revalidated.header("etag"), Some(ETAG));
        }
        let changed = send(&proxy, Method::GET, "/assets/app-3.js", &[("if-none-match", "\"old\"")]).await;
        assert_eq!(changed.status, StatusCode::OK);
        assert_eq!(changed.body.len(), 300_000);
        let since = send(
            &proxy,
            Method::GET,
            "/assets/app-3.js",
            &[("if-modified-since", LAST_MODIFIED)],
        )
        .await;
        assert_eq!(since.status, StatusCode::NOT_MODIFIED);
        assert_eq!(gitlab.count("/assets/app-3.js"), 2);
    })
    .await;
}

#[tokio::test]
async fn a_revalidating_first_request_gets_304_and_fills_the_cache() {
    bounded(async {
        let (gitlab, mut up, proxy) = start(&[]).await;
        let first = send(&proxy, Method::GET, "/assets/app-8.js", &[("if-none-match", ETAG)]).await;
        assert_eq!(first.status, StatusCode::NOT_MODIFIED);
        assert_eq!(first.header("etag"), Some(ETAG));
        // GitLab was asked for the whole response, as nginx's proxy_cache does.
        assert!(!up.next_seen().await.headers.contains_key("if-none-match"));
        let changed = send(&proxy, Method::GET, "/assets/app-9.js", &[("if-none-match", "\"old\"")]).await;
        assert_eq!(changed.status, StatusCode::OK);
        assert_eq!(changed.body.len(), 300_000);
        assert!(
            wait_until(Duration::from_secs(5), || async {
                get(&proxy, "/assets/app-8.js").await.header("age").is_some()
            })
            .await
        );
        let hit = get(&proxy, "/assets/app-8.js").await;
        assert_eq!(hit.body.as_ref(), script(300_000).as_slice());
        assert_eq!(gitlab.count("/assets/app-8.js"), 1);
    })
    .await;
}

#[tokio::test]
async fn each_content_encoding_is_its_own_entry() {
    bounded(async {
        let (gitlab, _up, proxy) = start(&[]).await;
        let gz = [("accept-encoding", "gzip, deflate, br")];
        let identity = [("accept-encoding", "identity")];
        let zipped = send(&proxy, Method::GET, "/assets/gz.js", &gz).await;
        let plain = send(&proxy, Method::GET, "/assets/gz.js", &identity).await;
        assert_eq!(gitlab.count("/assets/gz.js"), 2);
        let zipped_hit = send(&proxy, Method::GET, "/assets/gz.js", &[("accept-encoding", "br, gzip")]).await;
        let plain_hit = send(&proxy, Method::GET, "/assets/gz.js", &[]).await;
        assert_eq!(gitlab.count("/assets/gz.js"), 2);
        for got in [&zipped, &zipped_hit] {
            assert_eq!(got.header("content-encoding"), Some("gzip"));
            assert_eq!(gunzip(&got.body), script(20_000));
        }
        assert!(zipped_hit.header("age").is_some() && plain_hit.header("age").is_some());
        for got in [&plain, &plain_hit] {
            assert_eq!(got.header("content-encoding"), None);
            assert_eq!(got.body.as_ref(), script(20_000).as_slice());
        }
    })
    .await;
}

#[tokio::test]
async fn uncacheable_answers_and_requests_go_to_gitlab_every_time() {
    bounded(async {
        let (gitlab, _up, proxy) = start(&["--assets-cache-max-entry", "1MiB"]).await;
        for path in [
            "/assets/private.js",
            "/assets/no-store.js",
            "/assets/cookie.js",
            "/assets/big.js",
        ] {
            let first = get(&proxy, path).await;
            let second = get(&proxy, path).await;
            assert_eq!(gitlab.count(path), 2, "{path}");
            assert!(second.header("age").is_none(), "{path}");
            assert_eq!(first.body, second.body, "{path}");
        }
        assert_eq!(get(&proxy, "/assets/big.js").await.body.len(), 2 << 20);
        // Held, but never used for requests with credentials or a range.
        get(&proxy, "/assets/app-4.js").await;
        send(
            &proxy,
            Method::GET,
            "/assets/app-4.js",
            &[("authorization", "Bearer t")],
        )
        .await;
        let range = send(&proxy, Method::GET, "/assets/app-4.js", &[("range", "bytes=0-9")]).await;
        assert!(range.header("age").is_none());
        assert_eq!(gitlab.count("/assets/app-4.js"), 3);
        // Expiry from max-age.
        get(&proxy, "/assets/short.js").await;
        get(&proxy, "/assets/short.js").await;
        assert_eq!(gitlab.count("/assets/short.js"), 1);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        get(&proxy, "/assets/short.js").await;
        assert_eq!(gitlab.count("/assets/short.js"), 2);
    })
    .await;
}

#[tokio::test]
async fn concurrent_misses_share_one_fetch() {
    bounded(async {
        let (gitlab, _up, proxy) = start(&[]).await;
        let proxy = Arc::new(proxy);
        let clients: Vec<_> = (0..20)
            .map(|_| {
                let proxy = proxy.clone();
                tokio::spawn(async move { get(&proxy, "/assets/slow.js").await })
            })
            .collect();
        for client in clients {
            let got = client.await.unwrap();
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(got.body.as_ref(), script(50_000).as_slice());
        }
        assert_eq!(gitlab.count("/assets/slow.js"), 1);
    })
    .await;
}

#[tokio::test]
async fn the_first_client_gets_bytes_before_gitlab_has_sent_the_body() {
    bounded(async {
        let (gitlab, _up, proxy) = start(&[]).await;
        let req = Request::get(proxy.url("/assets/held-stream.js")).body(empty()).unwrap();
        let mut body = client().request(req).await.unwrap().into_body();
        // GitLab holds the second half until released: the first must arrive without it.
        let mut received = 0;
        while received < 50_000 {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("the first half was held back")
                .unwrap()
                .unwrap();
            received += frame.into_data().map_or(0, |d| d.len());
        }
        gitlab.release.notify_one();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(received + rest.len(), 100_000);
        // And the copy taken on the way was stored.
        let hit = get(&proxy, "/assets/held-stream.js").await;
        assert_eq!(hit.body.as_ref(), script(100_000).as_slice());
        assert!(hit.header("age").is_some());
        assert_eq!(gitlab.count("/assets/held-stream.js"), 1);
    })
    .await;
}

#[tokio::test]
async fn a_client_leaving_mid_body_stores_nothing() {
    bounded(async {
        let (gitlab, _up, proxy) = start(&[]).await;
        let req = Request::get(proxy.url("/assets/held-cut.js")).body(empty()).unwrap();
        let resp = client().request(req).await.unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        // The proxy lets GitLab go; then the held half would only have gone nowhere.
        tokio::time::sleep(Duration::from_millis(300)).await;
        gitlab.release.notify_one();
        tokio::time::sleep(Duration::from_millis(200)).await;

        let whole = get(&proxy, "/assets/held-cut.js").await;
        assert!(whole.header("age").is_none(), "a truncated body was stored");
        assert_eq!(whole.body.as_ref(), script(100_000).as_slice());
        assert_eq!(gitlab.count("/assets/held-cut.js"), 2);
        let hit = get(&proxy, "/assets/held-cut.js").await;
        assert_eq!(hit.body.as_ref(), script(100_000).as_slice());
        assert_eq!(gitlab.count("/assets/held-cut.js"), 2);
    })
    .await;
}

#[tokio::test]
async fn size_zero_turns_the_cache_off() {
    bounded(async {
        let (gitlab, _up, proxy) = start(&["--assets-cache-size", "0"]).await;
        for _ in 0..2 {
            let got = get(&proxy, "/assets/app-5.js").await;
            assert!(got.header("age").is_none());
        }
        assert_eq!(gitlab.count("/assets/app-5.js"), 2);
        let metrics = proxy.metrics().await;
        assert!(!metrics.contains("assets_cache_requests_total{"), "{metrics}");
    })
    .await;
}

#[tokio::test]
async fn metrics_show_hits_misses_and_bytes() {
    bounded(async {
        let (_gitlab, _up, proxy) = start(&[]).await;
        get(&proxy, "/assets/app-6.js").await;
        get(&proxy, "/assets/app-6.js").await;
        get(&proxy, "/assets/app-6.js").await;
        send(
            &proxy,
            Method::GET,
            "/assets/app-6.js",
            &[("authorization", "Bearer t")],
        )
        .await;
        let text = proxy.metrics().await;
        let series = |outcome: &str| {
            metric_value(
                &text,
                &format!("gitlab_oidc_proxy_assets_cache_requests_total{{outcome=\"{outcome}\"}}"),
            )
        };
        assert_eq!(
            (series("miss"), series("hit"), series("bypass")),
            (Some(1.0), Some(2.0), Some(1.0)),
            "{text}"
        );
        let bytes = metric_value(&text, "gitlab_oidc_proxy_assets_cache_bytes").expect("the cache's size");
        assert!((300_000.0..400_000.0).contains(&bytes), "{text}");
        assert!(text.contains("gitlab_oidc_proxy_assets_cache_evictions_total{cause=\"size\"} 0"));
    })
    .await;
}

#[tokio::test]
async fn the_size_bounds_what_is_held() {
    bounded(async {
        let (_gitlab, _up, proxy) = start(&["--assets-cache-size", "2MiB"]).await;
        for i in 0..20 {
            get(&proxy, &format!("/assets/many-{i}.js")).await;
        }
        let text = proxy.metrics().await;
        let bytes = metric_value(&text, "gitlab_oidc_proxy_assets_cache_bytes").expect("the cache's size");
        assert!(bytes <= f64::from(2 << 20), "{text}");
        assert!(
            metric_value(&text, "gitlab_oidc_proxy_assets_cache_evictions_total{cause=\"size\"}")
                .is_some_and(|n| n >= 1.0),
            "{text}"
        );
    })
    .await;
}

#[tokio::test]
async fn http2_clients_get_hits_in_their_protocol() {
    bounded(async {
        let (gitlab, _up, proxy) = start(&[]).await;
        let h2 = h2c_client();
        let fetch = |method: Method| {
            let req = Request::builder()
                .method(method)
                .uri(proxy.url("/assets/app-7.js"))
                .body(empty())
                .unwrap();
            h2.request(req)
        };
        let miss = fetch(Method::GET).await.unwrap();
        assert_eq!(body_bytes(miss).await.len(), 300_000);
        let hit = fetch(Method::GET).await.unwrap();
        assert_eq!(hit.version(), http::Version::HTTP_2);
        assert!(hit.headers().contains_key("age"));
        assert_eq!(body_bytes(hit).await.as_ref(), script(300_000).as_slice());
        let head = fetch(Method::HEAD).await.unwrap();
        assert_eq!(head.headers()["content-length"], "300000");
        assert!(body_bytes(head).await.is_empty());
        assert_eq!(gitlab.count("/assets/app-7.js"), 1);
    })
    .await;
}
