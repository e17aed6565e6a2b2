//! The server's calls out: the identity provider's discovery document and signing keys, and the
//! OTLP collector. One blocking HTTP client (call it from `spawn_blocking` or a thread of its
//! own) with TLS through rustls and ring, trusting Mozilla's root certificates, compiled in so
//! that an image without a CA bundle still verifies public endpoints, plus the certificates of
//! `[server] ca_file` for a private CA. Proxies come from `HTTPS_PROXY` / `HTTP_PROXY` /
//! `NO_PROXY`, as other tools on the host take them.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::rustls;

/// Why an outbound call failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The CA file cannot be used.
    #[error("cannot use the CA file {path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The request failed: no connection, a TLS or HTTP error, or an error status.
    #[error("{url}: {message}")]
    Request {
        /// The URL called.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// The outbound HTTP client.
#[derive(Clone)]
pub struct Outbound {
    agent: ureq::Agent,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Outbound")
    }
}

/// Largest response body read: discovery documents and key sets are a few kilobytes.
const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

impl Outbound {
    /// A client that trusts the public roots and those of `ca_file`, and gives up on a call
    /// after `timeout`.
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Self, OutboundError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let ca_error = |message: String| OutboundError::CaFile { path: path.display().to_string(), message };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|err| ca_error(err.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| ca_error(err.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificates in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|err| ca_error(err.to_string()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| OutboundError::CaFile { path: "(none)".into(), message: err.to_string() })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let agent =
            ureq::AgentBuilder::new().timeout(timeout).try_proxy_from_env(true).tls_config(Arc::new(tls)).build();
        Ok(Self { agent })
    }

    /// GETs `url` and parses its body as JSON. Blocking.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OutboundError> {
        let body = self.call(url, self.agent.get(url).set("accept", "application/json").call())?;
        serde_json::from_slice(&body).map_err(|err| OutboundError::Request {
            url: url.to_string(),
            message: format!("not the JSON expected: {err}"),
        })
    }

    /// POSTs `body` to `url` with a content type and extra headers; the response's status and
    /// body. Statuses of 400 and more are errors. Blocking.
    pub fn post(
        &self,
        url: &str,
        content_type: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Vec<u8>, OutboundError> {
        let mut request = self.agent.post(url).set("content-type", content_type);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        self.call(url, request.send_bytes(body))
    }

    fn call(&self, url: &str, result: Result<ureq::Response, ureq::Error>) -> Result<Vec<u8>, OutboundError> {
        let failed = |message: String| OutboundError::Request { url: url.to_string(), message };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                let mut text = String::new();
                let _ = response.into_reader().take(512).read_to_string(&mut text);
                return Err(failed(format!("HTTP {status}: {}", text.trim())));
            }
            Err(ureq::Error::Transport(transport)) => return Err(failed(transport.to_string())),
        };
        let mut body = Vec::new();
        response
            .into_reader()
            .take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|err| failed(format!("cannot read the response: {err}")))?;
        if body.len() as u64 > MAX_RESPONSE_BYTES {
            return Err(failed(format!("the response is over {MAX_RESPONSE_BYTES} bytes")));
        }
        Ok(body)
    }
}

/// Whether `url` is HTTPS, or plain HTTP to this machine (a sidecar or a test): credentials
/// and signing keys must not cross a network in clear.
pub(crate) fn is_secure_or_local(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_secure() {
        for url in ["https://login.example/keys", "http://127.0.0.1:9/k", "http://localhost/k", "http://[::1]:80/k"] {
            assert!(is_secure_or_local(url), "{url}");
        }
        for url in ["http://login.example/keys", "http://127.0.0.1.example/k", "ftp://x", "http://user@10.0.0.1/k"] {
            assert!(!is_secure_or_local(url), "{url}");
        }
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = Outbound::new(Some(&empty), Duration::from_secs(1)).unwrap_err().to_string();
        assert!(err.contains("no PEM certificates"), "{err}");
        assert!(Outbound::new(Some(&dir.path().join("missing.pem")), Duration::from_secs(1)).is_err());
        Outbound::new(None, Duration::from_secs(1)).unwrap();
    }
}
