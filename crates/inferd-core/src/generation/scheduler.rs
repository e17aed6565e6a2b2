//! The continuous-batching scheduler: one OS thread per generative model.
//!
//! The thread keeps a running batch of sequences, each with its own key/value cache. Every step
//! it (1) drops sequences whose caller went away (and queued requests whose deadline passed
//! before they could start), (2) admits queued
//! requests, oldest first, while the batch has room by `max_running_sequences`, the key/value
//! budget `max_total_tokens` (prompt + `max_tokens` of every running sequence) and the step's
//! `max_prefill_tokens`, (3) runs one forward pass over all of them (new sequences feed their
//! prompt, running ones their last token), and (4) samples one token per sequence and sends it.
//! A sequence leaves the batch at a stop token, at `max_tokens`, or when cancelled; its place
//! is free for the next step.
//!
//! A request reserves its whole budget when it joins, so a running sequence never has to be
//! preempted for memory. A panic inside the model fails the sequences of that step (their
//! caches may be half written) and the thread goes on.
//!
//! The queue in front of the running batch (its bound, admission by the expected wait for a
//! place, pruning, closing, the thread's safety) is [`crate::queue`]'s, shared with the batcher.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::{
    CausalLm, Event, FinishReason, GenerationInfo, GenerationRequest, Sampler, SchedulerPolicy, SequenceStep,
    TokenLogprobs,
};
use crate::admission::{MovingAverage, wait_for_place};
use crate::error::InferError;
use crate::metrics::BatchMetrics;
use crate::queue::{Backlog, Waiting, WorkQueue, guarded};

struct Job {
    request: GenerationRequest,
    max_tokens: usize,
    enqueued: Instant,
    events: UnboundedSender<Event>,
}

impl Waiting for Job {
    fn items(&self) -> usize {
        1
    }

    fn deadline(&self) -> Option<Instant> {
        self.request.deadline
    }

    fn abandoned(&self) -> bool {
        self.events.is_closed()
    }

    fn refuse(self, error: InferError) {
        let _ = self.events.send(Event::Failed(error));
    }
}

/// The running batch's occupancy and pace: how long a queued request waits for a place.
struct Places {
    max_running: usize,
    /// Sequences in the running batch.
    running: usize,
    /// Seconds a sequence stays in the batch, on average.
    sequence_seconds: MovingAverage,
}

impl Places {
    /// How long sequences stay in the running batch, on average; `None` before one finished.
    fn sequence_time(&self) -> Option<Duration> {
        self.sequence_seconds.value().map(Duration::from_secs_f64)
    }
}

impl Backlog for Places {
    fn expected_wait(&self, requests: usize, _items: usize, _now: Instant) -> Duration {
        wait_for_place(requests, self.running, self.max_running, self.sequence_time())
    }
}

type Queue = WorkQueue<Job, Places>;

/// The queue in front of a model's scheduler thread.
pub(super) struct Scheduler {
    queue: Arc<Queue>,
}

impl Scheduler {
    /// Starts the scheduler thread for `model`.
    pub(super) fn spawn<M: CausalLm>(
        name: &str,
        model: M,
        info: GenerationInfo,
        policy: SchedulerPolicy,
        metrics: BatchMetrics,
    ) -> Result<Self, String> {
        let places = Places {
            max_running: policy.max_running_sequences,
            running: 0,
            sequence_seconds: MovingAverage::default(),
        };
        let queue = Arc::new(WorkQueue::new(
            name,
            policy.max_queued_requests,
            policy.max_queue_time,
            places,
            metrics.queue_depth.clone(),
        ));
        let worker = Worker { policy, metrics, model, info, running: Vec::new(), reserved: 0 };
        queue.spawn_worker(format!("inferd-generate-{name}"), move |queue| worker.run(queue))?;
        Ok(Self { queue })
    }

    /// Queues a checked request, or refuses it when the queue is full or closed, or when it
    /// would wait longer than `max_queue_time` for a place in the running batch.
    pub(super) fn enqueue(
        &self,
        request: GenerationRequest,
        max_tokens: usize,
        events: UnboundedSender<Event>,
    ) -> Result<(), InferError> {
        let now = Instant::now();
        self.queue.push(Job { request, max_tokens, enqueued: now, events }, now)
    }

    /// Whether a request queued now would be admitted, by the same bounds as `enqueue`.
    pub(super) fn check_admission(&self) -> Result<(), InferError> {
        self.queue.check_admission(Instant::now())
    }

    /// Refuses new requests; what is queued and running finishes.
    pub(super) fn close(&self) {
        self.queue.close();
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.close();
    }
}

