//! Per-caller quotas: requests per minute and tokens per minute, each a token bucket that holds
//! a minute's allowance and refills continuously. A request takes one request up front; tokens
//! are reserved once a handler knows how many a request needs (an embedding request's input
//! tokens; a completion's prompt plus `max_tokens`) and settled to the real count at the end,
//! so a request that fails gives its tokens back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use inferd_core::InferError;
use serde::Deserialize;

/// Limits per minute; absent means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Limits {
    /// Requests per minute.
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt plus completion) per minute.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.requests_per_minute.is_some() || self.tokens_per_minute.is_some()
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.requests_per_minute == Some(0) || self.tokens_per_minute == Some(0) {
            return Err("a per-minute limit must be more than zero (leave it out for no limit)".into());
        }
        Ok(())
    }
}

/// A token bucket holding up to a minute's allowance.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn new(per_minute: u64, now: Instant) -> Self {
        Self { capacity: per_minute as f64, level: per_minute as f64, updated: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.capacity / 60.0).min(self.capacity);
        self.updated = now;
    }

    /// Takes `amount` (at most the capacity, so that any request can eventually pass), or says
    /// how long until the bucket holds it.
    fn take(&mut self, amount: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let amount = amount.min(self.capacity);
        if self.level >= amount {
            self.level -= amount;
            Ok(())
        } else {
            let seconds = (amount - self.level) * 60.0 / self.capacity;
            Err(Duration::from_secs_f64(seconds))
        }
    }

    /// Adjusts the level by `amount` (negative takes, even below zero: usage past a
    /// reservation is still owed).
    fn adjust(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + amount).min(self.capacity);
    }

    fn remaining(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.level.max(0.0).floor() as u64
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level >= self.capacity
    }
}

/// One caller's buckets.
#[derive(Debug)]
pub(crate) struct CallerQuota {
    limits: Limits,
    requests: Option<Mutex<Bucket>>,
    tokens: Option<Mutex<Bucket>>,
}

fn lock(bucket: &Mutex<Bucket>) -> std::sync::MutexGuard<'_, Bucket> {
    bucket.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Retry-After is sent in whole seconds; round up so that a retry at that time succeeds.
fn whole_seconds(wait: Duration) -> Duration {
    Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64)
}

impl CallerQuota {
    fn new(limits: Limits) -> Self {
        let now = Instant::now();
        Self {
            limits,
            requests: limits.requests_per_minute.map(|n| Mutex::new(Bucket::new(n, now))),
            tokens: limits.tokens_per_minute.map(|n| Mutex::new(Bucket::new(n, now))),
        }
    }

    /// Takes one request, or refuses with the time until one is available.
    pub(crate) fn take_request(&self) -> Result<(), InferError> {
        let (Some(bucket), Some(limit)) = (&self.requests, self.limits.requests_per_minute) else { return Ok(()) };
        lock(bucket).take(1.0, Instant::now()).map_err(|wait| InferError::QuotaExceeded {
            message: format!("rate limit reached: this key allows {limit} requests per minute"),
            retry_after: whole_seconds(wait),
        })
    }

    /// Reserves `tokens`, or refuses with the time until the bucket holds them.
    pub(crate) fn reserve_tokens(self: &Arc<Self>, tokens: u64) -> Result<TokenReservation, InferError> {
        let (Some(bucket), Some(limit)) = (&self.tokens, self.limits.tokens_per_minute) else {
            return Ok(TokenReservation { quota: None, reserved: 0 });
        };
        lock(bucket).take(tokens as f64, Instant::now()).map_err(|wait| InferError::QuotaExceeded {
            message: format!("token rate limit reached: this request needs {tokens} tokens and this key allows {limit} tokens per minute"),
            retry_after: whole_seconds(wait),
        })?;
        // What was taken: a request larger than the whole allowance takes all of it.
        Ok(TokenReservation { quota: Some(Arc::clone(self)), reserved: tokens.min(limit) })
    }

    /// Adds the `x-ratelimit-*` headers, as Azure OpenAI sends them.
    pub(crate) fn insert_headers(&self, headers: &mut HeaderMap) {
        let now = Instant::now();
        if let (Some(bucket), Some(limit)) = (&self.requests, self.limits.requests_per_minute) {
            headers.insert("x-ratelimit-limit-requests", HeaderValue::from(limit));
            headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(lock(bucket).remaining(now)));
        }
        if let (Some(bucket), Some(limit)) = (&self.tokens, self.limits.tokens_per_minute) {
            headers.insert("x-ratelimit-limit-tokens", HeaderValue::from(limit));
            headers.insert("x-ratelimit-remaining-tokens", HeaderValue::from(lock(bucket).remaining(now)));
        }
    }

    fn is_full(&self) -> bool {
        let now = Instant::now();
        [&self.requests, &self.tokens].into_iter().flatten().all(|bucket| lock(bucket).is_full(now))
    }
}

