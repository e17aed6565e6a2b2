//! The queue skeleton under the dynamic batcher and the generation scheduler: requests wait in
//! a bounded, closable queue in front of one worker thread, which forms its own batches from it.
//!
//! What the two share lives here, once:
//! - the bound (`capacity` requests) and admission by expected queue time
//!   ([`crate::admission`]): a request that finds the queue full, or that would wait past the
//!   target behind the work ahead, is refused at once with [`InferError::Overloaded`] and a
//!   `Retry-After`; each owner says how long its backlog takes through [`Backlog`];
//! - pruning: a request whose caller has gone is dropped unanswered, one whose deadline passed
//!   is answered [`InferError::Timeout`]; neither is ever run nor counted as work ahead;
//! - closing: new requests are refused with [`InferError::ShuttingDown`] while the worker still
//!   takes what is queued;
//! - the worker thread ([`WorkQueue::spawn_worker`]): whatever way it ends, by returning or by a
//!   fault, the queue is closed and what still waits is failed, so that no caller waits on a
//!   thread that is gone; [`guarded`] runs one model call so that a panic fails only that call,
//!   keeping the panic's message for the log.
//!
//! What differs stays with each owner: the batcher's batch window and size/token budget, the
//! scheduler's running batch and key/value budget.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use crate::admission::{QueueTimeLimit, admit};
use crate::error::InferError;

/// A request waiting in a [`WorkQueue`].
pub(crate) trait Waiting {
    /// Items the request adds to the backlog (rows or sequences for the batcher; 1 for a
    /// generation request).
    fn items(&self) -> usize;

    /// When the caller stops waiting for it, if ever.
    fn deadline(&self) -> Option<Instant>;

    /// Whether the caller has gone (dropped its future or its stream).
    fn abandoned(&self) -> bool;

    /// Answers the caller with `error` instead of running the request.
    fn refuse(self, error: InferError);
}

/// How long the work already queued, and any running now, keeps a new request waiting: the
/// owner's measure of its model's pace, read under the queue's lock at admission.
pub(crate) trait Backlog {
    /// The expected wait of a request queued at `now` behind `requests` waiting requests that
    /// hold `items` items.
    fn expected_wait(&self, requests: usize, items: usize, now: Instant) -> Duration;
}

/// The queue's contents, reached through [`WorkQueue::lock`].
pub(crate) struct Lane<J, B> {
    entries: VecDeque<J>,
    /// Sum of the entries' items.
    items: usize,
    closed: bool,
    /// The owner's pace, which its worker updates and admission reads.
    pub(crate) backlog: B,
    depth: IntGauge,
}

impl<J: Waiting, B: Backlog> Lane<J, B> {
    /// The waiting requests, oldest first.
    pub(crate) fn entries(&self) -> &VecDeque<J> {
        &self.entries
    }

    /// Whether new requests are refused.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Takes the `count` oldest requests.
    pub(crate) fn take(&mut self, count: usize) -> Vec<J> {
        let taken: Vec<J> = self.entries.drain(..count.min(self.entries.len())).collect();
        self.items -= taken.iter().map(Waiting::items).sum::<usize>();
        self.depth.set(self.entries.len() as i64);
        taken
    }

    /// Drops requests whose caller has gone and answers those whose deadline passed; returns
    /// how many left the queue.
    pub(crate) fn prune(&mut self, now: Instant) -> usize {
        if !self.entries.iter().any(|entry| is_stale(entry, now)) {
            return 0;
        }
        let before = self.entries.len();
        let mut kept = VecDeque::with_capacity(before);
        for entry in self.entries.drain(..) {
            if entry.abandoned() {
                self.items -= entry.items();
            } else if entry.deadline().is_some_and(|deadline| deadline <= now) {
                self.items -= entry.items();
                // The caller's own timer may not have fired yet: tell it why.
                entry.refuse(InferError::Timeout);
            } else {
                kept.push_back(entry);
            }
        }
        self.entries = kept;
        self.depth.set(self.entries.len() as i64);
        before - self.entries.len()
    }

    fn expected_wait(&self, now: Instant) -> Duration {
        self.backlog.expected_wait(self.entries.len(), self.items, now)
    }

    /// Closes the queue and fails every waiting request with `error`.
    fn close_and_fail(&mut self, error: &InferError) {
        self.closed = true;
        self.items = 0;
        for entry in self.entries.drain(..) {
            entry.refuse(error.clone());
        }
        self.depth.set(0);
    }
}

fn is_stale<J: Waiting>(entry: &J, now: Instant) -> bool {
    entry.abandoned() || entry.deadline().is_some_and(|deadline| deadline <= now)
}

/// A model's bounded queue and the condition its worker waits on. Shared behind an `Arc` by the
/// callers' side and the worker thread.
pub(crate) struct WorkQueue<J, B> {
    model: String,
    capacity: usize,
    limit: QueueTimeLimit,
    lane: Mutex<Lane<J, B>>,
    wakeup: Condvar,
}

