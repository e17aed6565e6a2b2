//! The dynamic batcher, in front of every tabular and embedding model (generation has its own
//! scheduler, `generation::scheduler`).
//!
//! Each model has one [`Batcher`]: a bounded queue in front of a worker on its own OS thread,
//! so that model code does not hold the async runtime's threads. The one exception is a batch
//! that costs less than the hand-off would (under 50 µs, as the model has shown, with no batch
//! window set): a caller that finds the model idle runs the next batch, its own request with
//! what queued ahead of it, at once on its own thread. The worker takes the oldest request, then waits
//! at most [`BatchPolicy::max_queue_delay`] (counted from that request's arrival) for more, until
//! the batch is full by [`BatchPolicy::max_batch_size`] items or
//! [`BatchPolicy::max_batch_tokens`] tokens (padded or real, as the engine computes them: see
//! [`TokenLayout`]), runs the batch, and answers every request with its own result and the
//! batch's statistics. The queue itself, its bounds, admission, pruning and the worker thread's
//! safety are [`crate::queue`]'s, shared with the generation scheduler.
//!
//! Guarantees:
//! - a request that would wait longer than [`BatchPolicy::max_queue_time`] behind the work
//!   queued ahead of it, at the model's observed speed, is refused at once with
//!   [`InferError::Overloaded`] (see [`crate::admission`]), as is one that finds the queue full;
//!   the retry time is when the queue will have drained enough to admit it;
//! - a request whose deadline passes, or whose caller gave up, is dropped from the queue and
//!   never run;
//! - a panic inside the model fails only the batch it was running, and the worker goes on;
//! - closing the batcher ([`Batcher::close`], or dropping it) refuses new requests and still runs
//!   what is queued; the worker thread then ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::oneshot;

use crate::admission::BatchCosts;
use crate::error::InferError;
use crate::metrics::BatchMetrics;
use crate::queue::{Backlog, Lane, Waiting, WorkQueue, guarded};

/// What the batcher needs to know about one request to place it in a batch.
pub trait BatchItem {
    /// Items the request adds to a batch (rows for tabular models, sequences for text); counted
    /// against `max_batch_size`.
    fn size(&self) -> usize {
        1
    }

    /// The request's tokens, for the `max_batch_tokens` budget; none for models without tokens.
    fn tokens(&self) -> TokenCount {
        TokenCount::default()
    }
}

/// A request's tokens, as the two kinds of engine count them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCount {
    /// Its longest sequence.
    pub longest: usize,
    /// All its sequences together.
    pub total: usize,
}

/// How an engine lays out a batch of sequences, which decides what `max_batch_tokens` counts:
/// the tokens the engine actually computes (as Hugging Face TEI's `is_padded` does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenLayout {
    /// Every sequence padded to the batch's longest: a batch costs longest × sequences.
    #[default]
    Padded,
    /// Sequences laid end to end without padding: a batch costs the sum of its tokens.
    Ragged,
}

/// A model that answers a batch of requests at once. It lives on the batcher's worker thread.
pub trait BatchModel: Send + 'static {
    /// One caller's request.
    type Request: BatchItem + Send + 'static;
    /// One caller's answer.
    type Response: Send + 'static;

    /// Answers every request, in order: exactly one response per request. An error fails the
    /// whole batch.
    fn run_batch(&mut self, requests: Vec<Self::Request>) -> Result<Vec<Self::Response>, InferError>;

    /// How the model lays out a batch's tokens; padded unless it says otherwise.
    fn token_layout(&self) -> TokenLayout {
        TokenLayout::Padded
    }
}

/// The longest batch window a policy may set: longer ones are surely configuration mistakes.
const MAX_QUEUE_DELAY: Duration = Duration::from_secs(60);
/// The longest queue-time target a policy may set.
const MAX_QUEUE_TIME: Duration = Duration::from_secs(3600);

/// How a model's batches are formed, and how much may wait.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchPolicy {
    /// Most items (rows or sequences) in one batch. A single request larger than this runs as a
    /// batch of its own.
    pub max_batch_size: usize,
    /// Most tokens in one batch, for text models, counted as the engine computes them: padded
    /// tokens (longest sequence × sequences) for padded engines, real tokens for ragged ones
    /// (the native encoder). A single request over the budget runs as a batch of its own.
    pub max_batch_tokens: Option<usize>,
    /// Longest time the oldest queued request waits for others to join its batch. The default,
    /// zero, never delays a request: a batch takes whatever queued while the previous one ran,
    /// which is where batching pays. Raise it (a few milliseconds) for models whose cost per
    /// batch, not per item, dominates, such as GPU models at low load.
    #[serde(with = "humantime_serde")]
    pub max_queue_delay: Duration,
    /// Longest a request may expect to wait for its batch to start: one that would wait longer,
    /// behind the work queued ahead of it at the speed the model has shown, is refused at once
    /// (429 with `Retry-After`) instead of queueing. The default, 100 ms, keeps admitted
    /// requests near their unloaded latency under overload while leaving enough queued work to
    /// form full batches.
    #[serde(with = "humantime_serde")]
    pub max_queue_time: Duration,
    /// Most requests waiting, whatever their size; one more is refused at once as overloaded.
    pub queue_capacity: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_batch_size: 64,
            max_batch_tokens: None,
            max_queue_delay: Duration::ZERO,
            max_queue_time: Duration::from_millis(100),
            queue_capacity: 1024,
        }
    }
}