/// A sequence in the running batch.
struct Sequence<C> {
    cache: C,
    /// Tokens to feed at the next step: the prompt first, then the last sampled token.
    feed: Vec<u32>,
    sampler: Sampler,
    generated: usize,
    max_tokens: usize,
    /// Its share of the key/value budget.
    reserved: usize,
    ignore_eos: bool,
    started: Instant,
    events: UnboundedSender<Event>,
    /// Set once the sequence has ended (and its last event was sent).
    done: bool,
}

struct Worker<M: CausalLm> {
    policy: SchedulerPolicy,
    metrics: BatchMetrics,
    model: M,
    info: GenerationInfo,
    running: Vec<Sequence<M::Cache>>,
    /// Key/value tokens reserved by the running sequences.
    reserved: usize,
}

impl<M: CausalLm> Worker<M> {
    fn run(mut self, queue: &Queue) {
        while self.admit(queue) {
            self.step(queue.model());
            self.retire(queue);
        }
        self.metrics.running.set(0);
    }

    /// Moves queued requests into the batch while they fit; waits while there is nothing to
    /// do. Returns false when closed with nothing left.
    fn admit(&mut self, queue: &Queue) -> bool {
        let mut lane = queue.lock();
        loop {
            // Callers that left, or whose deadline passed, while queued.
            lane.prune(Instant::now());
            let mut prefill = 0;
            let mut admitted = 0;
            for job in lane.entries() {
                let prompt = job.request.prompt.len();
                let need = prompt + job.max_tokens;
                let fits = self.running.len() + admitted < self.policy.max_running_sequences
                    && self.reserved + need <= self.policy.max_total_tokens
                    && (prefill == 0 || prefill + prompt <= self.policy.max_prefill_tokens);
                if !fits {
                    break;
                }
                prefill += prompt;
                self.reserved += need;
                admitted += 1;
            }
            for job in lane.take(admitted) {
                self.start(job);
            }
            lane.backlog.running = self.running.len();
            self.metrics.batch_started(self.running.len());
            if !self.running.is_empty() {
                return true;
            }
            if lane.is_closed() && lane.entries().is_empty() {
                return false;
            }
            lane = queue.wait(lane);
        }
    }

    /// Starts `job`'s sequence; its key/value budget is already counted in `reserved`.
    fn start(&mut self, job: Job) {
        let queue_time = job.enqueued.elapsed();
        self.metrics.queue_duration.observe(queue_time.as_secs_f64());
        let sampler = Sampler::new(job.request.sampling, &job.request.prompt);
        let sequence = Sequence {
            cache: self.model.new_cache(),
            reserved: job.request.prompt.len() + job.max_tokens,
            feed: job.request.prompt,
            sampler,
            generated: 0,
            max_tokens: job.max_tokens,
            ignore_eos: job.request.ignore_eos,
            started: Instant::now(),
            events: job.events,
            done: false,
        };
        // A caller gone already is dropped at the next retire.
        let _ = sequence.events.send(Event::Started { queue_time });
        self.running.push(sequence);
    }

    /// One forward pass over every running sequence, and one token for each.
    fn step(&mut self, name: &str) {
        for sequence in &mut self.running {
            if sequence.events.is_closed() {
                sequence.done = true;
            }
        }
        let active: Vec<usize> = (0..self.running.len()).filter(|&i| !self.running[i].done).collect();
        if active.is_empty() {
            return;
        }
        let started = Instant::now();
        let outcome = {
            let mut batch: Vec<SequenceStep<'_, M::Cache>> = self
                .running
                .iter_mut()
                .filter(|sequence| !sequence.done)
                .map(|sequence| SequenceStep { cache: &mut sequence.cache, tokens: &sequence.feed })
                .collect();
            let model = &mut self.model;
            guarded(name, || model.forward(&mut batch))
        };
        self.metrics.observe_step(active.len(), started.elapsed());
        let logits = match outcome {
            Ok(logits) if logits.len() == active.len() => logits,
            Ok(logits) => {
                let message = format!("model returned {} results for {} sequences", logits.len(), active.len());
                return self.fail(name, &active, InferError::Internal(message));
            }
            Err(err) => return self.fail(name, &active, err),
        };
        let draws = {
            let samplers = self.running.iter_mut().filter(|sequence| !sequence.done).map(|s| &mut s.sampler);
            sample_all(samplers.zip(logits).collect())
        };
        for (&index, (id, logprobs)) in active.iter().zip(draws) {
            let sequence = &mut self.running[index];
            sequence.generated += 1;
            if !sequence.ignore_eos && self.info.stop_ids.contains(&id) {
                let _ = sequence.events.send(Event::Finished { reason: FinishReason::Stop });
                sequence.done = true;
                continue;
            }
            let _ = sequence.events.send(Event::Token { id, logprobs });
            if sequence.generated >= sequence.max_tokens {
                let _ = sequence.events.send(Event::Finished { reason: FinishReason::Length });
                sequence.done = true;
            } else {
                sequence.feed.clear();
                sequence.feed.push(id);
            }
        }
    }

