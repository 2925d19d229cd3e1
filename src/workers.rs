//! Serving threads: connections are spread over `--threads` single-threaded
//! tokio runtimes, the one that started the proxy and one per extra thread.
//! A connection stays on its thread for life: no work-stealing scheduler's
//! bookkeeping per wake-up. The pool of connections to GitLab stays shared
//! (one per upstream): idle connections must never hold
//! `--max-upstream-connections` against a request on another thread.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many serving threads `--threads 0` means: one per core this process may use.
pub(crate) fn resolve(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        n => n,
    }
}

pub(crate) struct Workers {
    /// The extra threads' runtimes; place 0 is the caller's own runtime.
    others: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Workers {
    /// Starts `count - 1` threads (the caller's runtime is the first place).
    pub(crate) fn start(count: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut others = Vec::new();
        let mut threads = Vec::new();
        for index in 1..count.max(1) {
            // Built on its own thread, so that a failure never drops a runtime
            // inside the caller's (tokio forbids that).
            let (made, handle) = std::sync::mpsc::channel();
            let until = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("serve-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(e) => return drop(made.send(Err(e))),
                    };
                    let _ = made.send(Ok(runtime.handle().clone()));
                    runtime.block_on(until.cancelled());
                    // Whatever is left is dropped now; blocking work is not awaited.
                    runtime.shutdown_background();
                })?;
            threads.push(thread);
            let handle = handle.recv().map_err(std::io::Error::other).and_then(|made| made);
            match handle {
                Ok(handle) => others.push(handle),
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            }
        }
        Ok(Workers {
            others,
            next: AtomicUsize::new(0),
            stop,
            threads: Mutex::new(threads),
        })
    }

    /// How many threads serve (the caller's included).
    pub(crate) fn count(&self) -> usize {
        self.others.len() + 1
    }

    /// Runs `serve(stream)` on the next thread in turn, tracked by `tracker`.
    /// Called on the caller's runtime, where `stream` was accepted.
    pub(crate) fn spawn<F, Fut>(&self, tracker: &TaskTracker, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let place = self.next.fetch_add(1, Ordering::Relaxed) % self.count();
        let Some(handle) = place.checked_sub(1).map(|i| &self.others[i]) else {
            tracker.spawn(serve(stream));
            return;
        };
        // A tokio socket belongs to the reactor it was made on: it is handed
        // over as a plain one and registered again on its new thread.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to its serving thread");
                return;
            }
        };
        handle.spawn(tracker.track_future(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!(error = %e, "cannot take over a connection"),
            }
        }));
    }

    /// Ends the extra threads; what still runs there is dropped.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        // They end at once (shutdown_background); joined so none outlives us.
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Connections go round the threads; each is served on its thread's own
    /// runtime (its socket registered there) and tracked until done.
    #[tokio::test]
    async fn connections_take_turns_across_threads() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(workers.count(), 3);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tracker = TaskTracker::new();
        let mut clients = Vec::new();
        for _ in 0..6 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            workers.spawn(&tracker, stream, |mut stream| async move {
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await.unwrap();
                // serve-N, or the test's own thread for place 0.
                let thread = std::thread::current();
                let place = thread
                    .name()
                    .and_then(|n| n.strip_prefix("serve-"))
                    .map_or(b'0', |n| n.as_bytes()[0]);
                stream.write_all(&[byte[0], place]).await.unwrap();
            });
            client.write_all(b"x").await.unwrap();
            clients.push(client);
        }
        let mut places = Vec::new();
        for client in &mut clients {
            let mut reply = [0u8; 2];
            client.read_exact(&mut reply).await.unwrap();
            assert_eq!(reply[0], b'x');
            places.push(reply[1]);
        }
        assert_eq!(places, b"012012");
        tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait())
            .await
            .expect("every connection's task ended and was tracked");
        workers.stop();
    }

    #[test]
    fn zero_threads_means_one_per_core() {
        assert!(resolve(0) >= 1);
        assert_eq!(resolve(3), 3);
    }
}