impl BatchPolicy {
    /// Checks that the policy can form batches at all.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_size == 0 {
            return Err("max_batch_size must be at least 1".into());
        }
        if self.max_batch_tokens == Some(0) {
            return Err("max_batch_tokens must be at least 1 when set".into());
        }
        if self.queue_capacity == 0 {
            return Err("queue_capacity must be at least 1".into());
        }
        if self.max_queue_delay > MAX_QUEUE_DELAY {
            return Err(format!("max_queue_delay must be at most {}s", MAX_QUEUE_DELAY.as_secs()));
        }
        if self.max_queue_time.is_zero() || self.max_queue_time > MAX_QUEUE_TIME {
            return Err(format!("max_queue_time must be more than zero and at most {}s", MAX_QUEUE_TIME.as_secs()));
        }
        Ok(())
    }
}

/// How a request was batched and how long each stage took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Items in the batch that answered this request, all requests together.
    pub batch_size: usize,
    /// Requests in that batch.
    pub batch_requests: usize,
    /// Time from submission to the start of the batch.
    pub queue_time: Duration,
    /// Time the model took for the whole batch.
    pub compute_time: Duration,
}

/// A request's answer with its batch statistics.
#[derive(Debug)]
pub struct Completed<T> {
    /// The model's answer.
    pub output: T,
    /// How the request was batched.
    pub stats: BatchStats,
}

type Answer<T> = Result<Completed<T>, InferError>;
type Reply<T> = oneshot::Sender<Answer<T>>;

struct Job<M: BatchModel> {
    request: M::Request,
    size: usize,
    tokens: TokenCount,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: Reply<M::Response>,
}

impl<M: BatchModel> Waiting for Job<M> {
    fn items(&self) -> usize {
        self.size
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn refuse(self, error: InferError) {
        let _ = self.reply.send(Err(error));
    }
}

/// The model's measured speed and the batch computing now: how long queued items will wait.
struct Pace {
    costs: BatchCosts,
    max_batch_size: usize,
    /// The batch computing now: when it started and how long it is expected to take.
    running: Option<(Instant, Duration)>,
}

impl Backlog for Pace {
    /// What remains of the running batch, then the items queued ahead.
    fn expected_wait(&self, _requests: usize, items: usize, now: Instant) -> Duration {
        let running = self.running.map_or(Duration::ZERO, |(started, expected)| {
            expected.saturating_sub(now.saturating_duration_since(started))
        });
        running + self.costs.time_for(items, self.max_batch_size)
    }
}

type Queue<M> = WorkQueue<Job<M>, Pace>;

/// A model's queue and its worker thread. Cheap to share behind an `Arc`.
pub struct Batcher<M: BatchModel> {
    queue: Arc<Queue<M>>,
    runner: Arc<Runner<M>>,
}

impl<M: BatchModel> Batcher<M> {
    /// Starts the worker thread for `model`. Fails only if the policy is invalid or the thread
    /// cannot be spawned.
    pub fn spawn(name: &str, model: M, policy: BatchPolicy, metrics: BatchMetrics) -> Result<Self, String> {
        policy.validate()?;
        let pace = Pace { costs: BatchCosts::default(), max_batch_size: policy.max_batch_size, running: None };
        let queue = Arc::new(WorkQueue::new(
            name,
            policy.queue_capacity,
            policy.max_queue_time,
            pace,
            metrics.queue_depth.clone(),
        ));
        let runner = Arc::new(Runner { layout: model.token_layout(), model: Mutex::new(model), policy, metrics });
        let worker = Arc::clone(&runner);
        queue.spawn_worker(format!("inferd-batch-{name}"), move |queue| worker.work(queue))?;
        Ok(Self { queue, runner })
    }

    /// The policy this batcher forms batches with.
    pub fn policy(&self) -> &BatchPolicy {
        &self.runner.policy
    }

    /// Stops accepting requests ([`InferError::ShuttingDown`]); what is already queued still
    /// runs, without waiting for the batch window.
    pub fn close(&self) {
        self.queue.close();
    }

    /// Whether a request submitted now would be admitted, by the same bounds as
    /// [`submit`](Self::submit): for refusing early, before costly preparation (tokenizing)
    /// that a refusal would waste. `submit` checks again.
    pub fn check_admission(&self) -> Result<(), InferError> {
        self.queue.check_admission(Instant::now())
    }

