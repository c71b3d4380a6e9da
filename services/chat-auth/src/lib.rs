//! Identity of docs/api.md#identity-and-tokens, shared by chat-core and the gateway: which tokens
//! are accepted, who they name, and development tokens for local use.
//!
//! Both services check every token themselves (no trust by network
//! position), so the rules live here once. Nothing in this crate logs, and
//! no error or `Debug` output contains a token or a key.

#![warn(missing_docs)]

mod verified;

use std::{collections::HashSet, fmt, str::FromStr, sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// Whether `id` is a valid user id: 1–128 characters of `[A-Za-z0-9_.:@-]`.
/// Token subjects and thread participants follow the same rule.
pub fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

pub use verified::VerifiedTokens;

/// The token of an `Authorization` header value: `Bearer <token>`.
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::MissingToken)?;
    let (scheme, token) = header.split_once(' ').ok_or(AuthError::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(token)
}

/// What a token lets its bearer be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A participant acting for themself.
    User,
    /// An internal service (`"role": "service"`): reads any thread, never
    /// acts as a user.
    Service,
}

/// The verified bearer of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim: who is acting.
    pub subject: String,
    /// What the caller may do: from the `role` claim.
    pub role: Role,
}

impl Identity {
    /// Whether this is a service token.
    pub fn is_service(&self) -> bool {
        self.role == Role::Service
    }
}

/// The signing algorithms docs/api.md#identity-and-tokens allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with the shared `JWT_SECRET`.
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256, checked with a PEM public key.
    Rs256,
    /// ECDSA P-256 with SHA-256, checked with a PEM public key.
    Es256,
}

impl JwtAlgorithm {
    fn as_jsonwebtoken(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }

    /// The name used in `JWT_ALGORITHM` and in token headers.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }
}

impl FromStr for JwtAlgorithm {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_uppercase().as_str() {
            "HS256" => Ok(JwtAlgorithm::Hs256),
            "RS256" => Ok(JwtAlgorithm::Rs256),
            "ES256" => Ok(JwtAlgorithm::Es256),
            _ => Err(()),
        }
    }
}

/// The key tokens are checked with.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// The HS256 shared secret.
    Secret(Vec<u8>),
    /// A PEM public key for RS256 or ES256.
    PublicKeyPem(Vec<u8>),
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtKey::Secret(_) => f.write_str("Secret(<redacted>)"),
            JwtKey::PublicKeyPem(pem) => write!(f, "PublicKeyPem({} bytes)", pem.len()),
        }
    }
}

/// How tokens are checked: the `JWT_*` variables of the README's configuration table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// The one algorithm accepted; tokens naming any other are refused.
    pub algorithm: JwtAlgorithm,
    /// The key that fits `algorithm`.
    pub key: JwtKey,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
}

/// A `JWT_*` variable with a value that cannot be used. The message names
/// the variable and never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct JwtConfigError {
    variable: &'static str,
    message: String,
}

impl JwtConfigError {
    fn new(variable: &'static str, message: impl Into<String>) -> Self {
        JwtConfigError {
            variable,
            message: message.into(),
        }
    }

    /// The variable at fault.
    pub fn variable(&self) -> &'static str {
        self.variable
    }
}

impl JwtSettings {
    /// Reads `JWT_SECRET`, `JWT_PUBLIC_KEY_FILE`, `JWT_ALGORITHM`,
    /// `JWT_ISSUER` and `JWT_AUDIENCE` through `lookup`. `Ok(None)` when
    /// no key and no algorithm is configured at all: the caller decides
    /// whether that is allowed. Empty values count as unset.
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<JwtSettings>, JwtConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let secret = get("JWT_SECRET");
        let key_file = get("JWT_PUBLIC_KEY_FILE");
        let algorithm = get("JWT_ALGORITHM");
        if secret.is_none() && key_file.is_none() && algorithm.is_none() {
            return Ok(None);
        }
        let algorithm = match algorithm {
            Some(name) => name.parse::<JwtAlgorithm>().map_err(|()| {
                JwtConfigError::new(
                    "JWT_ALGORITHM",
                    format!("expected HS256, RS256 or ES256, got {name:?}"),
                )
            })?,
            None if key_file.is_some() => {
                return Err(JwtConfigError::new(
                    "JWT_ALGORITHM",
                    "set RS256 or ES256 to go with JWT_PUBLIC_KEY_FILE",
                ));
            }
            None => JwtAlgorithm::Hs256,
        };
        let key = match algorithm {
            JwtAlgorithm::Hs256 => {
                if key_file.is_some() {
                    return Err(JwtConfigError::new(
                        "JWT_PUBLIC_KEY_FILE",
                        "HS256 uses JWT_SECRET, not a public key",
                    ));
                }
                let secret = secret
                    .ok_or_else(|| JwtConfigError::new("JWT_SECRET", "required for HS256"))?;
                JwtKey::Secret(secret.into_bytes())
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                let path = key_file.ok_or_else(|| {
                    JwtConfigError::new(
                        "JWT_PUBLIC_KEY_FILE",
                        format!("required for {}", algorithm.as_str()),
                    )
                })?;
                let pem = std::fs::read(&path).map_err(|err| {
                    JwtConfigError::new("JWT_PUBLIC_KEY_FILE", format!("cannot read {path}: {err}"))
                })?;
                JwtKey::PublicKeyPem(pem)
            }
        };
        let settings = JwtSettings {
            algorithm,
            key,
            issuer: get("JWT_ISSUER"),
            audience: get("JWT_AUDIENCE"),
        };
        // Parse the key now so a bad one stops start-up.
        TokenVerifier::new(&settings)?;
        Ok(Some(settings))
    }
}

