//! The server's own settings (the `[server]` table of the configuration file).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// How the HTTP server listens, limits and shuts down.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Longest time a request may take, queueing included; then it is answered 504 and, if
    /// still queued, never run. A client may ask for less (`parameters.timeout`).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// After SIGTERM or SIGINT, how long to go on serving while readiness reports the server as
    /// draining, so that load balancers stop sending new requests before connections close.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Then, longest time to let in-flight requests finish after the listener closes.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Largest request body accepted, in bytes; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// Most inputs (texts or token arrays) in one embedding request; more are answered 400.
    pub max_embedding_inputs: usize,
}

/// The longest any of the durations above may be: longer ones are configuration mistakes.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

impl ServerSettings {
    /// Checks the settings can be served with.
    pub fn validate(&self) -> Result<(), String> {
        if self.request_timeout.is_zero() {
            return Err("request_timeout must be more than zero".into());
        }
        for (key, value) in [
            ("request_timeout", self.request_timeout),
            ("drain_delay", self.drain_delay),
            ("drain_timeout", self.drain_timeout),
        ] {
            if value > MAX_DURATION {
                return Err(format!("{key} must be at most 24h"));
            }
        }
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes must be more than zero".into());
        }
        if self.max_embedding_inputs == 0 {
            return Err("max_embedding_inputs must be more than zero".into());
        }
        Ok(())
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(30),
            max_body_bytes: 64 * 1024 * 1024,
            max_embedding_inputs: 2048,
        }
    }
}