    /// Requests waiting in the queue now.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Queues `request` and waits for its answer. Rejects at once when the queue is full or the
    /// request would wait longer than `max_queue_time`; gives up with [`InferError::Timeout`]
    /// at `deadline`, after which the request is never run.
    /// Dropping the returned future also withdraws the request.
    pub async fn submit(
        &self,
        request: M::Request,
        deadline: Option<Instant>,
    ) -> Result<Completed<M::Response>, InferError> {
        let now = Instant::now();
        if deadline.is_some_and(|deadline| deadline <= now) {
            return Err(InferError::Timeout);
        }
        let (reply, receiver) = oneshot::channel();
        let job = Job { size: request.size(), tokens: request.tokens(), request, enqueued: now, deadline, reply };
        // A cheap batch, this request's or one ahead of it, may run right here; the answer is
        // then ready when awaited.
        self.take_or_announce(self.queue.push_unannounced(job, now)?);
        let answer = match deadline {
            None => receiver.await,
            Some(deadline) => {
                tokio::time::timeout_at(deadline.into(), receiver).await.map_err(|_| InferError::Timeout)?
            }
        };
        // The worker answers every job it takes, and the queue fails every job it still holds
        // when the worker ends; a reply dropped unanswered means the worker died mid-batch.
        answer.unwrap_or_else(|_| Err(InferError::Internal("the batch worker stopped".into())))
    }
}

impl<M: BatchModel> Batcher<M> {
    /// Runs the next batch on the calling thread when that costs less than handing it to the
    /// worker would: no batch is running, the policy sets no batch window, and the model has
    /// shown that a batch of this size takes under [`INLINE_BELOW`] (a one-row linear or tree
    /// model takes a few microseconds; waking the worker thread and being woken by it, tens).
    /// What was queued meanwhile is run the same way, up to [`INLINE_ROUNDS`] batches; then, or
    /// when a batch is not cheap, the worker is woken.
    ///
    /// While a batch runs, whoever runs it takes what is queued when it ends (the worker by its
    /// loop, a caller by this one), so a request queued behind it wakes nobody: on two cores,
    /// waking the worker for every request that found the model busy cost a system call and a
    /// context switch each.
    fn take_or_announce<'a>(&'a self, mut lane: MutexGuard<'a, Lane<Job<M>, Pace>>) {
        for _ in 0..INLINE_ROUNDS {
            if lane.backlog.running.is_some() {
                return;
            }
            let now = Instant::now();
            // Expired and abandoned requests are never run, by whichever thread runs the batch.
            lane.prune(now);
            let (count, _) = self.runner.fit(lane.entries());
            if count == 0 {
                return;
            }
            let items: usize = lane.entries().iter().take(count).map(|job| job.size).sum();
            let cheap = lane
                .backlog
                .costs
                .seconds_per_item(items)
                .is_some_and(|seconds| seconds * items as f64 <= INLINE_BELOW.as_secs_f64());
            // Never wait for the model here: if the worker holds it, the work is the worker's.
            let model = if cheap && self.runner.policy.max_queue_delay.is_zero() {
                self.runner.model.try_lock().ok()
            } else {
                None
            };
            let Some(model) = model else {
                drop(lane);
                self.queue.notify();
                return;
            };
            let batch = lane.take(count);
            lane.backlog.running = Some((now, lane.backlog.costs.time_for(items, items)));
            drop(lane);
            let unwinding = HandOverOnUnwind(&self.queue);
            self.runner.run(&self.queue, model, batch);
            std::mem::forget(unwinding);
            lane = self.queue.lock();
        }
        let more = !lane.entries().is_empty();
        drop(lane);
        if more {
            self.queue.notify();
        }
    }
}

impl<M: BatchModel> Drop for Batcher<M> {
    /// Closes the queue without waiting: the worker runs what is queued, then exits on its own.
    /// (Joining here could block an async runtime thread behind a slow model.)
    fn drop(&mut self) {
        self.close();
    }
}

/// The longest a batch may be expected to take for a caller to run it on its own thread
/// ([`Batcher::take_or_announce`]).
const INLINE_BELOW: Duration = Duration::from_micros(50);

/// Should an inline batch unwind outside the model call (which [`guarded`] catches), marks it
/// ended and wakes the worker, so that what queued behind it is not left waiting for a batch
/// that will never finish.
struct HandOverOnUnwind<'a, M: BatchModel>(&'a Queue<M>);

impl<M: BatchModel> Drop for HandOverOnUnwind<'_, M> {
    fn drop(&mut self) {
        self.0.lock().backlog.running = None;
        self.0.notify();
    }
}

/// The most batches one caller runs inline (its own and those queued meanwhile) before it
/// hands the rest to the worker: its own answer waits for them.
const INLINE_ROUNDS: usize = 4;