    /// Fails every active sequence of a step that went wrong.
    fn fail(&mut self, name: &str, active: &[usize], err: InferError) {
        tracing::error!(model = %name, error = %err, "generation step failed");
        for &index in active {
            let sequence = &mut self.running[index];
            let _ = sequence.events.send(Event::Failed(err.clone()));
            sequence.done = true;
        }
    }

    /// Frees the places of sequences that ended, and learns how long they stayed.
    fn retire(&mut self, queue: &Queue) {
        if !self.running.iter().any(|sequence| sequence.done) {
            return;
        }
        let mut lane = queue.lock();
        let mut freed = 0;
        self.running.retain(|sequence| {
            if sequence.done {
                freed += sequence.reserved;
                lane.backlog.sequence_seconds.observe(sequence.started.elapsed().as_secs_f64());
            }
            !sequence.done
        });
        self.reserved -= freed;
        lane.backlog.running = self.running.len();
        self.metrics.batch_started(self.running.len());
        if let Some(time) = lane.backlog.sequence_time() {
            // Places free at max_running per sequence time; this many can wait within the target.
            let places = self.policy.max_queue_time.as_secs_f64() * self.policy.max_running_sequences as f64
                / time.as_secs_f64();
            self.metrics.admission_limit.set(places.floor().min(i64::MAX as f64) as i64);
        }
    }
}