/// Why a token was refused. The text is short and safe to send back to the
/// caller: it never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer <token>` header.
    #[error("missing token")]
    MissingToken,
    /// Not a JWT: wrong shape, bad encoding, claims that are not JSON, or
    /// no `exp`.
    #[error("malformed token")]
    MalformedToken,
    /// `exp` is in the past (allowing [`CLOCK_LEEWAY_SECONDS`]).
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future (allowing [`CLOCK_LEEWAY_SECONDS`]):
    /// a token minted for later, or by a clock that cannot be trusted, is
    /// refused until its time comes.
    #[error("token not yet valid")]
    NotYetValid,
    /// The signature does not match the configured key.
    #[error("invalid token signature")]
    InvalidSignature,
    /// The header names an algorithm other than the configured one
    /// (`none` included).
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    /// No `sub` claim.
    #[error("token has no subject")]
    MissingSubject,
    /// `sub` is not a valid user id (see [`is_valid_user_id`]).
    #[error("token subject is not a valid user id")]
    InvalidSubject,
    /// `iss` is missing or wrong while an issuer is configured.
    #[error("token issuer not accepted")]
    InvalidIssuer,
    /// `aud` is missing or wrong while an audience is configured.
    #[error("token audience not accepted")]
    InvalidAudience,
}

/// How far, in seconds, `exp`, `nbf` and `iat` may be off the verifier's
/// clock. One value for all three, so that a token is never valid by one
/// rule and already or not yet by another; zero because docs/api.md#identity-and-tokens refuses an
/// expired token outright.
pub const CLOCK_LEEWAY_SECONDS: u64 = 0;

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: serde_json::Value,
    #[serde(default)]
    role: Option<serde_json::Value>,
    /// Checked here: jsonwebtoken reads `nbf` but never `iat`.
    #[serde(default)]
    iat: Option<serde_json::Value>,
    /// Checked by jsonwebtoken; read here for [`TokenVerifier::verify_until`].
    #[serde(default)]
    exp: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct HeaderAlg {
    alg: serde_json::Value,
}

