//! JWT bearer tokens, as Microsoft Entra ID and other OpenID providers issue them: RS256 or
//! ES256 signatures checked against the provider's signing keys, then `iss`, `aud`, `exp` and
//! `nbf` (with a small leeway for clock skew). The caller is the token's subject claim; the
//! token's `roles` and `scp` values can grant models.
//!
//! The keys come from a JWKS file (read at start and on SIGHUP), from a JWKS URL, or from the
//! `jwks_uri` of the provider's OpenID discovery document. Fetched keys are kept, refreshed
//! every `jwks_refresh` and on SIGHUP, and fetched again at once when a token names a key the
//! set lacks (the provider rotated its keys), at most once per [`MISS_REFETCH_INTERVAL`]. A
//! failed fetch keeps the previous keys.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::AuthError;
use crate::outbound::{Outbound, is_secure_or_local};
use crate::quota::Limits;

/// How tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The provider's signing keys as a JSON Web Key Set file; read at start and on SIGHUP.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Or the URL that serves them (the provider's `jwks_uri`, e.g. Entra ID's
    /// `https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Or the provider's OpenID discovery document, whose `jwks_uri` names the keys (e.g.
    /// `https://login.microsoftonline.com/<tenant>/v2.0/.well-known/openid-configuration`).
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// How often fetched keys are fetched again.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// The required `iss` claim.
    pub issuer: String,
    /// The required `aud` claim (one of its values, when it is a list).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// The claim that names the caller (for logs, quotas and `subjects`); Entra ID's `oid` is
    /// another common choice.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The models every token may use; all when absent. `roles` and `subjects` entries
    /// override it.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Limits per minute for each subject, unless its `subjects` entry sets its own.
    #[serde(flatten)]
    pub limits: Limits,
    /// Models granted by the token's app roles (`roles` claim) or scopes (`scp` claim).
    #[serde(default)]
    pub roles: Vec<JwtRole>,
    /// Per-subject models and limits.
    #[serde(default)]
    pub subjects: Vec<JwtSubject>,
}

/// Models a role or scope grants: a token holding it in its `roles` claim (a list, Entra ID's
/// app roles) or its `scp` claim (space-separated, delegated scopes) may use them. A token
/// holding several such values may use the models of each.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRole {
    /// The role or scope value, e.g. `Inference.Embeddings`.
    pub role: String,
    /// The models it grants.
    pub models: Vec<String>,
}

/// One subject's own models and limits; each field left out takes the token-wide setting.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSubject {
    /// The subject claim's value.
    pub subject: String,
    /// The models it may use; all when absent.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Its limits per minute.
    #[serde(flatten)]
    pub limits: Limits,
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

fn default_refresh() -> Duration {
    Duration::from_secs(3600)
}

fn default_subject_claim() -> String {
    "sub".into()
}

/// Shortest time between two fetches caused by tokens naming unknown keys, so that forged
/// tokens cannot make the server hammer the provider.
pub const MISS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// After a failed fetch, when to try again (sooner than `jwks_refresh`).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// A validated token's caller and what its roles grant.
pub(crate) struct TokenSubject {
    pub(crate) subject: String,
    /// The models the token's roles and scopes grant; `None` when it holds none of the
    /// configured ones.
    pub(crate) role_models: Option<Vec<String>>,
}

/// Why a token is refused.
pub(crate) enum Refusal {
    /// The token names a signing key the current set lacks (or no keys are loaded yet).
    UnknownKey(String),
    /// Anything else.
    Invalid(String),
}

/// Where keys are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Remote {
    Jwks(String),
    Discovery(String),
}

/// Fetched keys, shared by every reload of the settings.
pub(crate) struct RemoteKeys {
    remote: Remote,
    issuer: String,
    refresh: Duration,
    outbound: Outbound,
    keys: RwLock<Arc<JwkSet>>,
    /// Held while fetching, so that concurrent misses wait for one fetch; the time of the last
    /// fetch a miss caused.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    fetches: Mutex<u64>,
}

