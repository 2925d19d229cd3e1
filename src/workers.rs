//! Serving threads: connections are spread over `--threads` single-threaded
//! tokio runtimes, each a thread of its own. The starting runtime keeps the
//! accept loops, the admin listener, the refresher and the connections' idle
//! clocks ([`Workers::clock`]), so that busy connections never delay a health
//! probe or an accept, and a serving thread answering HTTP/1 requests from
//! memory holds no timer: tokio reads the clock twice per wake-up of a
//! runtime that has one pending (~300 instructions per cached answer). The
//! per-request timers (GitLab's response and body silences), HTTP/2's
//! keep-alive and the handshake timeouts stay on the serving thread: kept on
//! the starting runtime they would put every thread's requests behind its one
//! timer lock. A connection goes to the thread
//! with the fewest open and stays there for life: no work-stealing scheduler's
//! bookkeeping per wake-up. The pool of connections to GitLab stays shared
//! (one per upstream): idle connections must never hold
//! `--max-upstream-connections` against a request on another thread.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// The serving threads' runtimes; none (only with `count` 0): the
    /// caller's runtime serves.
    threads: Vec<Place>,
    /// The starting runtime, where the connections' idle timers are kept.
    clock: Handle,
    /// Where the search for the least busy thread starts, turned each time, so
    /// that ties do not all go to the first.
    next: AtomicUsize,
    stop: CancellationToken,
    joins: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

struct Place {
    runtime: Handle,
    /// Connections open on this thread.
    open: Arc<AtomicUsize>,
}

/// One open connection on a place, until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` serving threads. Called on the starting runtime.
    pub(crate) fn start(count: usize) -> std::io::Result<Workers> {
        let clock = Handle::try_current().map_err(std::io::Error::other)?;
        let stop = CancellationToken::new();
        let mut threads = Vec::new();
        let mut joins = Vec::new();
        for index in 1..=count {
            // Built on its own thread, so that a failure never drops a runtime
            // inside the caller's (tokio forbids that).
            let (made, handle) = std::sync::mpsc::channel();
            let until = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("serve-{index}"))
                .spawn(move || {
                    // tokio's 512 blocking threads (DNS lookups of a named
                    // upstream) shared out, not 512 on each serving thread.
                    let blocking = (512 / count).max(8);
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .max_blocking_threads(blocking)
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => return drop(made.send(Err(e))),
                    };
                    let _ = made.send(Ok(runtime.handle().clone()));
                    runtime.block_on(until.cancelled());
                    // Whatever is left is dropped now (logged as cut by the
                    // shutdown); blocking work is not awaited.
                    crate::access_log::cut_by_shutdown();
                    runtime.shutdown_background();
                })?;
            joins.push(thread);
            match handle.recv().map_err(std::io::Error::other).and_then(|made| made) {
                Ok(runtime) => threads.push(Place {
                    runtime,
                    open: Arc::default(),
                }),
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            }
        }
        Ok(Workers {
            threads,
            clock,
            next: AtomicUsize::new(0),
            stop,
            joins: Mutex::new(joins),
        })
    }

    /// The runtime that keeps the connections' idle timers: a timer made
    /// inside [`Handle::enter`] of it is kept (and fires) there, wherever it
    /// is polled.
    pub(crate) fn clock(&self) -> &Handle {
        &self.clock
    }

    /// How many threads serve connections.
    pub(crate) fn count(&self) -> usize {
        self.threads.len().max(1)
    }

    /// Runs `serve(stream)` on the serving thread with the fewest connections
    /// open, tracked by `tracker`. Called where `stream` was accepted.
    pub(crate) fn spawn<F, Fut>(&self, tracker: &TaskTracker, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(place) = self.least_busy() else {
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
        place.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(place.open.clone());
        place.runtime.spawn(tracker.track_future(async move {
            let _open = open;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!(error = %e, "cannot take over a connection"),
            }
        }));
    }

    /// The thread with the fewest open connections; None only when started
    /// with none (the caller's runtime then serves).
    fn least_busy(&self) -> Option<&Place> {
        let n = self.threads.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.threads[(first + i) % n.max(1)])
            .min_by_key(|place| place.open.load(Ordering::Relaxed))
    }

    /// Ends the serving threads; what still runs there is dropped.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
        let joins = std::mem::take(&mut *self.joins.lock().unwrap_or_else(|e| e.into_inner()));
        // They end at once (shutdown_background); joined so none outlives us.
        for thread in joins {
            let _ = thread.join();
        }
    }
}