impl<J: Waiting + Send + 'static, B: Backlog + Send + 'static> WorkQueue<J, B> {
    /// An open, empty queue for `model` holding at most `capacity` requests, admitting those
    /// expected to start within `max_queue_time`; `depth` is kept at the number waiting.
    pub(crate) fn new(model: &str, capacity: usize, max_queue_time: Duration, backlog: B, depth: IntGauge) -> Self {
        depth.set(0);
        Self {
            model: model.to_string(),
            capacity,
            limit: QueueTimeLimit { target: max_queue_time },
            lane: Mutex::new(Lane { entries: VecDeque::new(), items: 0, closed: false, backlog, depth }),
            wakeup: Condvar::new(),
        }
    }

    /// The model's name, for logs.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// The queue's contents, locked.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Lane<J, B>> {
        // No code panics while holding the lock, but never let poisoning take the model down.
        self.lane.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a request to arrive or the queue to close (or a spurious wake-up).
    pub(crate) fn wait<'a>(&self, lane: MutexGuard<'a, Lane<J, B>>) -> MutexGuard<'a, Lane<J, B>> {
        self.wakeup.wait(lane).unwrap_or_else(PoisonError::into_inner)
    }

    /// As [`wait`](Self::wait), for at most `timeout`.
    pub(crate) fn wait_timeout<'a>(
        &self,
        lane: MutexGuard<'a, Lane<J, B>>,
        timeout: Duration,
    ) -> MutexGuard<'a, Lane<J, B>> {
        self.wakeup.wait_timeout(lane, timeout).unwrap_or_else(PoisonError::into_inner).0
    }

    /// Queues `entry`, or refuses it: closed, full, or expected to wait past the target.
    pub(crate) fn push(&self, entry: J, now: Instant) -> Result<(), InferError> {
        drop(self.push_unannounced(entry, now)?);
        self.notify();
        Ok(())
    }

    /// As [`push`](Self::push), but the worker is not woken and the queue stays locked: for a
    /// caller that may take the work itself. It must [`notify`](Self::notify) once it has
    /// released the lock, unless the queue is then empty.
    pub(crate) fn push_unannounced(&self, entry: J, now: Instant) -> Result<MutexGuard<'_, Lane<J, B>>, InferError> {
        let mut lane = self.lock();
        self.admits(&mut lane, now)?;
        lane.items += entry.items();
        lane.entries.push_back(entry);
        lane.depth.set(lane.entries.len() as i64);
        Ok(lane)
    }

    /// Wakes the worker to take what is queued.
    pub(crate) fn notify(&self) {
        self.wakeup.notify_one();
    }

    /// Whether a request queued now would be admitted, by the same bounds as
    /// [`push`](Self::push): for refusing before costly preparation that a refusal would waste.
    pub(crate) fn check_admission(&self, now: Instant) -> Result<(), InferError> {
        self.admits(&mut self.lock(), now)
    }

    /// Requests waiting now.
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Refuses new requests from now on; the worker still takes what is queued.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wakeup.notify_all();
    }

    fn admits(&self, lane: &mut Lane<J, B>, now: Instant) -> Result<(), InferError> {
        if lane.closed {
            return Err(InferError::ShuttingDown);
        }
        let mut expected_wait = lane.expected_wait(now);
        let full = |lane: &Lane<J, B>| lane.entries.len() >= self.capacity;
        if full(lane) || self.limit.check(expected_wait).is_err() {
            // Requests whose callers have gone must not hold places, or count as work ahead,
            // against a live caller.
            if lane.prune(now) > 0 {
                expected_wait = lane.expected_wait(now);
            }
        }
        admit(&self.model, full(lane), expected_wait, self.limit.target)
    }

    /// Runs `work` on a thread of its own named `thread_name`. However `work` ends, returning or
    /// unwinding from a fault outside a [`guarded`] model call, the queue is then closed and
    /// what still waits is failed; a fault is logged with its message.
    pub(crate) fn spawn_worker(
        self: &Arc<Self>,
        thread_name: String,
        work: impl FnOnce(&Self) + Send + 'static,
    ) -> Result<(), String> {
        let queue = Arc::clone(self);
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let outcome = catch_unwind(AssertUnwindSafe(|| work(&queue)));
                let error = match outcome {
                    Ok(()) => InferError::Internal("the model's worker stopped".into()),
                    Err(panic) => {
                        let message = panic_message(panic.as_ref());
                        tracing::error!(model = %queue.model, %message, "the model's worker failed; the model no longer serves");
                        InferError::Internal(format!("the model's worker failed: {message}"))
                    }
                };
                queue.lock().close_and_fail(&error);
            })
            .map(drop)
            .map_err(|err| format!("cannot start the model's worker thread: {err}"))
    }
}

