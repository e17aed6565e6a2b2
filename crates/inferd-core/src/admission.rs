//! Admission by expected queue time: a request joins a model's queue only if it would start
//! within the model's `max_queue_time`; otherwise it is refused at once, with a `Retry-After`
//! of when it would be admitted.
//!
//! The expected wait is the work queued ahead of the request at the speed the model has shown,
//! so the same target suits a tree model that answers in microseconds and an encoder that takes
//! tens of milliseconds per text, on any machine: no limit has to be computed by hand. The
//! batcher learns its model's speed per batch size ([`BatchCosts`]), since batching makes each
//! item cheaper on some devices; the generation scheduler learns how long sequences stay in its
//! running batch. Both decide with [`QueueTimeLimit`].

use std::time::Duration;

use crate::error::{InferError, Overload};

/// Batch-size classes: batches of 1, 2–3, 4–7, ..., 2^(BUCKETS-1) and more items.
const BUCKETS: usize = 17;

/// An exponentially weighted moving average: the one way inferd follows a measured pace (the
/// batcher's cost per item, the scheduler's time per sequence, the server's request time).
/// The newest sample weighs [`MovingAverage::SMOOTHING`]: about the last ten samples count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MovingAverage {
    value: Option<f64>,
}

impl MovingAverage {
    /// Weight of the newest sample.
    pub const SMOOTHING: f64 = 0.2;

    /// Folds in `sample`; the first sample is the average.
    pub fn observe(&mut self, sample: f64) {
        self.value = Some(match self.value {
            None => sample,
            Some(average) => (1.0 - Self::SMOOTHING) * average + Self::SMOOTHING * sample,
        });
    }

    /// The average; `None` before the first sample.
    pub fn value(&self) -> Option<f64> {
        self.value
    }
}

/// A model's measured compute time per item, by batch size (in powers of two), as moving
/// averages of the batches it ran.
#[derive(Debug, Clone, Default)]
pub struct BatchCosts {
    /// Seconds per item for each size class; empty where no batch of that size has run yet.
    seconds_per_item: [MovingAverage; BUCKETS],
}

fn bucket(items: usize) -> usize {
    (items.max(1).ilog2() as usize).min(BUCKETS - 1)
}

impl BatchCosts {
    /// Records that a batch of `items` took `compute`.
    pub fn observe(&mut self, items: usize, compute: Duration) {
        if items == 0 {
            return;
        }
        self.seconds_per_item[bucket(items)].observe(compute.as_secs_f64() / items as f64);
    }

    /// Seconds per item in a batch of `items`: that size class's average, else the nearest
    /// class measured (the smaller of two as near, which errs towards a longer wait); `None`
    /// before any batch ran.
    pub fn seconds_per_item(&self, items: usize) -> Option<f64> {
        let class = bucket(items);
        (0..BUCKETS)
            .filter_map(|i| Some((i, self.seconds_per_item[i].value()?)))
            .min_by_key(|&(i, _)| (i.abs_diff(class), i))
            .map(|(_, seconds)| seconds)
    }

    /// How long `items` queued take to compute, in batches of at most `max_batch_size`; zero
    /// before any batch ran.
    pub fn time_for(&self, items: usize, max_batch_size: usize) -> Duration {
        if items == 0 {
            return Duration::ZERO;
        }
        let per_item = self.seconds_per_item(items.min(max_batch_size.max(1))).unwrap_or(0.0);
        Duration::from_secs_f64(items as f64 * per_item)
    }

    /// How many items compute within `time` in full batches of `max_batch_size`; `None`
    /// before any batch ran.
    pub fn items_within(&self, time: Duration, max_batch_size: usize) -> Option<usize> {
        let per_item = self.seconds_per_item(max_batch_size.max(1))?;
        Some((time.as_secs_f64() / per_item).floor().min(u32::MAX as f64) as usize)
    }
}

/// The longest a request may expect to wait in a model's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTimeLimit {
    /// The model's `max_queue_time`.
    pub target: Duration,
}

/// A refusal by [`QueueTimeLimit::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    /// How long the request would have waited.
    pub expected_wait: Duration,
    /// When a request like it would be admitted, if no more work arrived meanwhile: the wait
    /// over the target, in whole seconds (the resolution of `Retry-After`), at least 1, at most 60.
    pub retry_after: Duration,
}

impl QueueTimeLimit {
    /// Admits a request that would wait `expected_wait`, or says when to come back.
    pub fn check(&self, expected_wait: Duration) -> Result<(), TooLong> {
        if expected_wait <= self.target {
            return Ok(());
        }
        let retry_after = retry_seconds(expected_wait - self.target);
        Err(TooLong { expected_wait, retry_after })
    }
}

/// The one admission decision of the batcher and the generation scheduler: refuse `model`'s
/// request when its queue is `full`, or when `expected_wait` passes `target`; each with a
/// Retry-After from the same estimate.
pub fn admit(model: &str, full: bool, expected_wait: Duration, target: Duration) -> Result<(), InferError> {
    let overloaded = |cause, retry_after| InferError::Overloaded { model: model.to_string(), cause, retry_after };
    if full {
        return Err(overloaded(Overload::QueueFull, retry_seconds(expected_wait)));
    }
    QueueTimeLimit { target }
        .check(expected_wait)
        .map_err(|refused| overloaded(Overload::QueueTime { expected_wait, target }, refused.retry_after))
}