/// Tokens held for a request: settle them to the real count with [`TokenReservation::settle`];
/// dropped unsettled (the request failed), they are all given back.
#[derive(Debug)]
pub(crate) struct TokenReservation {
    quota: Option<Arc<CallerQuota>>,
    reserved: u64,
}

impl TokenReservation {
    /// Charges `used` tokens instead of the reserved number.
    pub(crate) fn settle(mut self, used: u64) {
        if let Some(quota) = self.quota.take()
            && let Some(bucket) = &quota.tokens
        {
            lock(bucket).adjust(self.reserved as f64 - used as f64, Instant::now());
        }
    }
}

impl Drop for TokenReservation {
    fn drop(&mut self) {
        if let Some(quota) = self.quota.take()
            && let Some(bucket) = &quota.tokens
        {
            lock(bucket).adjust(self.reserved as f64, Instant::now());
        }
    }
}

/// Every caller's buckets, by caller id. Buckets that are full are the same as new ones, so
/// they are dropped when the book grows large (many JWT subjects).
#[derive(Default)]
pub(crate) struct QuotaBook {
    callers: Mutex<Callers>,
}

#[derive(Default)]
struct Callers {
    by_id: HashMap<String, Arc<CallerQuota>>,
    /// Sweep when the book grows past this; doubled after each sweep that keeps most callers,
    /// so sweeping costs a constant amount per new caller.
    sweep_at: usize,
}

/// Callers kept before full buckets are swept out.
const SWEEP_ABOVE: usize = 10_000;

impl QuotaBook {
    /// The buckets of caller `id` with `limits`; `None` when it has no limits. Changed limits
    /// (after a keys reload) start fresh buckets.
    pub(crate) fn get(&self, id: &str, limits: Limits) -> Option<Arc<CallerQuota>> {
        if !limits.is_limited() {
            return None;
        }
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        if callers.by_id.len() > callers.sweep_at.max(SWEEP_ABOVE) {
            callers.by_id.retain(|_, quota| Arc::strong_count(quota) > 1 || !quota.is_full());
            callers.sweep_at = 2 * callers.by_id.len();
        }
        let quota = callers
            .by_id
            .entry(id.to_string())
            .and_modify(|quota| {
                if quota.limits != limits {
                    *quota = Arc::new(CallerQuota::new(limits));
                }
            })
            .or_insert_with(|| Arc::new(CallerQuota::new(limits)));
        Some(Arc::clone(quota))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_continuously() {
        let start = Instant::now();
        let mut bucket = Bucket::new(60, start);
        for _ in 0..60 {
            bucket.take(1.0, start).unwrap();
        }
        let wait = bucket.take(1.0, start).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-9, "one per second: {wait:?}");
        assert!(bucket.take(1.0, start + Duration::from_millis(1001)).is_ok());
        assert_eq!(bucket.remaining(start + Duration::from_secs(3600)), 60, "never above capacity");
    }

    #[test]
    fn reservations_settle_or_refund() {
        let quota = Arc::new(CallerQuota::new(Limits { requests_per_minute: None, tokens_per_minute: Some(1000) }));
        let remaining = |quota: &CallerQuota| {
            let mut headers = HeaderMap::new();
            quota.insert_headers(&mut headers);
            headers["x-ratelimit-remaining-tokens"].to_str().unwrap().parse::<u64>().unwrap()
        };
        quota.reserve_tokens(600).unwrap().settle(100);
        assert!((899..=900).contains(&remaining(&quota)));
        drop(quota.reserve_tokens(800).unwrap());
        assert!((899..=900).contains(&remaining(&quota)), "a dropped reservation is refunded");
        let _held = quota.reserve_tokens(900).unwrap();
        let refused = quota.reserve_tokens(500).unwrap_err();
        let wait = refused.retry_after().unwrap();
        assert!((29..=31).contains(&wait.as_secs()), "500 tokens at 1000/min take ~30 s: {wait:?}");
    }

    #[test]
    fn requests_beyond_the_capacity_wait_for_a_full_bucket() {
        let quota = Arc::new(CallerQuota::new(Limits { requests_per_minute: None, tokens_per_minute: Some(100) }));
        quota.reserve_tokens(5000).unwrap().settle(5000);
        let wait = quota.reserve_tokens(5000).unwrap_err().retry_after().unwrap();
        assert!(wait.as_secs() > 60, "debt is repaid before anything passes: {wait:?}");
    }
}