/// Runs one model call (a batch, a generation step) so that a panic inside it becomes
/// [`InferError::Internal`] carrying the panic's message, logged with `model`'s name, and the
/// worker goes on.
pub(crate) fn guarded<T>(model: &str, call: impl FnOnce() -> Result<T, InferError>) -> Result<T, InferError> {
    catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        let message = panic_message(panic.as_ref());
        tracing::error!(model, %message, "model panicked; failing what it was computing");
        Err(InferError::Internal(format!("model panicked: {message}")))
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::error::Overload;

    /// A waiting request: its reply channel and deadline.
    struct Entry {
        items: usize,
        deadline: Option<Instant>,
        reply: mpsc::Sender<InferError>,
        gone: bool,
    }

    impl Waiting for Entry {
        fn items(&self) -> usize {
            self.items
        }
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn abandoned(&self) -> bool {
            self.gone
        }
        fn refuse(self, error: InferError) {
            let _ = self.reply.send(error);
        }
    }

    /// 10 ms per queued item.
    struct TenMillisPerItem;

    impl Backlog for TenMillisPerItem {
        fn expected_wait(&self, _requests: usize, items: usize, _now: Instant) -> Duration {
            Duration::from_millis(10 * items as u64)
        }
    }

    fn queue(capacity: usize, max_queue_time: Duration) -> Arc<WorkQueue<Entry, TenMillisPerItem>> {
        Arc::new(WorkQueue::new("m", capacity, max_queue_time, TenMillisPerItem, IntGauge::new("d", "d").unwrap()))
    }

    fn entry(items: usize, deadline: Option<Instant>) -> (Entry, mpsc::Receiver<InferError>) {
        let (reply, answers) = mpsc::channel();
        (Entry { items, deadline, reply, gone: false }, answers)
    }

    #[test]
    fn full_and_slow_queues_refuse_with_the_cause() {
        let now = Instant::now();
        let full = queue(2, Duration::from_secs(60));
        full.push(entry(1, None).0, now).unwrap();
        full.push(entry(1, None).0, now).unwrap();
        let refused = full.push(entry(1, None).0, now).unwrap_err();
        assert!(matches!(refused, InferError::Overloaded { cause: Overload::QueueFull, .. }), "{refused:?}");
        // 0 and 30 ms ahead: admitted; 60 ms ahead is over the 50 ms target.
        let slow = queue(8, Duration::from_millis(50));
        slow.push(entry(3, None).0, now).unwrap();
        slow.push(entry(3, None).0, now).unwrap();
        let refused = slow.check_admission(now).unwrap_err();
        assert!(
            matches!(refused, InferError::Overloaded { cause: Overload::QueueTime { expected_wait, .. }, retry_after, .. }
                if expected_wait == Duration::from_millis(60) && retry_after == Duration::from_secs(1)),
            "{refused:?}"
        );
        // Taking work out of the queue admits again.
        assert_eq!(slow.lock().take(1).len(), 1);
        slow.check_admission(now).unwrap();
    }

    #[test]
    fn stale_entries_are_pruned_before_a_refusal() {
        let queue = queue(2, Duration::from_secs(1));
        let now = Instant::now();
        let (expiring, told) = entry(1, Some(now + Duration::from_millis(5)));
        queue.push(expiring, now).unwrap();
        let (mut gone, silent) = entry(1, None);
        gone.gone = true;
        queue.push(gone, now).unwrap();
        // Full, until both stale entries go: the expired one is told, the abandoned one is not.
        queue.push(entry(1, None).0, now + Duration::from_millis(10)).unwrap();
        assert_eq!(told.try_recv().unwrap(), InferError::Timeout);
        assert!(silent.try_recv().is_err());
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.lock().items, 1);
    }

    #[test]
    fn a_closed_queue_refuses_and_a_finished_worker_fails_what_is_left() {
        let queue = queue(8, Duration::from_secs(1));
        let (waiting, answer) = entry(1, None);
        queue.push(waiting, Instant::now()).unwrap();
        let (started, worker_started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        queue
            .spawn_worker("test-worker".into(), move |_| {
                started.send(()).unwrap();
                released.recv().unwrap();
                panic!("the worker broke");
            })
            .unwrap();
        worker_started.recv().unwrap();
        release.send(()).unwrap();
        let failed = answer.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(&failed, InferError::Internal(m) if m.contains("the worker broke")), "{failed:?}");
        assert_eq!(queue.push(entry(1, None).0, Instant::now()).unwrap_err(), InferError::ShuttingDown);
    }

    #[test]
    fn a_guarded_call_turns_a_panic_into_an_error_with_its_message() {
        let failed = guarded::<()>("m", || panic!("index out of bounds")).unwrap_err();
        assert_eq!(failed, InferError::Internal("model panicked: index out of bounds".into()));
        assert_eq!(guarded("m", || Ok(7)), Ok(7));
    }
}
