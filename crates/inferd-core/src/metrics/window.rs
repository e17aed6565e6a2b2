//! Sliding-window statistics for autoscalers that cannot compute quantiles from histograms:
//! per model, over the last 60 seconds, request latency quantiles, tokens and requests per
//! minute, and the fraction of time the model's worker was busy computing.
//!
//! The window is 60 one-second slots. Latencies fall into logarithmic buckets 10% wide, so a
//! reported quantile is within 10% of the exact one; that is as fine as a scaling decision needs
//! and keeps memory fixed (about 50 KB per model) whatever the request rate.

use std::time::{Duration, Instant};

/// Seconds in the window.
pub(crate) const WINDOW_SECONDS: u64 = 60;
/// Smallest latency bucket bound, in seconds.
const FIRST_BOUND: f64 = 1e-5;
/// Ratio between neighbouring bucket bounds.
const GROWTH: f64 = 1.1;
/// Buckets: 10 µs × 1.1^200 ≈ 1,900 s, past any request timeout.
const BUCKETS: usize = 200;

/// One second of observations.
#[derive(Clone)]
struct Slot {
    /// Which second since the window's start this slot holds; stale slots are skipped.
    second: u64,
    latency: Box<[u32; BUCKETS]>,
    requests: u64,
    tokens: u64,
    busy: Duration,
}

impl Slot {
    fn empty(second: u64) -> Self {
        Self { second, latency: Box::new([0; BUCKETS]), requests: 0, tokens: 0, busy: Duration::ZERO }
    }
}

/// One model's last minute.
pub(crate) struct Window {
    origin: Instant,
    slots: Vec<Slot>,
}

/// What a window reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WindowSummary {
    /// Latency quantiles P50, P95, P99 of successful requests, in seconds (0 when none).
    pub quantiles: [f64; 3],
    /// Requests answered successfully in the window, scaled to a minute.
    pub requests_per_minute: f64,
    /// Tokens (prompt and completion) in the window, scaled to a minute.
    pub tokens_per_minute: f64,
    /// Fraction of the window the model spent computing batches, 0 to 1.
    pub busy_ratio: f64,
}

impl Window {
    pub(crate) fn new(origin: Instant) -> Self {
        Self { origin, slots: (0..WINDOW_SECONDS).map(|_| Slot::empty(u64::MAX)).collect() }
    }

    fn slot(&mut self, now: Instant) -> &mut Slot {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let slot = &mut self.slots[(second % WINDOW_SECONDS) as usize];
        if slot.second != second {
            *slot = Slot::empty(second);
        }
        slot
    }

    /// Records one successful request's latency.
    pub(crate) fn record_request(&mut self, now: Instant, latency: Duration) {
        let slot = self.slot(now);
        slot.requests += 1;
        slot.latency[bucket(latency.as_secs_f64())] += 1;
    }

    /// Records tokens processed.
    pub(crate) fn record_tokens(&mut self, now: Instant, tokens: u64) {
        self.slot(now).tokens += tokens;
    }

    /// Records time the model spent computing a batch that ended at `now`.
    pub(crate) fn record_busy(&mut self, now: Instant, busy: Duration) {
        self.slot(now).busy += busy;
    }

    /// The statistics over the last [`WINDOW_SECONDS`] seconds (or since the start, if sooner).
    pub(crate) fn summary(&self, now: Instant) -> WindowSummary {
        let elapsed = now.saturating_duration_since(self.origin);
        let current = elapsed.as_secs();
        let live = |slot: &&Slot| slot.second != u64::MAX && slot.second + WINDOW_SECONDS > current;
        let mut counts = [0u64; BUCKETS];
        let (mut requests, mut tokens, mut busy) = (0u64, 0u64, Duration::ZERO);
        for slot in self.slots.iter().filter(live) {
            for (total, count) in counts.iter_mut().zip(slot.latency.iter()) {
                *total += u64::from(*count);
            }
            requests += slot.requests;
            tokens += slot.tokens;
            busy += slot.busy;
        }
        let span = elapsed.as_secs_f64().clamp(1.0, WINDOW_SECONDS as f64);
        let per_minute = 60.0 / span;
        WindowSummary {
            quantiles: [0.5, 0.95, 0.99].map(|q| quantile(&counts, requests, q)),
            requests_per_minute: requests as f64 * per_minute,
            tokens_per_minute: tokens as f64 * per_minute,
            busy_ratio: (busy.as_secs_f64() / span).min(1.0),
        }
    }
}

fn bucket(seconds: f64) -> usize {
    if seconds <= FIRST_BOUND {
        return 0;
    }
    let index = ((seconds / FIRST_BOUND).ln() / GROWTH.ln()).ceil();
    (index as usize).min(BUCKETS - 1)
}

/// The upper bound of the bucket holding the `q`-quantile.
fn quantile(counts: &[u64; BUCKETS], total: u64, q: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (index, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return FIRST_BOUND * GROWTH.powi(index as i32);
        }
    }
    FIRST_BOUND * GROWTH.powi(BUCKETS as i32 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let origin = Instant::now();
        let mut window = Window::new(origin);
        let now = origin + Duration::from_secs(30);
        for ms in 1..=100 {
            window.record_request(now, Duration::from_millis(ms));
        }
        let summary = window.summary(now);
        for (got, want) in summary.quantiles.iter().zip([0.050, 0.095, 0.099]) {
            assert!(*got >= want && *got <= want * GROWTH, "{got} vs {want}");
        }
        assert!((summary.requests_per_minute - 200.0).abs() < 1e-9, "100 in 30 s is 200 a minute");
    }

    #[test]
    fn old_observations_leave_the_window() {
        let origin = Instant::now();
        let mut window = Window::new(origin);
        window.record_tokens(origin + Duration::from_secs(1), 600);
        window.record_busy(origin + Duration::from_secs(1), Duration::from_secs(30));
        let during = window.summary(origin + Duration::from_secs(60));
        assert_eq!(during.tokens_per_minute, 600.0);
        assert_eq!(during.busy_ratio, 0.5);
        let after = window.summary(origin + Duration::from_secs(61));
        assert_eq!(after.tokens_per_minute, 0.0);
        assert_eq!(after.quantiles, [0.0; 3]);
    }
}
