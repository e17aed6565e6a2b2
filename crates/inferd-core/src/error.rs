//! The ways a request can fail, independent of any wire protocol.
//!
//! Protocol adapters map each kind to their own status codes and error shapes; the kinds are
//! chosen so that the mapping is one-to-one (bad input → 400, no or bad credentials → 401,
//! caller not allowed the model → 403, unknown model → 404, model queue full or caller's quota
//! spent → 429, not ready, shutting down or at the concurrency limit → 503, deadline → 504,
//! anything else → 500).

use std::time::Duration;

/// Which of a model's queue bounds refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// The queue holds `queue_capacity` (or `max_queued_requests`) requests already.
    QueueFull,
    /// The work queued ahead would keep the request waiting longer than `max_queue_time`.
    QueueTime {
        /// How long it would have waited, at the model's observed speed.
        expected_wait: Duration,
        /// The model's `max_queue_time`.
        target: Duration,
    },
}

impl std::fmt::Display for Overload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::QueueFull => f.write_str("its queue is full"),
            Self::QueueTime { expected_wait, target } => write!(
                f,
                "a request now would wait about {} ms in its queue, over its max_queue_time of {} ms",
                expected_wait.as_millis(),
                target.as_millis()
            ),
        }
    }
}

/// Why an inference request did not produce an answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    /// The request itself is wrong (shape, type, values); retrying it unchanged cannot succeed.
    #[error("{0}")]
    InvalidInput(String),
    /// No model of that name is configured.
    #[error("model '{0}' is not served here")]
    ModelNotFound(String),
    /// The model exists but cannot answer yet (still loading) or at all (failed to load).
    #[error("model '{model}' is not ready: {reason}")]
    NotReady {
        /// The model's name.
        model: String,
        /// `loading`, or why loading failed.
        reason: String,
        /// For a model still loading, an estimate of when it will be ready.
        retry_after: Option<Duration>,
    },
    /// The model's queue refused the request: it is full, or the request would wait longer
    /// than the model's `max_queue_time`; the client should retry after the given time.
    #[error("model '{model}' is overloaded: {cause}; retry after {}s", retry_after.as_secs())]
    Overloaded {
        /// The model's name.
        model: String,
        /// Which bound refused it.
        cause: Overload,
        /// An estimate of when a request would be admitted, from the queue's depth and the
        /// model's observed speed.
        retry_after: Duration,
    },
    /// The request carries no credentials, or ones that are not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's credentials do not allow this model.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller has spent its requests or tokens per minute; the budget refills after the
    /// given time.
    #[error("{message}")]
    QuotaExceeded {
        /// Which budget is spent and what it allows.
        message: String,
        /// When enough of the budget will have refilled.
        retry_after: Duration,
    },
    /// The server is answering as many requests as it is configured to; the client should retry
    /// after the given time.
    #[error("the server is at its limit of concurrent requests; retry after {}s", retry_after.as_secs())]
    Busy {
        /// An estimate of when a slot will be free, from recent request durations.
        retry_after: Duration,
    },
    /// The request's deadline passed before it was answered; if it was still queued, it was
    /// dropped and never run.
    #[error("request deadline exceeded before the model answered")]
    Timeout,
    /// The server is draining and accepts no new work.
    #[error("server is shutting down")]
    ShuttingDown,
    /// A fault inside the runtime or the model (including a panic); the request may be retried.
    #[error("internal error: {0}")]
    Internal(String),
}

impl InferError {
    /// When the client may usefully retry, if the failure is transient and the wait is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Overloaded { retry_after, .. }
            | Self::QuotaExceeded { retry_after, .. }
            | Self::Busy { retry_after } => Some(*retry_after),
            Self::NotReady { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