/// `wait` rounded up to whole seconds, within 1 to 60: the `Retry-After` for work that will
/// have drained after `wait`.
pub fn retry_seconds(wait: Duration) -> Duration {
    Duration::from_secs(wait.as_secs_f64().ceil().clamp(1.0, 60.0) as u64)
}

/// The expected wait for a place in a generation scheduler's running batch.
///
/// With `running` of `max_running` places taken and `queued` requests ahead, a new request
/// starts once `queued + running + 1 - max_running` places have freed; a full batch frees a
/// place every `sequence_time / max_running` on average. Zero while there is room, or before
/// any sequence finished (`sequence_time` unknown).
pub fn wait_for_place(queued: usize, running: usize, max_running: usize, sequence_time: Option<Duration>) -> Duration {
    let needed = (queued + running + 1).saturating_sub(max_running.max(1));
    match sequence_time {
        Some(time) if needed > 0 => time.mul_f64(needed as f64 / max_running.max(1) as f64),
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    /// Equal to within a microsecond (the arithmetic is in floating point).
    fn near(actual: Duration, expected: Duration) -> bool {
        actual.abs_diff(expected) < Duration::from_micros(1)
    }

    #[test]
    fn no_measurement_means_no_wait() {
        let costs = BatchCosts::default();
        assert_eq!(costs.time_for(1000, 64), Duration::ZERO);
        assert_eq!(costs.items_within(ms(100), 64), None);
        assert_eq!(wait_for_place(10, 16, 16, None), Duration::ZERO);
    }

    #[test]
    fn the_queue_admits_less_as_the_model_slows_and_more_as_it_speeds_up() {
        let limit = QueueTimeLimit { target: ms(100) };
        let mut costs = BatchCosts::default();
        // 1 ms per item in batches of 8: 100 items fit the target, 120 do not.
        costs.observe(8, ms(8));
        assert_eq!(costs.items_within(limit.target, 8), Some(100));
        assert!(limit.check(costs.time_for(100, 8)).is_ok());
        assert!(limit.check(costs.time_for(120, 8)).is_err());
        // The model slows to 4 ms per item (a noisy neighbour, longer texts): the limit shrinks
        // as the average follows, until 30 items are too many.
        let mut limits = Vec::new();
        for _ in 0..20 {
            costs.observe(8, ms(32));
            limits.push(costs.items_within(limit.target, 8).unwrap());
        }
        assert!(limits.windows(2).all(|pair| pair[1] <= pair[0]), "{limits:?}");
        assert_eq!(*limits.last().unwrap(), 25);
        assert!(limit.check(costs.time_for(30, 8)).is_err());
        // It speeds up again: the limit grows back.
        for _ in 0..20 {
            costs.observe(8, ms(8));
        }
        let recovered = costs.items_within(limit.target, 8).unwrap();
        assert!((95..=100).contains(&recovered), "{recovered}");
        assert!(limit.check(costs.time_for(90, 8)).is_ok());
    }

    #[test]
    fn batching_discounts_are_learned_per_batch_size() {
        // A GPU-like model: a batch of 1 takes 5 ms, a batch of 64 takes 10 ms.
        let mut costs = BatchCosts::default();
        costs.observe(1, ms(5));
        // Only batches of 1 seen: 64 queued items are costed at 5 ms each (the cautious side).
        assert!(near(costs.time_for(64, 64), ms(320)));
        costs.observe(64, ms(10));
        assert!(near(costs.time_for(64, 64), ms(10)));
        assert!(near(costs.time_for(640, 64), ms(100)));
        // A lone item still costs what lone items cost.
        assert!(near(costs.time_for(1, 64), ms(5)));
        // Sizes between measured classes use the nearest one, the smaller when as near.
        assert_eq!(costs.seconds_per_item(4), Some(0.005));
        assert_eq!(costs.seconds_per_item(16), Some(0.010 / 64.0));
        costs.observe(8, ms(8));
        assert_eq!(costs.seconds_per_item(2), Some(0.005));
        assert_eq!(costs.seconds_per_item(4), Some(0.001));
    }

    #[test]
    fn retry_after_is_when_the_wait_is_back_under_the_target() {
        let limit = QueueTimeLimit { target: ms(100) };
        let refused = limit.check(ms(2_600)).unwrap_err();
        assert_eq!(refused.expected_wait, ms(2_600));
        assert_eq!(refused.retry_after, Duration::from_secs(3));
        assert_eq!(limit.check(ms(150)).unwrap_err().retry_after, Duration::from_secs(1));
        assert_eq!(limit.check(Duration::from_secs(600)).unwrap_err().retry_after, Duration::from_secs(60));
        assert!(limit.check(ms(100)).is_ok());
    }

    #[test]
    fn a_place_in_the_running_batch() {
        let ten_seconds = Some(Duration::from_secs(10));
        // Room in the batch: no wait.
        assert_eq!(wait_for_place(0, 15, 16, ten_seconds), Duration::ZERO);
        assert_eq!(wait_for_place(3, 10, 16, ten_seconds), Duration::ZERO);
        // Full: the next place frees in 10 s / 16 on average; four places ahead take four times that.
        assert!(near(wait_for_place(0, 16, 16, ten_seconds), ms(625)));
        assert!(near(wait_for_place(3, 16, 16, ten_seconds), ms(2_500)));
        // Sequences twice as long: twice the wait.
        assert!(near(wait_for_place(3, 16, 16, Some(Duration::from_secs(20))), ms(5_000)));
    }
}