impl Drop for Workers {
    /// Joined here too (they end at once): the starting runtime, which keeps
    /// their timers, must outlive them however the proxy ends, or a timer
    /// they poll would find its runtime gone (tokio panics then).
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// The serving thread's name, or `-` for the caller's own runtime.
    fn place() -> u8 {
        let thread = std::thread::current();
        thread
            .name()
            .and_then(|n| n.strip_prefix("serve-"))
            .map_or(b'-', |n| n.as_bytes()[0])
    }

    /// Accepts one connection and serves it with `workers`: the server answers
    /// the first byte with its thread, then holds the connection until EOF.
    async fn connect(workers: &Workers, tracker: &TaskTracker, listener: &TcpListener) -> (TcpStream, u8) {
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        workers.spawn(tracker, stream, |mut stream| async move {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            stream.write_all(&[place()]).await.unwrap();
            let _ = stream.read(&mut byte).await;
        });
        client.write_all(b"x").await.unwrap();
        let mut reply = [0u8; 1];
        client.read_exact(&mut reply).await.unwrap();
        (client, reply[0])
    }

    /// `threads` serving threads, a listener and a tracker for their connections.
    async fn started(threads: usize) -> (Workers, TcpListener, TaskTracker) {
        let workers = Workers::start(threads).unwrap();
        assert_eq!(workers.count(), threads);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        (workers, listener, TaskTracker::new())
    }

    /// Each connection goes to the thread with the fewest open, is served on
    /// that thread's own runtime (its socket registered there), and is tracked
    /// until done.
    #[tokio::test]
    async fn connections_go_to_the_least_busy_thread() {
        let (workers, listener, tracker) = started(3).await;
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(connect(&workers, &tracker, &listener).await);
        }
        let mut places: Vec<u8> = open.iter().map(|(_, place)| *place).collect();
        places.sort_unstable();
        assert_eq!(places, b"123", "one connection on each thread");

        // The one on serve-2 closes: the next connection goes there.
        let at = open.iter().position(|(_, place)| *place == b'2').unwrap();
        drop(open.remove(at));
        let freed = async {
            while workers.threads[1].open.load(Ordering::Relaxed) != 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), freed)
            .await
            .expect("the closed connection's count went back to 0");
        let (client, place) = connect(&workers, &tracker, &listener).await;
        assert_eq!(place, b'2');

        drop((client, open));
        tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait())
            .await
            .expect("every connection's task ended and was tracked");
        workers.stop();
    }

    /// One thread is a thread of its own too: the caller's runtime keeps
    /// the timers, and the time it spends on them is not a request's.
    #[tokio::test]
    async fn one_thread_is_a_thread_of_its_own() {
        let (workers, listener, tracker) = started(1).await;
        let (client, place) = connect(&workers, &tracker, &listener).await;
        assert_eq!(place, b'1');
        drop(client);
        workers.stop();
    }

    /// A timer made under [`Workers::clock`] is kept by the starting runtime
    /// while a serving thread awaits it: with the starting runtime's clock
    /// paused, an hour's sleep fires once that clock is moved an hour on (on
    /// the serving thread's own clock it would not fire for an hour).
    #[tokio::test(start_paused = true)]
    async fn a_timer_made_on_the_clock_is_kept_by_the_starting_runtime() {
        use std::io::Read;
        let hour = std::time::Duration::from_secs(3600);
        let (workers, listener, tracker) = started(1).await;
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let clock = workers.clock().clone();
        let (armed, is_armed) = tokio::sync::oneshot::channel();
        workers.spawn(&tracker, stream, move |mut stream| async move {
            let mut sleep = {
                let _on = clock.enter();
                Box::pin(tokio::time::sleep(hour))
            };
            // Polled once, so registered, before the clock is moved.
            assert!(futures_util::poll!(sleep.as_mut()).is_pending());
            let _ = armed.send(());
            sleep.await;
            stream.write_all(&[place()]).await.unwrap();
        });
        is_armed.await.unwrap();
        tokio::time::advance(hour).await;
        // Read with the real clock: the serving thread answers once its timer fired.
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut reply = [0u8; 1];
        client.read_exact(&mut reply).expect("the hour's timer fired");
        assert_eq!(reply[0], b'1');
        workers.stop();
    }

    #[test]
    fn zero_threads_means_one_per_core() {
        assert!(resolve(0) >= 1);
        assert_eq!(resolve(3), 3);
    }
}