impl RemoteKeys {
    /// The remote source the settings name, if they name one; checked, not yet fetched.
    pub(crate) fn from_settings(settings: &JwtSettings, outbound: &Outbound) -> Result<Option<Arc<Self>>, AuthError> {
        let sources = [settings.jwks_file.is_some(), settings.jwks_url.is_some(), settings.discovery_url.is_some()];
        if sources.iter().filter(|given| **given).count() != 1 {
            return Err(AuthError::Config("jwt: give exactly one of jwks_file, jwks_url and discovery_url".into()));
        }
        let remote = match (&settings.jwks_url, &settings.discovery_url) {
            (Some(url), _) => Remote::Jwks(url.clone()),
            (_, Some(url)) => Remote::Discovery(url.clone()),
            _ => return Ok(None),
        };
        let (Remote::Jwks(url) | Remote::Discovery(url)) = &remote;
        if !is_secure_or_local(url) {
            return Err(AuthError::Config(format!(
                "jwt: {url} must be https:// (plain http only to this machine): signing keys must not cross a network in clear"
            )));
        }
        if settings.jwks_refresh < Duration::from_secs(1) {
            return Err(AuthError::Config("jwt: jwks_refresh must be at least 1s".into()));
        }
        Ok(Some(Arc::new(Self {
            remote,
            issuer: settings.issuer.clone(),
            refresh: settings.jwks_refresh,
            outbound: outbound.clone(),
            keys: RwLock::new(Arc::new(JwkSet { keys: Vec::new() })),
            fetching: tokio::sync::Mutex::new(None),
            fetches: Mutex::new(0),
        })))
    }

    fn current(&self) -> Arc<JwkSet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Fetches the keys now and keeps them; on failure the previous ones stay. Blocking.
    pub(crate) fn fetch_blocking(&self) -> Result<usize, String> {
        *self.fetches.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        let jwks_url = match &self.remote {
            Remote::Jwks(url) => url.clone(),
            Remote::Discovery(url) => {
                let document: Discovery = self.outbound.get_json(url).map_err(|err| err.to_string())?;
                if !is_secure_or_local(&document.jwks_uri) {
                    return Err(format!("the discovery document's jwks_uri {} is not https://", document.jwks_uri));
                }
                if let Some(issuer) = document.issuer.as_deref()
                    && issuer != self.issuer
                {
                    tracing::warn!(
                        document = issuer,
                        configured = %self.issuer,
                        "the discovery document names another issuer than jwt.issuer; tokens must carry jwt.issuer"
                    );
                }
                document.jwks_uri
            }
        };
        let set: RawKeySet = self.outbound.get_json(&jwks_url).map_err(|err| err.to_string())?;
        let keys = usable_keys(set, &jwks_url)?;
        let count = keys.keys.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(count)
    }

    async fn fetch(self: &Arc<Self>) -> Result<usize, String> {
        let keys = Arc::clone(self);
        tokio::task::spawn_blocking(move || keys.fetch_blocking()).await.map_err(|err| err.to_string())?
    }

    /// Called when a token names a key the set lacks: fetches again unless a miss did so less
    /// than [`MISS_REFETCH_INTERVAL`] ago. Returns once the set is as fresh as it will get.
    async fn refetch_for_miss(self: &Arc<Self>, kid: &str) {
        let mut last = self.fetching.lock().await;
        if self.current().keys.iter().any(|key| key.common.key_id.as_deref() == Some(kid)) {
            return; // another request's fetch brought it
        }
        if last.is_some_and(|at| at.elapsed() < MISS_REFETCH_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(count) => tracing::info!(kid, keys = count, "signing keys fetched again for a token's unknown key"),
            Err(err) => tracing::warn!(%err, "cannot fetch the signing keys; the previous ones stay in force"),
        }
    }

