//! Who is calling: API keys (`Authorization: Bearer <key>` or Azure OpenAI's `api-key` header)
//! and, optionally, JWT bearer tokens from an identity provider. Each caller may be limited to
//! some models and given per-minute quotas. Keys and the JWKS file are read again on SIGHUP;
//! signing keys fetched from the provider are fetched again then, periodically, and when a token
//! names a key the set lacks.

mod jwt;
mod keys;

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use axum::http::HeaderMap;
use inferd_core::InferError;
use serde::Deserialize;

pub use self::jwt::{JwtRole, JwtSettings, JwtSubject, MISS_REFETCH_INTERVAL};
use self::jwt::{JwtValidator, RemoteKeys};
use self::keys::KeySet;
pub use self::keys::{ApiKey, hash_key};
use crate::outbound::Outbound;
use crate::quota::{CallerQuota, Limits, QuotaBook, TokenReservation};

/// How callers authenticate (the `[server.auth]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// API keys given in the configuration file.
    pub keys: Vec<ApiKey>,
    /// A file of more `[[keys]]`, read at start, on SIGHUP, and when it changes.
    pub keys_file: Option<PathBuf>,
    /// JWT bearer tokens, checked against the identity provider's signing keys.
    pub jwt: Option<JwtSettings>,
    /// Whether `/metrics` needs credentials too (health endpoints never do).
    pub protect_metrics: bool,
    /// How often the keys file and JWKS file are checked for changes (a rotated Kubernetes
    /// Secret or Key Vault mount) and read again when they changed; zero: only on SIGHUP.
    #[serde(with = "humantime_serde")]
    pub watch_interval: std::time::Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            keys_file: None,
            jwt: None,
            protect_metrics: false,
            watch_interval: std::time::Duration::from_secs(10),
        }
    }
}

impl AuthSettings {
    /// Whether any way to authenticate is configured; without one, every request is served.
    pub fn is_configured(&self) -> bool {
        !self.keys.is_empty() || self.keys_file.is_some() || self.jwt.is_some()
    }
}

/// Why authentication settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A key, keys file or JWKS file is wrong.
    #[error("{0}")]
    Config(String),
}

/// Why a request's credentials are refused (answered 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unauthenticated(pub(crate) String);

/// What the settings' files held when last read.
struct Loaded {
    keys: KeySet,
    jwt: Option<JwtValidator>,
}

/// Checks credentials and hands out [`Caller`]s.
pub struct Authenticator {
    settings: AuthSettings,
    loaded: RwLock<Arc<Loaded>>,
    /// Signing keys fetched from the identity provider, kept across reloads.
    remote_keys: Option<Arc<RemoteKeys>>,
    quotas: QuotaBook,
}

impl Authenticator {
    /// Reads the keys file and JWKS file the settings name. Keys to be fetched from a URL are
    /// not fetched here: [`Authenticator::keep_keys_fresh`] does that, and a token that comes
    /// first waits for the fetch. `outbound` is the client that fetches them.
    pub fn new(settings: AuthSettings, outbound: &Outbound) -> Result<Self, AuthError> {
        let remote_keys =
            settings.jwt.as_ref().map(|jwt| RemoteKeys::from_settings(jwt, outbound)).transpose()?.flatten();
        let loaded = load(&settings, remote_keys.as_ref())?;
        Ok(Self { settings, loaded: RwLock::new(Arc::new(loaded)), remote_keys, quotas: QuotaBook::default() })
    }

