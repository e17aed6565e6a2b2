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
    /// After SIGTERM or SIGINT, longest time to let in-flight requests finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Largest request body accepted, in bytes; larger ones are answered 413.
    pub max_body_bytes: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_body_bytes: 64 * 1024 * 1024,
        }
    }
}