struct VerifierInner {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Checks tokens against one configuration. Cheap to clone: one is shared
/// by every request.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<VerifierInner>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("algorithm", &self.inner.algorithm)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Parses the key once; a key that does not fit the algorithm is a
    /// configuration error.
    pub fn new(settings: &JwtSettings) -> Result<Self, JwtConfigError> {
        let key = match (&settings.key, settings.algorithm) {
            (JwtKey::Secret(secret), JwtAlgorithm::Hs256) => {
                if secret.is_empty() {
                    return Err(JwtConfigError::new("JWT_SECRET", "must not be empty"));
                }
                DecodingKey::from_secret(secret)
            }
            (JwtKey::PublicKeyPem(pem), JwtAlgorithm::Rs256) => DecodingKey::from_rsa_pem(pem)
                .map_err(|_| {
                    JwtConfigError::new("JWT_PUBLIC_KEY_FILE", "not a PEM RSA public key")
                })?,
            (JwtKey::PublicKeyPem(pem), JwtAlgorithm::Es256) => DecodingKey::from_ec_pem(pem)
                .map_err(|_| {
                    JwtConfigError::new("JWT_PUBLIC_KEY_FILE", "not a PEM EC (P-256) public key")
                })?,
            (JwtKey::Secret(_), _) => {
                return Err(JwtConfigError::new(
                    "JWT_ALGORITHM",
                    "RS256 and ES256 need JWT_PUBLIC_KEY_FILE",
                ));
            }
            (JwtKey::PublicKeyPem(_), JwtAlgorithm::Hs256) => {
                return Err(JwtConfigError::new(
                    "JWT_ALGORITHM",
                    "HS256 needs JWT_SECRET, not a public key",
                ));
            }
        };
        let mut validation = Validation::new(settings.algorithm.as_jsonwebtoken());
        validation.leeway = CLOCK_LEEWAY_SECONDS;
        validation.validate_exp = true;
        // A token minted for later must not work now.
        validation.validate_nbf = true;
        // `sub` is checked in `verify`: jsonwebtoken would report a
        // non-string `sub` as missing rather than invalid.
        let mut required = vec!["exp"];
        match &settings.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &settings.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // docs/api.md#identity-and-tokens: a token carrying `aud` is accepted when no audience
            // is configured.
            None => validation.validate_aud = false,
        }
        validation.required_spec_claims = required
            .into_iter()
            .map(str::to_owned)
            .collect::<HashSet<_>>();
        Ok(TokenVerifier {
            inner: Arc::new(VerifierInner {
                algorithm: settings.algorithm,
                key,
                validation,
            }),
        })
    }

    /// Checks an `Authorization` header value: `Bearer <token>`.
    pub fn verify_bearer(&self, header: Option<&str>) -> Result<Identity, AuthError> {
        self.verify(bearer_token(header)?)
    }

    /// Checks a bare token and says who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_until(token).map(|(identity, _)| identity)
    }

    /// [`Self::verify`], also saying until when (Unix seconds, its `exp`)
    /// the token stays valid: every other check it passed holds for good.
    pub fn verify_until(&self, token: &str) -> Result<(Identity, u64), AuthError> {
        let inner = &*self.inner;
        self.check_header_algorithm(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &inner.key, &inner.validation).map_err(
            |err| match err.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::InvalidSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::WrongAlgorithm
                }
                ErrorKind::InvalidIssuer => AuthError::InvalidIssuer,
                ErrorKind::InvalidAudience => AuthError::InvalidAudience,
                ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                    "iss" => AuthError::InvalidIssuer,
                    "aud" => AuthError::InvalidAudience,
                    _ => AuthError::MalformedToken,
                },
                _ => AuthError::MalformedToken,
            },
        )?;
        match data.claims.iat {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Number(iat)) => {
                let now = jsonwebtoken::get_current_timestamp();
                // A float `iat` counts as its whole seconds, as jsonwebtoken
                // reads `exp` and `nbf`.
                let iat = iat.as_f64().ok_or(AuthError::MalformedToken)?;
                if iat > (now + CLOCK_LEEWAY_SECONDS) as f64 {
                    return Err(AuthError::NotYetValid);
                }
            }
            Some(_) => return Err(AuthError::MalformedToken),
        }
        let subject = match data.claims.sub {
            serde_json::Value::String(sub) if is_valid_user_id(&sub) => sub,
            serde_json::Value::Null => return Err(AuthError::MissingSubject),
            _ => return Err(AuthError::InvalidSubject),
        };
        let role = match data.claims.role {
            Some(serde_json::Value::String(role)) if role == "service" => Role::Service,
            _ => Role::User,
        };
        // Required and checked by jsonwebtoken, which reads a float as its
        // whole seconds.
        let exp = data
            .claims
            .exp
            .as_ref()
            .and_then(serde_json::Value::as_f64)
            .ok_or(AuthError::MalformedToken)?;
        Ok((Identity { subject, role }, exp as u64))
    }

    /// Refuses a token whose header names another algorithm (`none`
    /// included) before any signature work.
    fn check_header_algorithm(&self, token: &str) -> Result<(), AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::MalformedToken);
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .map_err(|_| AuthError::MalformedToken)?;
        let header: HeaderAlg =
            serde_json::from_slice(&bytes).map_err(|_| AuthError::MalformedToken)?;
        match header.alg {
            serde_json::Value::String(alg) if alg == self.inner.algorithm.as_str() => Ok(()),
            serde_json::Value::String(_) => Err(AuthError::WrongAlgorithm),
            _ => Err(AuthError::MalformedToken),
        }
    }
}

/// Why a development token could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The subject would not pass verification.
    #[error("the subject is not a valid user id (1-128 characters of [A-Za-z0-9_.:@-])")]
    InvalidSubject,
    /// The signing library refused; not expected with an HMAC key.
    #[error("signing failed")]
    Signing,
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Signs HS256 tokens for development (`chat-core token`).
pub struct TokenIssuer {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer").finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// An issuer signing with `secret`, adding `iss`/`aud` when given.
    pub fn new(secret: &[u8], issuer: Option<String>, audience: Option<String>) -> Self {
        TokenIssuer {
            key: EncodingKey::from_secret(secret),
            issuer,
            audience,
        }
    }

    /// A token for `subject` valid for `ttl`.
    pub fn issue(&self, subject: &str, role: Role, ttl: Duration) -> Result<String, IssueError> {
        if !is_valid_user_id(subject) {
            return Err(IssueError::InvalidSubject);
        }
        let now = jsonwebtoken::get_current_timestamp();
        let claims = IssuedClaims {
            sub: subject,
            exp: now.saturating_add(ttl.as_secs()),
            iat: now,
            role: (role == Role::Service).then_some("service"),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|_| IssueError::Signing)
    }
}
