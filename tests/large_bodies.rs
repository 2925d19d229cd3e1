//! 1 GiB up and 1 GiB down through the real proxy process, whose peak memory
//! must stay bounded: proof that no body is buffered.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;
/// The README says "a peak of ~20 MiB": this test's debug build with mimalloc
/// (the image and the Debian unit add MIMALLOC_PURGE_DELAY=10) starts at
/// 12.5–13 MiB and peaks at 19.7–19.8 MiB after the 2 GiB (two runs on the 2-core
/// development machine; glibc's malloc peaked at 14.2–15.4), so ~7 MiB for the
/// bodies. Room of about a third for machine noise: a peak under 26 MiB, the
/// bodies under 12 MiB (re-measure rather than raise these, and the README with
/// them). 1 GiB buffered, or a few MiB held per body, exceeds either.
const PEAK_RSS_LIMIT_KIB: u64 = 26 * 1024;
const GROWTH_LIMIT_KIB: u64 = 12 * 1024;

fn gib_body() -> TestBody {
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    let frames = (0..GIB / CHUNK as u64).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone())));
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_with_bounded_memory() {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let up = upstream(Transport::Tcp, move |req| {
        let counter = counter.clone();
        async move {
            if req.method() == http::Method::GET {
                // Download: no Content-Length, so it streams chunked like an artifact.
                return Response::new(gib_body());
            }
            // Upload: count without keeping anything.
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Response::new(full(counter.load(Ordering::Relaxed).to_string()))
        }
    })
    .await;
    let proxy = Proxy::start(&up.target, &[]);
    let at_start = proxy.peak_rss_kib();
    let client = client();

    let upload = Request::put(proxy.url("/api/v4/projects/1/packages/generic/big/1/blob.bin"))
        .body(gib_body())
        .unwrap();
    let resp = client.request(upload).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await, GIB.to_string());
    assert_eq!(received.load(Ordering::Relaxed), GIB);

    let resp = client
        .get(proxy.url("/group/project/-/jobs/1/artifacts/download").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut downloaded = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(data.iter().all(|b| *b == 0x5a));
            downloaded += data.len() as u64;
        }
    }
    assert_eq!(downloaded, GIB);

    let peak = proxy.peak_rss_kib();
    eprintln!("proxy peak RSS after 2 GiB through it: {peak} KiB ({at_start} KiB at start)");
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "peak RSS {peak} KiB exceeds {PEAK_RSS_LIMIT_KIB} KiB"
    );
    assert!(
        peak.saturating_sub(at_start) < GROWTH_LIMIT_KIB,
        "peak RSS {peak} KiB is more than {GROWTH_LIMIT_KIB} KiB above the {at_start} KiB at start"
    );
}
