//! The server's own settings (the `[server]` table of the configuration file).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::AuthSettings;
use crate::telemetry::TelemetrySettings;
use crate::tls::TlsSettings;

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
    /// Longest a connection may take to send a request's headers, and longest a keep-alive
    /// connection may stay idle between requests; then it is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most client connections open at once; past them, new connections wait in the listen
    /// backlog until one closes, so that slow clients cannot exhaust file descriptors.
    pub max_connections: usize,
    /// Largest request body accepted, in bytes; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// Most inputs (texts or token arrays) in one embedding request; more are answered 400.
    pub max_embedding_inputs: usize,
    /// Most input tokens in one request (all its texts together); more are answered 400.
    pub max_input_tokens: usize,
    /// Most inference requests answered at once, all models together; more are answered 503
    /// with `Retry-After` at once rather than queued without bound.
    pub max_concurrent_requests: usize,
    /// Serve on a non-loopback address without any authentication configured. Off by default:
    /// such a server refuses to start.
    pub allow_unauthenticated: bool,
    /// Log request and response bodies at debug level (target `inferd::payload`). Off by
    /// default: payloads may hold personal data.
    pub log_payloads: bool,
    /// API keys, JWT validation and whether `/metrics` is protected.
    pub auth: AuthSettings,
    /// HTTPS certificate and key; plain HTTP when absent.
    pub tls: Option<TlsSettings>,
    /// OpenTelemetry trace and metrics export.
    pub telemetry: TelemetrySettings,
    /// PEM certificates to trust, besides the public roots, when the server calls out over
    /// HTTPS (the identity provider's keys, the OTLP collector): a private CA's.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The longest any of the durations above may be: longer ones are configuration mistakes.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

impl ServerSettings {
    /// Makes the paths of the files the settings name (keys, JWKS, TLS) relative to `base`,
    /// the configuration file's directory.
    pub fn rebase_paths(&mut self, base: &std::path::Path) {
        let rebase = |path: &mut std::path::PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        if let Some(path) = &mut self.auth.keys_file {
            rebase(path);
        }
        if let Some(path) = self.auth.jwt.as_mut().and_then(|jwt| jwt.jwks_file.as_mut()) {
            rebase(path);
        }
        if let Some(path) = &mut self.ca_file {
            rebase(path);
        }
        if let Some(tls) = &mut self.tls {
            rebase(&mut tls.cert);
            rebase(&mut tls.key);
        }
    }

    /// Checks the settings can be served with.
    pub fn validate(&self) -> Result<(), String> {
        if self.request_timeout.is_zero() {
            return Err("request_timeout must be more than zero".into());
        }
        for (key, value) in [
            ("request_timeout", self.request_timeout),
            ("drain_delay", self.drain_delay),
            ("drain_timeout", self.drain_timeout),
            ("header_read_timeout", self.header_read_timeout),
        ] {
            if value > MAX_DURATION {
                return Err(format!("{key} must be at most 24h"));
            }
        }
        if self.header_read_timeout.is_zero() {
            return Err("header_read_timeout must be more than zero".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be more than zero".into());
        }
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes must be more than zero".into());
        }
        if self.max_embedding_inputs == 0 {
            return Err("max_embedding_inputs must be more than zero".into());
        }
        if self.max_input_tokens == 0 {
            return Err("max_input_tokens must be more than zero".into());
        }
        if self.max_concurrent_requests == 0 {
            return Err("max_concurrent_requests must be more than zero".into());
        }
        if !self.listen.ip().is_loopback() && !self.auth.is_configured() && !self.allow_unauthenticated {
            return Err(format!(
                "refusing to serve {} without authentication: configure [server.auth] keys, a keys_file or \
                 jwt, or pass --allow-unauthenticated (INFERD_ALLOW_UNAUTHENTICATED=true) to serve \
                 openly on purpose",
                self.listen
            ));
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
            header_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_body_bytes: 64 * 1024 * 1024,
            max_embedding_inputs: 2048,
            max_input_tokens: 1 << 20,
            max_concurrent_requests: 512,
            allow_unauthenticated: false,
            log_payloads: false,
            auth: AuthSettings::default(),
            tls: None,
            telemetry: TelemetrySettings::default(),
            ca_file: None,
        }
    }
}