/// The model and how its batches are formed and run: the worker thread's, shared with callers
/// that run a cheap request inline.
struct Runner<M: BatchModel> {
    model: Mutex<M>,
    layout: TokenLayout,
    policy: BatchPolicy,
    metrics: BatchMetrics,
}

impl<M: BatchModel> Runner<M> {
    fn work(&self, queue: &Queue<M>) {
        while let Some(batch) = self.next_batch(queue) {
            // A model call that panicked is caught inside `run`; the lock is never poisoned in a
            // way that matters, and the model goes on serving as it does after a failed batch.
            let model = self.model.lock().unwrap_or_else(PoisonError::into_inner);
            self.run(queue, model, batch);
        }
    }

    /// Waits for the next batch to be complete; `None` once the queue is closed and empty.
    fn next_batch(&self, queue: &Queue<M>) -> Option<Vec<Job<M>>> {
        let mut lane = queue.lock();
        loop {
            let now = Instant::now();
            if lane.prune(now) > 0 {
                tracing::debug!(model = %queue.model(), "dropped expired or abandoned requests");
            }
            let Some(oldest) = lane.entries().front() else {
                if lane.is_closed() {
                    return None;
                }
                lane = queue.wait(lane);
                continue;
            };
            let window_end = oldest.enqueued + self.policy.max_queue_delay;
            let (count, full) = self.fit(lane.entries());
            // Waiting for company must not let a member of the batch expire.
            let deadline_first = lane
                .entries()
                .iter()
                .take(count)
                .any(|job| job.deadline.is_some_and(|deadline| deadline <= window_end));
            if full || lane.is_closed() || now >= window_end || deadline_first {
                let batch = lane.take(count);
                let items = batch.iter().map(|job| job.size).sum::<usize>();
                lane.backlog.running = Some((now, lane.backlog.costs.time_for(items, items)));
                return Some(batch);
            }
            lane = queue.wait_timeout(lane, window_end - now);
        }
    }

    /// How many jobs from the front of the queue form a batch, and whether that batch is full
    /// (no further job could join it).
    fn fit(&self, jobs: &VecDeque<Job<M>>) -> (usize, bool) {
        let mut batch = BatchTokens::default();
        for (count, job) in jobs.iter().enumerate() {
            let next = batch.with(job.size, job.tokens);
            let over_size = next.items > self.policy.max_batch_size;
            let over_tokens = self.policy.max_batch_tokens.is_some_and(|budget| next.cost(self.layout) > budget);
            if count > 0 && (over_size || over_tokens) {
                return (count, true);
            }
            batch = next;
        }
        let tokens_spent = self.policy.max_batch_tokens.is_some_and(|budget| batch.cost(self.layout) >= budget);
        (jobs.len(), batch.items >= self.policy.max_batch_size || tokens_spent)
    }