    /// Reads the keys file and JWKS file again, and fetches the identity provider's keys
    /// again; on error the previous ones stay in force. Returns the number of API keys now
    /// accepted. Blocking.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let count = self.reload_files()?;
        if let Some(remote) = &self.remote_keys {
            remote
                .fetch_blocking()
                .map_err(|err| AuthError::Config(format!("cannot fetch the signing keys: {err}")))?;
        }
        Ok(count)
    }

    /// Reads the keys file and JWKS file again; on error the previous ones stay in force.
    /// Returns the number of API keys now accepted. Blocking.
    pub fn reload_files(&self) -> Result<usize, AuthError> {
        let loaded = load(&self.settings, self.remote_keys.as_ref())?;
        let count = loaded.keys.len();
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        Ok(count)
    }

    /// How often to look for changed files; zero when never (or when no file is configured).
    pub fn watch_interval(&self) -> std::time::Duration {
        if self.file_stamps().is_empty() { std::time::Duration::ZERO } else { self.settings.watch_interval }
    }

    /// The modification time and size of each credentials file (`None` where it cannot be
    /// read), to tell when one changed. Links are followed, as a mounted Secret's are swapped.
    pub fn file_stamps(&self) -> Vec<Option<(std::time::SystemTime, u64)>> {
        let jwks = self.settings.jwt.as_ref().and_then(|jwt| jwt.jwks_file.as_ref());
        self.settings
            .keys_file
            .iter()
            .chain(jwks)
            .map(|path| {
                let metadata = std::fs::metadata(path).ok()?;
                Some((metadata.modified().ok()?, metadata.len()))
            })
            .collect()
    }

    /// Fetches the identity provider's signing keys now and then every `jwks_refresh`, for as
    /// long as the future runs; returns at once when the keys come from a file.
    pub async fn keep_keys_fresh(&self) {
        if let Some(remote) = &self.remote_keys {
            Arc::clone(remote).keep_fresh().await;
        }
    }

    /// How many times the identity provider's keys were fetched (or tried), if they are fetched.
    pub fn key_fetches(&self) -> Option<u64> {
        self.remote_keys.as_ref().map(|remote| remote.fetch_count())
    }

    /// Whether requests must authenticate.
    pub fn is_enabled(&self) -> bool {
        self.settings.is_configured()
    }

    /// Whether `/metrics` needs credentials.
    pub(crate) fn protects_metrics(&self) -> bool {
        self.is_enabled() && self.settings.protect_metrics
    }

    /// The caller that `headers` authenticate, or why they do not.
    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Unauthenticated> {
        if !self.is_enabled() {
            return Ok(Caller::anonymous());
        }
        let credential = credential(headers)?;
        let loaded = Arc::clone(&self.loaded.read().unwrap_or_else(PoisonError::into_inner));
        if let Some(jwt) = &loaded.jwt
            && credential.split('.').count() == 3
        {
            let token = jwt.validate(credential).await.map_err(Unauthenticated)?;
            let settings = jwt.settings();
            // A subject's own entry overrides what the token's roles grant, which overrides the
            // token-wide settings, field by field.
            let own = settings.subjects.iter().find(|entry| entry.subject == token.subject);
            let models =
                own.and_then(|entry| entry.models.as_ref()).or(token.role_models.as_ref()).or(settings.models.as_ref());
            let limits = Limits {
                requests_per_minute: own
                    .and_then(|entry| entry.limits.requests_per_minute)
                    .or(settings.limits.requests_per_minute),
                tokens_per_minute: own
                    .and_then(|entry| entry.limits.tokens_per_minute)
                    .or(settings.limits.tokens_per_minute),
            };
            return Ok(self.caller(format!("jwt:{}", token.subject), models.map(Vec::as_slice), limits));
        }
        match loaded.keys.find(credential) {
            Some(key) => Ok(self.caller(key.id.clone(), key.models.as_deref(), key.limits)),
            None => Err(Unauthenticated("invalid API key".into())),
        }
    }

    fn caller(&self, id: String, models: Option<&[String]>, limits: Limits) -> Caller {
        let quota = self.quotas.get(&id, limits);
        Caller { id: id.into(), models: models.map(Arc::from), quota }
    }
}

fn load(settings: &AuthSettings, remote_keys: Option<&Arc<RemoteKeys>>) -> Result<Loaded, AuthError> {
    let mut keys = settings.keys.clone();
    if let Some(path) = &settings.keys_file {
        keys.extend(KeySet::read_file(path)?);
    }
    let jwt = settings.jwt.clone().map(|jwt| JwtValidator::load(jwt, remote_keys)).transpose()?;
    Ok(Loaded { keys: KeySet::new(keys)?, jwt })
}