/// Each sequence's next token, in order.
///
/// Sampling at a temperature (or with logprobs) goes over the whole vocabulary several times
/// per sequence (weights, their sum and the draw; or the log-sum-exp and the best tokens), on
/// this thread while the model's threads wait for the next step. When two or more sequences
/// need it, every other sequence is sampled on a second thread. Each sampler draws from its
/// own random source, so the tokens do not depend on the thread.
fn sample_all(mut draws: Vec<(&mut Sampler, Vec<f32>)>) -> Vec<(u32, Option<TokenLogprobs>)> {
    let sample = |(sampler, logits): &mut (&mut Sampler, Vec<f32>)| sampler.sample(logits);
    if draws.iter().filter(|(sampler, _)| sampler.is_costly()).count() < 2 {
        return draws.iter_mut().map(sample).collect();
    }
    let (mut mine, mut theirs): (Vec<_>, Vec<_>) = draws.iter_mut().enumerate().partition(|(i, _)| i % 2 == 0);
    let (mine, helped) = std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("inferd-sample".into())
            .spawn_scoped(scope, || theirs.iter_mut().map(|(_, draw)| sample(draw)).collect::<Vec<_>>());
        let mine: Vec<_> = mine.iter_mut().map(|(_, draw)| sample(draw)).collect();
        // A panic in the helper is passed on, as one on this thread would be.
        (mine, helper.ok().map(|helper| helper.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))))
    });
    // No thread to be had: this one samples the rest too.
    let theirs = helped.unwrap_or_else(|| theirs.iter_mut().map(|(_, draw)| sample(draw)).collect());
    // Even positions from this thread, odd ones from the helper.
    let mut theirs = theirs.into_iter();
    mine.into_iter().flat_map(|draw| std::iter::once(draw).chain(theirs.next())).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::error::Overload;
    use crate::generation::{GenerationService, SamplingParams, TextCodec};
    use crate::metrics::Metrics;

    /// A model whose next token is (last token + 1) mod 10, or 9 (the stop token) after 5; it
    /// records how many sequences each step ran.
    struct Counter {
        steps: Arc<Mutex<Vec<usize>>>,
        panics_on: Option<u32>,
    }

    impl CausalLm for Counter {
        type Cache = Vec<u32>;

        fn new_cache(&self) -> Vec<u32> {
            Vec::new()
        }

        fn forward(&mut self, batch: &mut [SequenceStep<'_, Vec<u32>>]) -> Result<Vec<Vec<f32>>, InferError> {
            self.steps.lock().unwrap().push(batch.len());
            std::thread::sleep(Duration::from_millis(2));
            Ok(batch
                .iter_mut()
                .map(|step| {
                    step.cache.extend_from_slice(step.tokens);
                    let last = *step.cache.last().unwrap();
                    if Some(last) == self.panics_on {
                        panic!("boom");
                    }
                    let mut logits = vec![0.0; 10];
                    logits[if last == 5 { 9 } else { (last as usize + 1) % 10 }] = 1.0;
                    logits
                })
                .collect())
        }
    }

    struct NoText;

    impl TextCodec for NoText {
        fn render_chat(&self, _: &[crate::generation::ChatMessage]) -> Result<String, InferError> {
            Ok(String::new())
        }
        fn encode(&self, _: &str, _: bool) -> Result<Vec<u32>, InferError> {
            Ok(vec![])
        }
        fn decode(&self, _: &[u32]) -> String {
            String::new()
        }
        fn token_bytes(&self, _: u32) -> Vec<u8> {
            vec![]
        }
    }

    fn service(policy: SchedulerPolicy, panics_on: Option<u32>) -> (GenerationService, Arc<Mutex<Vec<usize>>>) {
        let steps = Arc::new(Mutex::new(Vec::new()));
        let info = GenerationInfo { platform: "test".into(), context_length: 64, vocab_size: 10, stop_ids: vec![9] };
        let model = Counter { steps: Arc::clone(&steps), panics_on };
        let metrics = Metrics::new().batcher("m");
        (GenerationService::start("m", info, Arc::new(NoText), model, policy, metrics).unwrap(), steps)
    }

    fn request(prompt: Vec<u32>, max_tokens: Option<usize>) -> GenerationRequest {
        GenerationRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
            ignore_eos: false,
            deadline: None,
        }
    }

    async fn collect(mut stream: crate::generation::GenerationStream) -> (Vec<u32>, Option<Event>) {
        let mut ids = Vec::new();
        while let Some(event) = stream.next().await {
            match event {
                Event::Started { .. } => {}
                Event::Token { id, .. } => ids.push(id),
                last => return (ids, Some(last)),
            }
        }
        (ids, None)
    }

    #[test]
    fn sequences_sampled_on_two_threads_draw_as_they_would_one_by_one() {
        // Five seeded sequences (three at a temperature, one greedy, one greedy with logprobs):
        // four are costly, so every other one is sampled on the helper thread.
        let params = [
            SamplingParams { temperature: 0.8, seed: Some(1), ..SamplingParams::default() },
            SamplingParams { temperature: 0.0, ..SamplingParams::default() },
            SamplingParams { temperature: 1.2, top_p: 0.9, seed: Some(2), ..SamplingParams::default() },
            SamplingParams { temperature: 0.0, logprobs: Some(3), ..SamplingParams::default() },
            SamplingParams { temperature: 0.5, top_k: 7, seed: Some(3), ..SamplingParams::default() },
        ];
        let logits: Vec<Vec<f32>> =
            (0..5).map(|s| (0..1000).map(|i| ((i * 7 + s * 13) % 97) as f32 * 0.05).collect()).collect();
        let mut alone: Vec<Sampler> = params.iter().map(|p| Sampler::new(p.clone(), &[])).collect();
        let mut together = alone.clone();
        for _ in 0..3 {
            let expected: Vec<_> = alone.iter_mut().zip(&logits).map(|(s, l)| s.sample(&mut l.clone())).collect();
            let draws = sample_all(together.iter_mut().zip(logits.iter().cloned()).collect());
            assert_eq!(draws, expected);
        }
    }

    #[tokio::test]
    async fn sequences_stop_at_the_stop_token_or_max_tokens() {
        let (service, _) = service(SchedulerPolicy::default(), None);
        let (ids, last) = collect(service.submit(request(vec![1, 2], None)).unwrap()).await;
        assert_eq!(ids, vec![3, 4, 5]);
        assert_eq!(last, Some(Event::Finished { reason: FinishReason::Stop }));
        let (ids, last) = collect(service.submit(request(vec![6], Some(2))).unwrap()).await;
        assert_eq!(ids, vec![7, 8]);
        assert_eq!(last, Some(Event::Finished { reason: FinishReason::Length }));
    }

    #[tokio::test]
    async fn concurrent_sequences_share_steps_and_each_gets_its_own_tokens() {
        let (service, steps) = service(SchedulerPolicy::default(), None);
        let streams: Vec<_> = (0..4).map(|start| service.submit(request(vec![start], Some(4))).unwrap()).collect();
        let mut results = Vec::new();
        for stream in streams {
            results.push(collect(stream).await.0);
        }
        assert_eq!(results[0], vec![1, 2, 3, 4]);
        assert_eq!(results[3], vec![4, 5]);
        assert!(steps.lock().unwrap().iter().any(|&n| n >= 2), "{:?}", steps.lock().unwrap());
    }

    #[tokio::test]
    async fn bounds_are_kept_and_a_full_queue_is_refused() {
        let policy = SchedulerPolicy { max_running_sequences: 2, max_queued_requests: 1, ..SchedulerPolicy::default() };
        let (service, steps) = service(policy, None);
        let mut streams = Vec::new();
        let mut refused = 0;
        for _ in 0..8 {
            match service.submit(request(vec![0], Some(30))) {
                Ok(stream) => streams.push(stream),
                Err(InferError::Overloaded { retry_after, .. }) => {
                    assert!(retry_after >= Duration::from_secs(1));
                    refused += 1;
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert!(refused >= 5, "{refused}");
        for stream in streams {
            collect(stream).await;
        }
        assert!(steps.lock().unwrap().iter().all(|&n| n <= 2));
    }

    #[tokio::test]
    async fn a_request_that_would_wait_too_long_for_a_place_is_refused() {
        let policy = SchedulerPolicy {
            max_running_sequences: 1,
            max_queue_time: Duration::from_millis(1),
            ..SchedulerPolicy::default()
        };
        let (service, _) = service(policy, None);
        // Before any sequence finished the wait is unknown, so nothing is refused for it; one
        // sequence of four steps (2 ms each) teaches the scheduler how long sequences take.
        collect(service.submit(request(vec![1], None)).unwrap()).await;
        let cycling = GenerationRequest { ignore_eos: true, ..request(vec![0], Some(60)) };
        let mut long = service.submit(cycling).unwrap();
        assert!(matches!(long.next().await, Some(Event::Started { .. })));
        // The one place is taken; waiting for it would take about one sequence time, over 1 ms.
        match service.submit(request(vec![1], None)) {
            Err(InferError::Overloaded { cause: Overload::QueueTime { expected_wait, .. }, retry_after, .. }) => {
                assert!(expected_wait > Duration::from_millis(1), "{expected_wait:?}");
                assert_eq!(retry_after, Duration::from_secs(1));
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("admitted although the batch was full"),
        }
        // Once the place is free (the scheduler frees it right after the last token), the same
        // request is admitted.
        collect(long).await;
        let started = Instant::now();
        let admitted = loop {
            match service.submit(request(vec![1], None)) {
                Ok(stream) => break stream,
                Err(InferError::Overloaded { .. }) if started.elapsed() < Duration::from_secs(5) => {
                    tokio::task::yield_now().await;
                }
                Err(other) => panic!("{other}"),
            }
        };
        assert_eq!(collect(admitted).await.0, vec![2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_dropped_stream_leaves_the_batch() {
        let (service, steps) = service(SchedulerPolicy::default(), None);
        let cycling = GenerationRequest { ignore_eos: true, ..request(vec![0], Some(60)) };
        let mut stream = service.submit(cycling).unwrap();
        assert!(matches!(stream.next().await, Some(Event::Started { .. })));
        assert!(matches!(stream.next().await, Some(Event::Token { .. })));
        drop(stream);
        // A request that arrives after the caller left runs alone: the first step after it
        // joined already found the dropped sequence gone.
        let (ids, _) = collect(service.submit(request(vec![1], Some(2))).unwrap()).await;
        assert_eq!(ids, vec![2, 3]);
        let steps = steps.lock().unwrap().clone();
        assert_eq!(steps[steps.len() - 2..], [1, 1], "steps went on with the dropped sequence: {steps:?}");
        assert!(steps.len() < 30, "{steps:?}");
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_queueing() {
        let (service, _) = service(SchedulerPolicy { max_total_tokens: 40, ..SchedulerPolicy::default() }, None);
        for (bad, needle) in [
            (request(vec![], None), "empty"),
            (request(vec![10], None), "outside the vocabulary"),
            (request(vec![1; 64], None), "context"),
            (request(vec![1], Some(0)), "at least 1"),
            (request(vec![1; 10], Some(60)), "at most 54"),
            (request(vec![1; 10], Some(40)), "budget"),
        ] {
            let err = service.submit(bad).err().unwrap();
            assert!(matches!(&err, InferError::InvalidInput(m) if m.contains(needle)), "{err}");
        }
    }

    #[tokio::test]
    async fn a_panicking_step_fails_its_sequences_and_the_scheduler_goes_on() {
        let (service, _) = service(SchedulerPolicy::default(), Some(7));
        let (_, last) = collect(service.submit(request(vec![7], None)).unwrap()).await;
        assert!(matches!(last, Some(Event::Failed(InferError::Internal(_)))), "{last:?}");
        let (ids, _) = collect(service.submit(request(vec![1], Some(2))).unwrap()).await;
        assert_eq!(ids, vec![2, 3]);
    }
}
