//! JWT bearer tokens, as Microsoft Entra ID and other OpenID providers issue them: RS256 or
//! ES256 signatures checked against the keys of a JWKS file, then `iss`, `aud`, `exp` and `nbf`
//! (with a small leeway for clock skew). The caller is the token's subject claim.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::AuthError;
use crate::quota::Limits;

/// How tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The identity provider's signing keys, as a JSON Web Key Set file (what the provider's
    /// `jwks_uri` serves); read at start and again on SIGHUP.
    pub jwks_file: PathBuf,
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
    /// The models every token may use; all when absent. `subjects` entries override it.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Limits per minute for each subject, unless its `subjects` entry sets its own.
    #[serde(flatten)]
    pub limits: Limits,
    /// Per-subject models and limits.
    #[serde(default)]
    pub subjects: Vec<JwtSubject>,
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

fn default_subject_claim() -> String {
    "sub".into()
}

/// A validated token's caller.
pub(crate) struct TokenSubject {
    pub(crate) subject: String,
}

/// The settings with their key set loaded.
pub(crate) struct JwtValidator {
    settings: JwtSettings,
    keys: JwkSet,
}

impl JwtValidator {
    /// Reads the JWKS file.
    pub(crate) fn load(settings: JwtSettings) -> Result<Self, AuthError> {
        let path = &settings.jwks_file;
        let text = std::fs::read_to_string(path)
            .map_err(|err| AuthError::Config(format!("cannot read JWKS file {}: {err}", path.display())))?;
        let keys: JwkSet = serde_json::from_str(&text)
            .map_err(|err| AuthError::Config(format!("invalid JWKS file {}: {err}", path.display())))?;
        if keys.keys.is_empty() {
            return Err(AuthError::Config(format!("JWKS file {} has no keys", path.display())));
        }
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

    /// Checks `token`'s signature and claims; the reason it is refused otherwise.
    pub(crate) fn validate(&self, token: &str) -> Result<TokenSubject, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|err| format!("malformed token: {err}"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(format!("token algorithm {:?} is not accepted (RS256 or ES256)", header.alg));
        }
        let jwk = match &header.kid {
            Some(kid) => self.keys.find(kid).ok_or_else(|| format!("no signing key with kid '{kid}'"))?,
            None if self.keys.keys.len() == 1 => &self.keys.keys[0],
            None => return Err("token has no kid and the key set has several keys".into()),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|err| format!("unusable signing key: {err}"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map_err(|err| format!("invalid token: {err}"))?;
        let claim = &self.settings.subject_claim;
        let subject = data
            .claims
            .get(claim)
            .and_then(serde_json::Value::as_str)
            .filter(|subject| !subject.is_empty())
            .ok_or_else(|| format!("token has no '{claim}' claim"))?;
        Ok(TokenSubject { subject: subject.to_string() })
    }
}