    /// Runs `batch` on the `model` it was given, released before the answers are sent (so that
    /// a caller woken by its answer finds the model free), and answers each request.
    fn run(&self, queue: &Queue<M>, mut model: MutexGuard<'_, M>, batch: Vec<Job<M>>) {
        let started = Instant::now();
        let batch_requests = batch.len();
        let batch_size: usize = batch.iter().map(|job| job.size).sum();
        let mut requests = Vec::with_capacity(batch_requests);
        let mut replies = Vec::with_capacity(batch_requests);
        self.metrics.batch_started(batch_size);
        for job in batch {
            self.metrics.queue_duration.observe(started.duration_since(job.enqueued).as_secs_f64());
            requests.push(job.request);
            replies.push((job.reply, job.enqueued));
        }

        let result = guarded(queue.model(), || model.run_batch(requests));
        drop(model);
        let compute_time = started.elapsed();
        self.metrics.observe_batch(batch_size, compute_time);
        self.record_cost(queue, batch_size, compute_time);

        let outputs = match result {
            Ok(outputs) if outputs.len() == batch_requests => Ok(outputs),
            Ok(outputs) => Err(InferError::Internal(format!(
                "model returned {} answers for {batch_requests} requests",
                outputs.len()
            ))),
            Err(err) => Err(err),
        };
        let stats = |enqueued: Instant| BatchStats {
            batch_size,
            batch_requests,
            queue_time: started.duration_since(enqueued),
            compute_time,
        };
        // A send fails only when the caller has gone; there is nobody left to tell.
        match outputs {
            Ok(outputs) => {
                for ((reply, enqueued), output) in replies.into_iter().zip(outputs) {
                    let _ = reply.send(Ok(Completed { output, stats: stats(enqueued) }));
                }
            }
            Err(err) => {
                for (reply, _) in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Learns the batch's cost, and publishes how many items the queue now admits.
    fn record_cost(&self, queue: &Queue<M>, items: usize, compute: Duration) {
        let mut lane = queue.lock();
        lane.backlog.running = None;
        lane.backlog.costs.observe(items, compute);
        if let Some(limit) = lane.backlog.costs.items_within(self.policy.max_queue_time, self.policy.max_batch_size) {
            self.metrics.admission_limit.set(limit.min(i64::MAX as usize) as i64);
        }
    }
}

/// A batch's size so far, for the size and token budgets.
#[derive(Debug, Clone, Copy, Default)]
struct BatchTokens {
    items: usize,
    longest: usize,
    total: usize,
}

impl BatchTokens {
    fn with(self, items: usize, tokens: TokenCount) -> Self {
        Self {
            items: self.items + items,
            longest: self.longest.max(tokens.longest),
            total: self.total.saturating_add(tokens.total),
        }
    }

    /// The tokens the engine computes for the batch.
    fn cost(&self, layout: TokenLayout) -> usize {
        match layout {
            TokenLayout::Padded => self.longest.saturating_mul(self.items),
            TokenLayout::Ragged => self.total,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use super::*;
    use crate::error::Overload;
    use crate::metrics::Metrics;

    /// A request for the test model: `value` is echoed back doubled; a value of -1 panics.
    struct Echo {
        value: i64,
        size: usize,
    }

    impl BatchItem for Echo {
        fn size(&self) -> usize {
            self.size
        }
    }

    /// A model that records the batches it sees and can be slowed down or held.
    struct Recorder {
        batches: mpsc::Sender<Vec<i64>>,
        delay: Duration,
        runs: Arc<AtomicUsize>,
    }

    impl BatchModel for Recorder {
        type Request = Echo;
        type Response = i64;

        fn run_batch(&mut self, requests: Vec<Echo>) -> Result<Vec<i64>, InferError> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            let values: Vec<i64> = requests.iter().map(|r| r.value).collect();
            let _ = self.batches.send(values.clone());
            if values.contains(&-1) {
                panic!("asked to panic");
            }
            std::thread::sleep(self.delay);
            Ok(values.iter().map(|v| v * 2).collect())
        }
    }

    struct Harness {
        batcher: Arc<Batcher<Recorder>>,
        batches: mpsc::Receiver<Vec<i64>>,
        runs: Arc<AtomicUsize>,
    }

    fn harness(policy: BatchPolicy, delay: Duration) -> Harness {
        let (tx, rx) = mpsc::channel();
        let runs = Arc::new(AtomicUsize::new(0));
        let model = Recorder { batches: tx, delay, runs: Arc::clone(&runs) };
        let metrics = Metrics::new();
        let batcher = Batcher::spawn("test", model, policy, metrics.batcher("test")).unwrap();
        Harness { batcher: Arc::new(batcher), batches: rx, runs }
    }

    fn echo(value: i64) -> Echo {
        Echo { value, size: 1 }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn batches_form_under_concurrency_and_never_exceed_the_limit() {
        let policy =
            BatchPolicy { max_batch_size: 8, max_queue_delay: Duration::from_millis(20), ..BatchPolicy::default() };
        let h = harness(policy, Duration::from_millis(2));
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let batcher = Arc::clone(&h.batcher);
                tokio::spawn(async move { batcher.submit(echo(i), None).await })
            })
            .collect();
        let mut largest = 0;
        for (i, task) in tasks.into_iter().enumerate() {
            let done = task.await.unwrap().unwrap();
            assert_eq!(done.output, 2 * i as i64, "each caller gets its own answer");
            assert!(done.stats.batch_size <= 8);
            largest = largest.max(done.stats.batch_size);
        }
        let sizes: Vec<usize> = h.batches.try_iter().map(|b| b.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 64, "every request ran exactly once");
        assert!(sizes.iter().all(|&s| s <= 8), "batch sizes {sizes:?}");
        assert!(largest > 1 && sizes.len() < 64, "batches formed: {sizes:?}");
    }

    #[tokio::test]
    async fn a_lone_request_waits_no_longer_than_the_queue_delay() {
        let delay = Duration::from_millis(30);
        let policy = BatchPolicy { max_batch_size: 32, max_queue_delay: delay, ..BatchPolicy::default() };
        let h = harness(policy, Duration::ZERO);
        let started = Instant::now();
        let done = h.batcher.submit(echo(7), None).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(done.output, 14);
        assert_eq!(done.stats.batch_size, 1);
        assert!(elapsed >= delay, "the batcher waited for company: {elapsed:?}");
        // No company ever comes: what matters is that the window ended it, not how promptly a
        // loaded machine woke the worker.
        assert!(elapsed < delay + Duration::from_secs(1), "and then ran alone: {elapsed:?}");
        assert!(done.stats.queue_time >= delay && done.stats.queue_time < delay + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_full_batch_runs_without_waiting_for_the_delay() {
        let policy =
            BatchPolicy { max_batch_size: 4, max_queue_delay: Duration::from_secs(10), ..BatchPolicy::default() };
        let h = harness(policy, Duration::ZERO);
        let started = Instant::now();
        let done = h.batcher.submit(Echo { value: 1, size: 4 }, None).await.unwrap();
        assert_eq!(done.stats.batch_size, 4);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_rejects_at_once() {
        let policy = BatchPolicy {
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
            queue_capacity: 2,
            ..BatchPolicy::default()
        };
        let h = harness(policy, Duration::from_millis(300));
        // One request occupies the worker, two fill the queue.
        let mut pending = Vec::new();
        for i in 0..3 {
            let batcher = Arc::clone(&h.batcher);
            pending.push(tokio::spawn(async move { batcher.submit(echo(i), None).await }));
            if i == 0 {
                while h.runs.load(Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        while h.batcher.queue_len() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let err = h.batcher.submit(echo(99), None).await.unwrap_err();
        // At once: the worker is still on its first request, and the queue is as it was.
        assert_eq!(h.runs.load(Ordering::SeqCst), 1, "refused without waiting for the worker");
        assert_eq!(h.batcher.queue_len(), 2);
        match err {
            InferError::Overloaded { retry_after, .. } => assert!(retry_after >= Duration::from_secs(1)),
            other => panic!("expected overload, got {other:?}"),
        }
        for task in pending {
            assert!(task.await.unwrap().is_ok(), "the queued requests still complete");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_request_is_not_run() {
        let policy = BatchPolicy { max_batch_size: 1, max_queue_delay: Duration::ZERO, ..BatchPolicy::default() };
        let h = harness(policy, Duration::from_millis(200));
        let batcher = Arc::clone(&h.batcher);
        let blocker = tokio::spawn(async move { batcher.submit(echo(1), None).await });
        while h.runs.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let deadline = Instant::now() + Duration::from_millis(50);
        let err = h.batcher.submit(echo(2), Some(deadline)).await.unwrap_err();
        assert_eq!(err, InferError::Timeout);
        blocker.await.unwrap().unwrap();
        // Give the worker a chance to (wrongly) run the expired job.
        h.batcher.submit(echo(3), None).await.unwrap();
        let seen: Vec<i64> = h.batches.try_iter().flatten().collect();
        assert_eq!(seen, vec![1, 3], "the expired request never reached the model");
    }

    #[tokio::test]
    async fn a_deadline_already_past_is_rejected_without_queueing() {
        let h = harness(BatchPolicy::default(), Duration::ZERO);
        let err = h.batcher.submit(echo(1), Some(Instant::now())).await.unwrap_err();
        assert_eq!(err, InferError::Timeout);
        assert_eq!(h.batcher.queue_len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_panicking_model_fails_only_its_batch() {
        let policy = BatchPolicy { max_batch_size: 1, max_queue_delay: Duration::ZERO, ..BatchPolicy::default() };
        let h = harness(policy, Duration::ZERO);
        let err = h.batcher.submit(echo(-1), None).await.unwrap_err();
        match err {
            InferError::Internal(message) => assert!(message.contains("asked to panic"), "{message}"),
            other => panic!("expected an internal error, got {other:?}"),
        }
        for i in 0..5 {
            assert_eq!(h.batcher.submit(echo(i), None).await.unwrap().output, 2 * i, "the worker keeps serving");
        }
    }

    /// A request of one sequence of this many tokens.
    struct Tokens(usize);

    impl BatchItem for Tokens {
        fn tokens(&self) -> TokenCount {
            TokenCount { longest: self.0, total: self.0 }
        }
    }

    /// A model that reports each batch's cost in tokens as its layout computes them.
    struct Count(mpsc::Sender<usize>, TokenLayout);

    impl BatchModel for Count {
        type Request = Tokens;
        type Response = ();
        fn run_batch(&mut self, requests: Vec<Tokens>) -> Result<Vec<()>, InferError> {
            let longest = requests.iter().map(|r| r.0).max().unwrap_or(0);
            let total = requests.iter().map(|r| r.0).sum::<usize>();
            let _ = self.0.send(match self.1 {
                TokenLayout::Padded => longest * requests.len(),
                TokenLayout::Ragged => total,
            });
            Ok(vec![(); requests.len()])
        }
        fn token_layout(&self) -> TokenLayout {
            self.1
        }
    }

    /// Submits requests of these lengths together and returns the cost of each batch formed.
    async fn batch_costs(layout: TokenLayout, lengths: &[usize]) -> Vec<usize> {
        let (tx, rx) = mpsc::channel();
        let policy = BatchPolicy {
            max_batch_size: 100,
            max_batch_tokens: Some(64),
            // Long enough for every request to arrive while the first waits: a batch that
            // spends the budget runs at once.
            max_queue_delay: Duration::from_millis(200),
            ..BatchPolicy::default()
        };
        let batcher =
            Arc::new(Batcher::spawn("tokens", Count(tx, layout), policy, Metrics::new().batcher("t")).unwrap());
        let tasks: Vec<_> = lengths
            .iter()
            .map(|&tokens| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { batcher.submit(Tokens(tokens), None).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        rx.try_iter().collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_token_budget_counts_padded_tokens_for_a_padded_engine() {
        let costs = batch_costs(TokenLayout::Padded, &[10, 30, 20, 5, 16, 16, 16, 16]).await;
        assert!(costs.iter().all(|&c| c <= 64), "padded tokens per batch {costs:?}");
        // A single request over the budget still runs, alone.
        assert_eq!(batch_costs(TokenLayout::Padded, &[100]).await, vec![100]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_token_budget_counts_real_tokens_for_a_ragged_engine() {
        // 60 and 4 tokens: 64 computed tokens laid end to end, the whole budget; padded, 120.
        assert_eq!(batch_costs(TokenLayout::Ragged, &[60, 4]).await, vec![64]);
        let mut padded = batch_costs(TokenLayout::Padded, &[60, 4]).await;
        padded.sort_unstable();
        assert_eq!(padded, vec![4, 60]);
        let lengths = [60, 1, 1, 1, 1, 30, 30, 2];
        let costs = batch_costs(TokenLayout::Ragged, &lengths).await;
        assert!(costs.iter().all(|&c| c <= 64), "real tokens per batch {costs:?}");
        assert_eq!(costs.iter().sum::<usize>(), lengths.iter().sum::<usize>(), "every request ran once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_runs_what_is_queued_and_refuses_the_rest() {
        let policy =
            BatchPolicy { max_batch_size: 2, max_queue_delay: Duration::from_secs(5), ..BatchPolicy::default() };
        let h = harness(policy, Duration::ZERO);
        let batcher = Arc::clone(&h.batcher);
        let pending = tokio::spawn(async move { batcher.submit(echo(21), None).await });
        while h.batcher.queue_len() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        h.batcher.close();
        assert_eq!(pending.await.unwrap().unwrap().output, 42);
        assert!(started.elapsed() < Duration::from_secs(1), "closing cut the batch window short");
        let err = h.batcher.submit(echo(1), None).await.unwrap_err();
        assert_eq!(err, InferError::ShuttingDown);
    }

    #[tokio::test]
    async fn a_deadline_inside_the_window_does_not_wait_for_company() {
        let policy =
            BatchPolicy { max_batch_size: 8, max_queue_delay: Duration::from_secs(5), ..BatchPolicy::default() };
        let h = harness(policy, Duration::ZERO);
        let started = Instant::now();
        let done = h.batcher.submit(echo(4), Some(started + Duration::from_secs(1))).await.unwrap();
        assert_eq!(done.output, 8, "answered before its deadline, not timed out waiting for the window");
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_requests_do_not_hold_queue_places() {
        let policy = BatchPolicy {
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
            queue_capacity: 1,
            ..BatchPolicy::default()
        };
        let h = harness(policy, Duration::from_millis(300));
        let batcher = Arc::clone(&h.batcher);
        let busy = tokio::spawn(async move { batcher.submit(echo(1), None).await });
        while h.runs.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A caller queues, then gives up (its future is dropped) while the worker is busy.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), h.batcher.submit(echo(2), None)).await;
        assert!(gave_up.is_err());
        assert_eq!(h.batcher.queue_len(), 1);
        // Its place is free for the next caller.
        assert_eq!(h.batcher.submit(echo(3), None).await.unwrap().output, 6);
        busy.await.unwrap().unwrap();
        let seen: Vec<i64> = h.batches.try_iter().flatten().collect();
        assert_eq!(seen, vec![1, 3], "the abandoned request never ran");
    }

    /// A model that takes 100 ms per batch of one, except that a request of value 0 waits
    /// for the gate to open.
    struct Gated {
        gate: mpsc::Receiver<()>,
        runs: Arc<AtomicUsize>,
    }

    impl BatchModel for Gated {
        type Request = Echo;
        type Response = i64;

        fn run_batch(&mut self, requests: Vec<Echo>) -> Result<Vec<i64>, InferError> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if requests.iter().any(|r| r.value == 0) {
                let _ = self.gate.recv();
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(requests.iter().map(|r| r.value).collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_would_wait_too_long_is_refused_and_admitted_when_it_retries() {
        let (open, gate) = mpsc::channel();
        let runs = Arc::new(AtomicUsize::new(0));
        let metrics = Metrics::new();
        let policy =
            BatchPolicy { max_batch_size: 1, max_queue_time: Duration::from_millis(250), ..BatchPolicy::default() };
        let model = Gated { gate, runs: Arc::clone(&runs) };
        let batcher = Arc::new(Batcher::spawn("paced", model, policy, metrics.batcher("paced")).unwrap());
        // One request teaches the batcher the model's speed: about 100 ms per item.
        batcher.submit(echo(1), None).await.unwrap();
        assert!(metrics.render().contains(r#"inferd_admission_limit{model="paced"} 2"#), "{}", metrics.render());
        // A held request occupies the worker past its expected time, so that nothing of it
        // counts; then three queue: they wait about 0, 100 and 200 ms.
        let held = {
            let batcher = Arc::clone(&batcher);
            tokio::spawn(async move { batcher.submit(echo(0), None).await })
        };
        while runs.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut queued = Vec::new();
        for value in 2..5 {
            let submitter = Arc::clone(&batcher);
            queued.push(tokio::spawn(async move { submitter.submit(echo(value), None).await }));
            while batcher.queue_len() < (value - 1) as usize {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // A fourth would wait about 300 ms, over the 250 ms target: refused at once.
        let err = batcher.submit(echo(5), None).await.unwrap_err();
        let InferError::Overloaded { cause: Overload::QueueTime { expected_wait, target }, retry_after, .. } = err
        else {
            panic!("expected a queue-time refusal, got {err:?}");
        };
        assert!(expected_wait > target && expected_wait < Duration::from_millis(400), "{expected_wait:?}");
        assert_eq!(retry_after, Duration::from_secs(1));
        // The work ahead drains; retrying after Retry-After is admitted.
        open.send(()).unwrap();
        tokio::time::sleep(retry_after).await;
        assert_eq!(batcher.submit(echo(5), None).await.unwrap().output, 5);
        held.await.unwrap().unwrap();
        for task in queued {
            task.await.unwrap().unwrap();
        }
    }

    /// A model that takes this long per batch and answers with the name of the thread it ran on.
    struct WhereAmI(Duration);

    impl BatchModel for WhereAmI {
        type Request = Echo;
        type Response = String;

        fn run_batch(&mut self, requests: Vec<Echo>) -> Result<Vec<String>, InferError> {
            std::thread::sleep(self.0);
            let name = std::thread::current().name().unwrap_or_default().to_string();
            Ok(requests.iter().map(|_| name.clone()).collect())
        }
    }

    #[tokio::test]
    async fn a_cheap_request_on_an_idle_model_runs_on_the_callers_thread() {
        let spawn = |name: &str, cost: Duration, policy: BatchPolicy| {
            Batcher::spawn(name, WhereAmI(cost), policy, Metrics::new().batcher(name)).unwrap()
        };
        let caller = std::thread::current().name().map(str::to_string);
        let cheap = spawn("cheap", Duration::ZERO, BatchPolicy::default());
        // The first batch, before the model's cost is known, runs on the worker; then inline.
        assert_eq!(cheap.submit(echo(1), None).await.unwrap().output, "inferd-batch-cheap");
        for value in 2..5 {
            let done = cheap.submit(echo(value), None).await.unwrap();
            assert_eq!(Some(done.output), caller);
            assert_eq!(done.stats.batch_size, 1);
        }
        // A model slower than the hand-off, or a policy that asks for a batch window: never.
        let slow = spawn("slow", Duration::from_millis(2), BatchPolicy::default());
        let window = BatchPolicy { max_queue_delay: Duration::from_millis(1), ..BatchPolicy::default() };
        let windowed = spawn("windowed", Duration::ZERO, window);
        for _ in 0..3 {
            assert_eq!(slow.submit(echo(1), None).await.unwrap().output, "inferd-batch-slow");
            assert_eq!(windowed.submit(echo(1), None).await.unwrap().output, "inferd-batch-windowed");
        }
    }

    /// Requests that find a cheap batch running wake nobody: the thread running it takes them
    /// when it ends. None may be left waiting for a wake-up that never comes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_queued_behind_a_running_batch_are_all_answered() {
        let batcher = Arc::new(
            Batcher::spawn("busy", WhereAmI(Duration::ZERO), BatchPolicy::default(), Metrics::new().batcher("busy"))
                .unwrap(),
        );
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move {
                    let mut inline = 0;
                    for value in 0..2_000 {
                        let done = batcher.submit(echo(task * 10_000 + value), None).await.unwrap();
                        inline += usize::from(!done.output.starts_with("inferd-batch"));
                    }
                    inline
                })
            })
            .collect();
        let mut inline = 0;
        for task in tasks {
            inline += tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("a request was never answered")
                .unwrap();
        }
        // How many ran inline depends on the machine's timing (a preempted batch looks costly
        // for a while); that some did shows the path under test was taken.
        assert!(inline > 0, "none of the 16,000 ran on a caller's thread");
        assert_eq!(batcher.queue_len(), 0);
    }

    #[test]
    fn invalid_policies_are_refused() {
        let invalid = [
            BatchPolicy { max_batch_size: 0, ..BatchPolicy::default() },
            BatchPolicy { queue_capacity: 0, ..BatchPolicy::default() },
            BatchPolicy { max_batch_tokens: Some(0), ..BatchPolicy::default() },
            BatchPolicy { max_queue_delay: Duration::from_secs(3600), ..BatchPolicy::default() },
            BatchPolicy { max_queue_time: Duration::ZERO, ..BatchPolicy::default() },
        ];
        for policy in invalid {
            assert!(policy.validate().is_err(), "{policy:?}");
        }
    }
}
