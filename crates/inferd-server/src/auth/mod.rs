//! Who is calling: API keys (`Authorization: Bearer <key>` or Azure OpenAI's `api-key` header)
//! and, optionally, JWT bearer tokens from an identity provider. Each caller may be limited to
//! some models and given per-minute quotas. Keys and the JWKS file are read again on SIGHUP.

mod jwt;
mod keys;

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use axum::http::HeaderMap;
use inferd_core::InferError;
use serde::Deserialize;

use self::jwt::JwtValidator;
pub use self::jwt::{JwtSettings, JwtSubject};
use self::keys::KeySet;
pub use self::keys::{ApiKey, hash_key};
use crate::quota::{CallerQuota, Limits, QuotaBook, TokenReservation};

/// How callers authenticate (the `[server.auth]` table).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// API keys given in the configuration file.
    pub keys: Vec<ApiKey>,
    /// A file of more `[[keys]]`, read at start and again on SIGHUP.
    pub keys_file: Option<PathBuf>,
    /// JWT bearer tokens, checked against a JWKS file.
    pub jwt: Option<JwtSettings>,
    /// Whether `/metrics` needs credentials too (health endpoints never do).
    pub protect_metrics: bool,
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
    quotas: QuotaBook,
}

impl Authenticator {
    /// Reads the keys file and JWKS file the settings name.
    pub fn new(settings: AuthSettings) -> Result<Self, AuthError> {
        let loaded = load(&settings)?;
        Ok(Self { settings, loaded: RwLock::new(Arc::new(loaded)), quotas: QuotaBook::default() })
    }

    /// Reads the keys file and JWKS file again; on error the previous ones stay in force.
    /// Returns the number of API keys now accepted.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let loaded = load(&self.settings)?;
        let count = loaded.keys.len();
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        Ok(count)
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
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Unauthenticated> {
        if !self.is_enabled() {
            return Ok(Caller::anonymous());
        }
        let credential = credential(headers)?;
        let loaded = Arc::clone(&self.loaded.read().unwrap_or_else(PoisonError::into_inner));
        if let Some(jwt) = &loaded.jwt
            && credential.split('.').count() == 3
        {
            let token = jwt.validate(credential).map_err(Unauthenticated)?;
            let settings = jwt.settings();
            // A subject's own entry overrides the token-wide settings field by field.
            let own = settings.subjects.iter().find(|entry| entry.subject == token.subject);
            let models = own.and_then(|entry| entry.models.as_ref()).or(settings.models.as_ref());
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

fn load(settings: &AuthSettings) -> Result<Loaded, AuthError> {
    let mut keys = settings.keys.clone();
    if let Some(path) = &settings.keys_file {
        keys.extend(KeySet::read_file(path)?);
    }
    let jwt = settings.jwt.clone().map(JwtValidator::load).transpose()?;
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
        Authenticator::new(AuthSettings {
            keys: vec![key("ops", "s3cret", None), key("team-a", "a-key", Some(vec!["iris".into()]))],
            ..AuthSettings::default()
        })
        .unwrap()
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn accepts_both_header_forms() {
        let auth = authenticator();
        assert_eq!(auth.authenticate(&headers("authorization", "Bearer s3cret")).unwrap().id(), "ops");
        assert_eq!(auth.authenticate(&headers("api-key", "a-key")).unwrap().id(), "team-a");
        let caller = auth.authenticate(&headers("authorization", "bearer a-key")).unwrap();
        assert!(caller.may_use("iris") && !caller.may_use("wine"));
    }

    #[test]
    fn refuses_missing_and_wrong_credentials() {
        let auth = authenticator();
        let refuse = |headers: HeaderMap| auth.authenticate(&headers).unwrap_err().0;
        assert!(refuse(HeaderMap::new()).contains("missing credentials"));
        assert!(refuse(headers("authorization", "Bearer nope")).contains("invalid API key"));
        assert!(refuse(headers("authorization", "Basic czNjcmV0")).contains("use Bearer"));
        assert!(refuse(headers("authorization", "Bearer ")).contains("missing"));
    }

    #[test]
    fn without_settings_everyone_is_anonymous() {
        let auth = Authenticator::new(AuthSettings::default()).unwrap();
        assert_eq!(auth.authenticate(&HeaderMap::new()).unwrap().id(), "anonymous");
    }
}
