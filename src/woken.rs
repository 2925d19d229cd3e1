//! A future polled only when it asked to be: on its first poll, and after its
//! own waker fired (or it was changed). A connection's task polls its clock and
//! the shutdown signal beside hyper's connection; polled on every wake of the
//! task, once or more per request, they cost a timer check and a lock each time
//! for nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

pin_project_lite::pin_project! {
    pub(crate) struct Woken<F> {
        #[pin]
        inner: F,
        signal: Arc<Signal>,
        // Made once: what the inner future is polled with.
        waker: Waker,
        // The task's waker last seen: the signal's copy changes only with it.
        task: Option<Waker>,
    }
}

/// Set by the inner future's wakes; passes each on to the task.
struct Signal {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

impl<F> Woken<F> {
    pub(crate) fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            // The first poll polls it.
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Woken {
            inner,
            waker: Waker::from(signal.clone()),
            signal,
            task: None,
        }
    }

    /// The inner future, to change it (a timer's reset): it is polled next time.
    pub(crate) fn inner_mut(self: Pin<&mut Self>) -> Pin<&mut F> {
        let this = self.project();
        this.signal.fired.store(true, Ordering::Release);
        this.inner
    }
}

impl<F: Future> Future for Woken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !this.task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
            *this.signal.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            *this.task = Some(cx.waker().clone());
        }
        // Cleared before the poll: a wake during or after it is kept for the next.
        if !this.signal.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `open` is set, waking whoever polled it last.
    struct Gate {
        polls: Arc<AtomicUsize>,
        open: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.open.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn polled_once_then_only_when_woken() {
        let (polls, open, waker) = (Arc::default(), Arc::new(AtomicBool::new(false)), Arc::default());
        let gate = Gate {
            polls: Arc::clone(&polls),
            open: Arc::clone(&open),
            waker: Arc::clone(&waker),
        };
        let mut woken = std::pin::pin!(Woken::new(gate));
        let noop = Waker::noop();
        let mut cx = Context::from_waker(noop);
        for _ in 0..5 {
            assert!(woken.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not woken: polled once");

        // Woken from another thread: the next poll reaches it, and it is ready.
        open.store(true, Ordering::SeqCst);
        let w = waker.lock().unwrap().take().unwrap();
        std::thread::spawn(move || w.wake()).join().unwrap();
        assert!(woken.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_task_is_woken_and_a_changed_timer_is_polled_again() {
        // A timer wrapped: its expiry wakes the task that awaits it.
        let mut sleep = std::pin::pin!(Woken::new(tokio::time::sleep(Duration::from_secs(3600))));
        // Polled once (registered for an hour), then moved to 20 ms from now:
        // without the poll that the change asks for, it would wait the hour.
        assert!(futures_util::poll!(sleep.as_mut()).is_pending());
        sleep
            .as_mut()
            .inner_mut()
            .reset(tokio::time::Instant::now() + Duration::from_millis(20));
        tokio::time::timeout(Duration::from_secs(5), sleep)
            .await
            .expect("woken by its timer");
    }
}