    /// Fetches the keys now, then every `jwks_refresh` (sooner after a failure), forever.
    pub(crate) async fn keep_fresh(self: Arc<Self>) {
        loop {
            let wait = {
                let _fetching = self.fetching.lock().await;
                match self.fetch().await {
                    Ok(count) => {
                        tracing::debug!(keys = count, "signing keys fetched");
                        self.refresh
                    }
                    Err(err) => {
                        tracing::warn!(%err, "cannot fetch the signing keys; the previous ones stay in force");
                        RETRY_AFTER_FAILURE.min(self.refresh)
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// How many fetches were attempted (for tests and logs).
    pub(crate) fn fetch_count(&self) -> u64 {
        *self.fetches.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The part of an OpenID discovery document used here.
#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
    #[serde(default)]
    issuer: Option<String>,
}

/// A key set as served: keys this library cannot use (another key type, say) are skipped one by
/// one rather than failing the whole set.
#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

fn usable_keys(set: RawKeySet, origin: &str) -> Result<JwkSet, String> {
    let mut keys = Vec::with_capacity(set.keys.len());
    for raw in set.keys {
        match serde_json::from_value::<Jwk>(raw) {
            Ok(key) => keys.push(key),
            Err(err) => tracing::debug!(%err, origin, "skipping a signing key this server cannot use"),
        }
    }
    if keys.is_empty() {
        return Err(format!("{origin} has no usable signing keys"));
    }
    Ok(JwkSet { keys })
}

/// Where a validator finds keys.
enum Keys {
    File(Arc<JwkSet>),
    Remote(Arc<RemoteKeys>),
}

/// The settings with their key set.
pub(crate) struct JwtValidator {
    settings: JwtSettings,
    keys: Keys,
}

impl JwtValidator {
    /// Reads the JWKS file, or takes the shared fetched keys.
    pub(crate) fn load(settings: JwtSettings, remote: Option<&Arc<RemoteKeys>>) -> Result<Self, AuthError> {
        let keys = match (&settings.jwks_file, remote) {
            (_, Some(remote)) => Keys::Remote(Arc::clone(remote)),
            (Some(path), None) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|err| AuthError::Config(format!("cannot read JWKS file {}: {err}", path.display())))?;
                let raw: RawKeySet = serde_json::from_str(&text)
                    .map_err(|err| AuthError::Config(format!("invalid JWKS file {}: {err}", path.display())))?;
                Keys::File(Arc::new(usable_keys(raw, &path.display().to_string()).map_err(AuthError::Config)?))
            }
            (None, None) => {
                return Err(AuthError::Config("jwt: give exactly one of jwks_file, jwks_url and discovery_url".into()));
            }
        };
        settings.limits.validate().map_err(|reason| AuthError::Config(format!("jwt: {reason}")))?;
        for subject in &settings.subjects {
            subject
                .limits
                .validate()
                .map_err(|reason| AuthError::Config(format!("jwt subject '{}': {reason}", subject.subject)))?;
        }
        Ok(Self { settings, keys })
    }

    pub(crate) fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    fn key_set(&self) -> Arc<JwkSet> {
        match &self.keys {
            Keys::File(keys) => Arc::clone(keys),
            Keys::Remote(remote) => remote.current(),
        }
    }

    /// Checks `token`, fetching the keys again once when it names a key the set lacks.
    pub(crate) async fn validate(&self, token: &str) -> Result<TokenSubject, String> {
        match self.validate_with_current_keys(token) {
            Err(Refusal::UnknownKey(kid)) => {
                if let Keys::Remote(remote) = &self.keys {
                    remote.refetch_for_miss(&kid).await;
                }
                self.validate_with_current_keys(token).map_err(|refusal| match refusal {
                    Refusal::UnknownKey(_) if self.key_set().keys.is_empty() => {
                        "no signing keys are loaded yet (the identity provider could not be reached)".into()
                    }
                    Refusal::UnknownKey(kid) => format!("no signing key with kid '{kid}'"),
                    Refusal::Invalid(reason) => reason,
                })
            }
            Err(Refusal::Invalid(reason)) => Err(reason),
            Ok(subject) => Ok(subject),
        }
    }

    /// Checks `token`'s signature and claims against the keys held now.
    pub(crate) fn validate_with_current_keys(&self, token: &str) -> Result<TokenSubject, Refusal> {
        let invalid = Refusal::Invalid;
        let header = jsonwebtoken::decode_header(token).map_err(|err| invalid(format!("malformed token: {err}")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(invalid(format!("token algorithm {:?} is not accepted (RS256 or ES256)", header.alg)));
        }
        let keys = self.key_set();
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid).ok_or_else(|| Refusal::UnknownKey(kid.clone()))?,
            None if keys.keys.len() == 1 => &keys.keys[0],
            None if keys.keys.is_empty() => return Err(Refusal::UnknownKey(String::new())),
            None => return Err(invalid("token has no kid and the key set has several keys".into())),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|err| invalid(format!("unusable signing key: {err}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map_err(|err| invalid(format!("invalid token: {err}")))?;
        let claim = &self.settings.subject_claim;
        let subject = data
            .claims
            .get(claim)
            .and_then(serde_json::Value::as_str)
            .filter(|subject| !subject.is_empty())
            .ok_or_else(|| invalid(format!("token has no '{claim}' claim")))?;
        Ok(TokenSubject { subject: subject.to_string(), role_models: self.role_models(&data.claims) })
    }

    /// The models the token's `roles` and `scp` values grant, or `None` if it holds none of the
    /// configured roles.
    fn role_models(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Option<Vec<String>> {
        if self.settings.roles.is_empty() {
            return None;
        }
        let mut held: Vec<&str> = Vec::new();
        if let Some(roles) = claims.get("roles").and_then(serde_json::Value::as_array) {
            held.extend(roles.iter().filter_map(serde_json::Value::as_str));
        }
        if let Some(scopes) = claims.get("scp").and_then(serde_json::Value::as_str) {
            held.extend(scopes.split_whitespace());
        }
        let mut models: Option<Vec<String>> = None;
        for role in self.settings.roles.iter().filter(|role| held.contains(&role.role.as_str())) {
            let granted = models.get_or_insert_with(Vec::new);
            for model in &role.models {
                if !granted.contains(model) {
                    granted.push(model.clone());
                }
            }
        }
        models
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> JwtSettings {
        toml::from_str(&format!("issuer = \"https://issuer.test\"\naudience = \"api://inferd\"\n{extra}")).unwrap()
    }

    #[test]
    fn exactly_one_key_source_and_no_keys_in_clear() {
        let outbound = Outbound::new(None, Duration::from_secs(1)).unwrap();
        let check = |extra: &str| RemoteKeys::from_settings(&settings(extra), &outbound).map(|remote| remote.is_some());
        assert!(check("").unwrap_err().to_string().contains("exactly one"));
        assert!(check("jwks_file = \"a\"\njwks_url = \"https://x/k\"").is_err());
        assert!(!check("jwks_file = \"a\"").unwrap());
        assert!(check("jwks_url = \"https://login.test/keys\"").unwrap());
        assert!(check("discovery_url = \"http://127.0.0.1:9/.well-known/openid-configuration\"").unwrap());
        let clear = check("discovery_url = \"http://login.test/.well-known/openid-configuration\"").unwrap_err();
        assert!(clear.to_string().contains("must be https://"), "{clear}");
    }

    #[test]
    fn roles_and_scopes_grant_their_models() {
        let validator = JwtValidator {
            settings: settings(
                "jwks_file = \"unused\"\n[[roles]]\nrole = \"Inference.Chat\"\nmodels = [\"chat\"]\n\
                 [[roles]]\nrole = \"embed.read\"\nmodels = [\"embed\", \"chat\"]\n",
            ),
            keys: Keys::File(Arc::new(JwkSet { keys: Vec::new() })),
        };
        let claims = |value: serde_json::Value| value.as_object().unwrap().clone();
        assert_eq!(
            validator.role_models(&claims(serde_json::json!({"roles": ["Inference.Chat", "Other"]}))),
            Some(vec!["chat".to_string()])
        );
        assert_eq!(
            validator.role_models(&claims(serde_json::json!({"roles": ["Inference.Chat"], "scp": "a embed.read"}))),
            Some(vec!["chat".to_string(), "embed".to_string()])
        );
        assert_eq!(validator.role_models(&claims(serde_json::json!({"scp": "a b"}))), None);
        assert_eq!(validator.role_models(&claims(serde_json::json!({}))), None);
    }

    #[test]
    fn keys_this_server_cannot_read_are_skipped_not_fatal() {
        let set: RawKeySet = serde_json::from_value(serde_json::json!({"keys": [
            "not a key",
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}))
        .unwrap();
        let keys = usable_keys(set, "test").unwrap();
        assert_eq!(keys.keys.len(), 1);
        let none: RawKeySet = serde_json::from_value(serde_json::json!({"keys": [42]})).unwrap();
        assert!(usable_keys(none, "test").unwrap_err().contains("no usable"));
    }
}
