//! Where a request's time went: the stages `parse`, `tokenize`, `queue`, `compute` and
//! `serialize`, recorded by handlers and reported by the observing middleware as a
//! `Server-Timing` header, as histograms, in the request's log line and as trace spans.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use inferd_core::BatchStats;

/// A stage of serving an inference request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Reading and decoding the request body.
    Parse,
    /// Turning texts into token ids.
    Tokenize,
    /// Waiting in the model's queue for a batch.
    Queue,
    /// Running the batch through the model.
    Compute,
    /// Encoding the response body.
    Serialize,
}

impl Stage {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::Tokenize => "tokenize",
            Self::Queue => "queue",
            Self::Compute => "compute",
            Self::Serialize => "serialize",
        }
    }
}

/// One stage as it happened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StageSpan {
    pub(crate) stage: Stage,
    pub(crate) start: Instant,
    pub(crate) duration: Duration,
}

#[derive(Debug)]
struct Inner {
    /// The end of the last stage recorded (at first, when the request arrived).
    cursor: Instant,
    stages: Vec<StageSpan>,
    batch_size: Option<usize>,
    deadline: Option<Instant>,
}

/// A request's clock: its deadline and its stages, shared between the middleware (which creates it when the request
/// arrives and reads it when the response leaves) and the handler (which marks the stages).
#[derive(Debug, Clone)]
pub(crate) struct Timing(Arc<Mutex<Inner>>);

impl Timing {
    pub(crate) fn start(at: Instant) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            cursor: at,
            stages: Vec::with_capacity(5),
            batch_size: None,
            deadline: None,
        })))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `stage` as lasting from the end of the previous stage until now.
    pub(crate) fn mark(&self, stage: Stage) {
        let now = Instant::now();
        let mut inner = self.inner();
        let start = inner.cursor;
        inner.stages.push(StageSpan { stage, start, duration: now.saturating_duration_since(start) });
        inner.cursor = now;
    }

    /// Records a batch's queue and compute stages, which ended now.
    pub(crate) fn batch(&self, stats: &BatchStats) {
        let now = Instant::now();
        let mut inner = self.inner();
        let compute_start = now.checked_sub(stats.compute_time).unwrap_or(now);
        let queue_start = compute_start.checked_sub(stats.queue_time).unwrap_or(compute_start);
        inner.stages.push(StageSpan { stage: Stage::Queue, start: queue_start, duration: stats.queue_time });
        inner.stages.push(StageSpan { stage: Stage::Compute, start: compute_start, duration: stats.compute_time });
        inner.batch_size = Some(stats.batch_size);
        inner.cursor = now;
    }

    /// Sets when the request must be answered by (the guard does, from `request_timeout`).
    pub(crate) fn set_deadline(&self, deadline: Instant) {
        self.inner().deadline = Some(deadline);
    }

    /// When the request must be answered by, if it has a deadline: handlers pass it on to the
    /// batcher, which drops a request still queued at its deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.inner().deadline
    }

    /// The stages recorded so far, in order.
    pub(crate) fn stages(&self) -> Vec<StageSpan> {
        self.inner().stages.clone()
    }

    /// The size of the batch that answered the request, if one did.
    pub(crate) fn batch_size(&self) -> Option<usize> {
        self.inner().batch_size
    }
}

/// `duration` in milliseconds rounded to the microsecond, for logs: `0.076`, not
/// `0.07552500000000001`.
pub(crate) fn millis(duration: Duration) -> f64 {
    ((duration.as_nanos() + 500) / 1000) as f64 / 1000.0
}

/// The `Server-Timing` header value: `parse;dur=0.120, queue;dur=1.500, ...` in milliseconds.
pub(crate) fn server_timing(stages: &[StageSpan]) -> String {
    let mut header = String::with_capacity(24 * stages.len());
    let mut digits = itoa::Buffer::new();
    for (index, span) in stages.iter().enumerate() {
        // Milliseconds to three decimals, rounded, in integer arithmetic: float formatting, then
        // 128-bit integer formatting, were most of this header's cost.
        let micros = u64::try_from((span.duration.as_nanos() + 500) / 1000).unwrap_or(u64::MAX);
        if index > 0 {
            header.push_str(", ");
        }
        header.push_str(span.stage.name());
        header.push_str(";dur=");
        header.push_str(digits.format(micros / 1000));
        let fraction = micros % 1000;
        header.push('.');
        header.push(char::from(b'0' + (fraction / 100) as u8));
        header.push(char::from(b'0' + (fraction / 10 % 10) as u8));
        header.push(char::from(b'0' + (fraction % 10) as u8));
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_one_another() {
        let timing = Timing::start(Instant::now());
        timing.mark(Stage::Parse);
        timing.batch(&BatchStats {
            batch_size: 4,
            batch_requests: 2,
            queue_time: Duration::from_millis(2),
            compute_time: Duration::from_millis(3),
        });
        timing.mark(Stage::Serialize);
        let stages = timing.stages();
        let names: Vec<_> = stages.iter().map(|s| s.stage.name()).collect();
        assert_eq!(names, ["parse", "queue", "compute", "serialize"]);
        assert_eq!(stages[2].start, stages[1].start + Duration::from_millis(2));
        let header = server_timing(&stages);
        assert!(header.contains("queue;dur=2.000, compute;dur=3.000"), "{header}");
        let odd =
            [StageSpan { stage: Stage::Parse, start: stages[0].start, duration: Duration::from_nanos(12_345_678) }];
        assert_eq!(server_timing(&odd), "parse;dur=12.346");
        assert_eq!(timing.batch_size(), Some(4));
    }
}