/// The key or token a request presents.
fn credential(headers: &HeaderMap) -> Result<&str, Unauthenticated> {
    let missing =
        || Unauthenticated("missing credentials: send 'Authorization: Bearer <key>' or an 'api-key' header".into());
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| Unauthenticated("the Authorization header is not text".into()))?;
        let (scheme, rest) = value.split_once(' ').ok_or_else(missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Unauthenticated(format!("unsupported Authorization scheme '{scheme}': use Bearer")));
        }
        let token = rest.trim();
        return if token.is_empty() { Err(missing()) } else { Ok(token) };
    }
    match headers.get("api-key").map(|value| value.to_str()) {
        Some(Ok(key)) if !key.trim().is_empty() => Ok(key.trim()),
        Some(Err(_)) => Err(Unauthenticated("the api-key header is not text".into())),
        _ => Err(missing()),
    }
}

/// An authenticated caller (or the anonymous one when authentication is off): its id for logs
/// and quotas, the models it may use, and its quota buckets.
#[derive(Clone, Debug)]
pub struct Caller {
    id: Arc<str>,
    models: Option<Arc<[String]>>,
    quota: Option<Arc<CallerQuota>>,
}

impl Caller {
    /// The caller of a server without authentication: every model, no quotas.
    pub fn anonymous() -> Self {
        Self { id: Arc::from("anonymous"), models: None, quota: None }
    }

    /// The key id or `jwt:<subject>`; never the credential itself.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the caller may use `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|models| models.iter().any(|allowed| allowed == model))
    }

    /// Refuses a model the caller may not use.
    pub(crate) fn check_model(&self, model: &str) -> Result<(), InferError> {
        if self.may_use(model) {
            Ok(())
        } else {
            Err(InferError::PermissionDenied(format!("this key is not allowed to use model '{model}'")))
        }
    }

    /// Takes one request from the caller's requests-per-minute quota.
    pub(crate) fn take_request(&self) -> Result<(), InferError> {
        self.quota.as_ref().map_or(Ok(()), |quota| quota.take_request())
    }

    /// Reserves `tokens` from the caller's tokens-per-minute quota.
    pub(crate) fn reserve_tokens(&self, tokens: u64) -> Result<Option<TokenReservation>, InferError> {
        self.quota.as_ref().map(|quota| quota.reserve_tokens(tokens)).transpose()
    }

    /// Adds the `x-ratelimit-*` headers when the caller has quotas.
    pub(crate) fn insert_headers(&self, headers: &mut HeaderMap) {
        if let Some(quota) = &self.quota {
            quota.insert_headers(headers);
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn authenticator() -> Authenticator {
        let key = |id: &str, secret: &str, models: Option<Vec<String>>| ApiKey {
            id: id.into(),
            sha256: hash_key(secret),
            models,
            limits: Limits::default(),
        };
        Authenticator::new(
            AuthSettings {
                keys: vec![key("ops", "s3cret", None), key("team-a", "a-key", Some(vec!["iris".into()]))],
                ..AuthSettings::default()
            },
            &outbound(),
        )
        .unwrap()
    }

    fn outbound() -> Outbound {
        Outbound::new(None, std::time::Duration::from_secs(1)).unwrap()
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[tokio::test]
    async fn accepts_both_header_forms() {
        let auth = authenticator();
        assert_eq!(auth.authenticate(&headers("authorization", "Bearer s3cret")).await.unwrap().id(), "ops");
        assert_eq!(auth.authenticate(&headers("api-key", "a-key")).await.unwrap().id(), "team-a");
        let caller = auth.authenticate(&headers("authorization", "bearer a-key")).await.unwrap();
        assert!(caller.may_use("iris") && !caller.may_use("wine"));
    }

    #[tokio::test]
    async fn refuses_missing_and_wrong_credentials() {
        let auth = authenticator();
        for (headers, expected) in [
            (HeaderMap::new(), "missing credentials"),
            (headers("authorization", "Bearer nope"), "invalid API key"),
            (headers("authorization", "Basic czNjcmV0"), "use Bearer"),
            (headers("authorization", "Bearer "), "missing"),
        ] {
            let refused = auth.authenticate(&headers).await.unwrap_err().0;
            assert!(refused.contains(expected), "{refused}");
        }
    }

    #[tokio::test]
    async fn without_settings_everyone_is_anonymous() {
        let auth = Authenticator::new(AuthSettings::default(), &outbound()).unwrap();
        assert_eq!(auth.authenticate(&HeaderMap::new()).await.unwrap().id(), "anonymous");
    }
}
