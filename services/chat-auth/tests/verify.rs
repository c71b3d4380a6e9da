//! Every way a token can be good or bad (docs/api.md#identity-and-tokens), with real signed tokens.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chat_auth::{
    AuthError, IssueError, JwtAlgorithm, JwtKey, JwtSettings, Role, TokenIssuer, TokenVerifier,
    is_valid_user_id,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &[u8] = b"a-test-secret-of-reasonable-length";
const RSA_PRIVATE: &[u8] = include_bytes!("keys/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("keys/rsa-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("keys/ec-private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("keys/ec-public.pem");

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn hs256(claims: &Value) -> String {
    hs256_with(SECRET, claims)
}

fn hs256_with(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn rs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    )
    .unwrap()
}

fn es256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        claims,
        &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
    )
    .unwrap()
}

fn settings(algorithm: JwtAlgorithm, key: JwtKey) -> JwtSettings {
    JwtSettings {
        algorithm,
        key,
        issuer: None,
        audience: None,
    }
}

fn hs_verifier() -> TokenVerifier {
    TokenVerifier::new(&settings(
        JwtAlgorithm::Hs256,
        JwtKey::Secret(SECRET.to_vec()),
    ))
    .unwrap()
}

fn rs_verifier() -> TokenVerifier {
    TokenVerifier::new(&settings(
        JwtAlgorithm::Rs256,
        JwtKey::PublicKeyPem(RSA_PUBLIC.to_vec()),
    ))
    .unwrap()
}

fn es_verifier() -> TokenVerifier {
    TokenVerifier::new(&settings(
        JwtAlgorithm::Es256,
        JwtKey::PublicKeyPem(EC_PUBLIC.to_vec()),
    ))
    .unwrap()
}

fn valid() -> Value {
    json!({"sub": "alice", "exp": now() + 600})
}

#[test]
fn a_good_token_names_its_user() {
    let identity = hs_verifier().verify(&hs256(&valid())).unwrap();
    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.role, Role::User);
    assert!(!identity.is_service());
}

#[test]
fn role_service_makes_a_service_token() {
    let token = hs256(&json!({"sub": "payments", "exp": now() + 600, "role": "service"}));
    let identity = hs_verifier().verify(&token).unwrap();
    assert_eq!(identity.role, Role::Service);
    assert!(identity.is_service());
    for role in [json!("admin"), json!(1), json!(["service"])] {
        let token = hs256(&json!({"sub": "u", "exp": now() + 600, "role": role}));
        assert_eq!(
            hs_verifier().verify(&token).unwrap().role,
            Role::User,
            "{role}"
        );
    }
}

#[test]
fn the_bearer_scheme_is_required() {
    let verifier = hs_verifier();
    let token = hs256(&valid());
    assert_eq!(verifier.verify_bearer(None), Err(AuthError::MissingToken));
    assert_eq!(
        verifier.verify_bearer(Some("")),
        Err(AuthError::MissingToken)
    );
    assert_eq!(
        verifier.verify_bearer(Some(&token)),
        Err(AuthError::MissingToken)
    );
    assert_eq!(
        verifier.verify_bearer(Some(&format!("Basic {token}"))),
        Err(AuthError::MissingToken)
    );
    assert_eq!(
        verifier.verify_bearer(Some("Bearer ")),
        Err(AuthError::MissingToken)
    );
    assert_eq!(
        verifier
            .verify_bearer(Some(&format!("Bearer {token}")))
            .unwrap()
            .subject,
        "alice"
    );
    assert_eq!(
        verifier
            .verify_bearer(Some(&format!("bearer {token}")))
            .unwrap()
            .subject,
        "alice"
    );
}

#[test]
fn malformed_tokens_are_refused() {
    let verifier = hs_verifier();
    let token = hs256(&valid());
    let (head, _) = token.rsplit_once('.').unwrap();
    for bad in ["garbage", "a.b", "a.b.c.d", "...", head, "e30.e30.sig"] {
        assert_eq!(
            verifier.verify(bad),
            Err(AuthError::MalformedToken),
            "{bad}"
        );
    }
    // Claims that are not JSON: the signature is checked first.
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode("not json");
    assert_eq!(
        verifier.verify(&format!("{header}.{body}.c2ln")),
        Err(AuthError::InvalidSignature)
    );
    // Correctly signed claims that are not a JSON object.
    assert_eq!(
        verifier.verify(&hs256(&json!("alice"))),
        Err(AuthError::MalformedToken)
    );
}

#[test]
fn expired_tokens_are_refused() {
    let token = hs256(&json!({"sub": "alice", "exp": now() - 3600}));
    assert_eq!(hs_verifier().verify(&token), Err(AuthError::Expired));
    let token = hs256(&json!({"sub": "alice", "exp": now() - 1}));
    assert_eq!(hs_verifier().verify(&token), Err(AuthError::Expired));
}

#[test]
fn tokens_not_yet_valid_are_refused() {
    let verifier = hs_verifier();
    for claims in [
        json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}),
        json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 1}),
        json!({"sub": "alice", "exp": now() + 7200, "iat": now() + 3600}),
        json!({"sub": "alice", "exp": now() + 7200, "iat": now() + 1}),
        json!({"sub": "alice", "exp": now() + 7200, "iat": (now() + 60) as f64 + 0.5}),
    ] {
        assert_eq!(
            verifier.verify(&hs256(&claims)),
            Err(AuthError::NotYetValid),
            "{claims}"
        );
    }
    assert_eq!(AuthError::NotYetValid.to_string(), "token not yet valid");
    // Now, or in the past, is fine; so is a token without them.
    for claims in [
        json!({"sub": "alice", "exp": now() + 600, "nbf": now(), "iat": now()}),
        json!({"sub": "alice", "exp": now() + 600, "nbf": now() - 60, "iat": now() - 60}),
        json!({"sub": "alice", "exp": now() + 600, "iat": null}),
    ] {
        assert!(verifier.verify(&hs256(&claims)).is_ok(), "{claims}");
    }
    // Claims that are not times are malformed, not ignored.
    for claims in [
        json!({"sub": "alice", "exp": now() + 600, "nbf": "later"}),
        json!({"sub": "alice", "exp": now() + 600, "iat": "now"}),
        json!({"sub": "alice", "exp": now() + 600, "iat": [1]}),
    ] {
        assert_eq!(
            verifier.verify(&hs256(&claims)),
            Err(AuthError::MalformedToken),
            "{claims}"
        );
    }
}

#[test]
fn exp_is_required() {
    for claims in [
        json!({"sub": "alice"}),
        json!({"sub": "alice", "exp": "tomorrow"}),
    ] {
        assert_eq!(
            hs_verifier().verify(&hs256(&claims)),
            Err(AuthError::MalformedToken),
            "{claims}"
        );
    }
}

#[test]
fn a_wrong_signature_is_refused() {
    let token = hs256_with(b"some-other-secret", &valid());
    assert_eq!(
        hs_verifier().verify(&token),
        Err(AuthError::InvalidSignature)
    );
    // A tampered payload under the original signature.
    let good = hs256(&valid());
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(json!({"sub": "mallory", "exp": now() + 600}).to_string());
    parts[1] = &forged;
    assert_eq!(
        hs_verifier().verify(&parts.join(".")),
        Err(AuthError::InvalidSignature)
    );
}

#[test]
fn alg_none_is_refused() {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(valid().to_string());
    // The usual unsigned form: three segments, the last one empty.
    assert_eq!(
        hs_verifier().verify(&format!("{header}.{body}.")),
        Err(AuthError::WrongAlgorithm)
    );
    assert_eq!(
        rs_verifier().verify(&format!("{header}.{body}.")),
        Err(AuthError::WrongAlgorithm)
    );
    // Without the trailing dot it is not even a JWS.
    assert_eq!(
        hs_verifier().verify(&format!("{header}.{body}")),
        Err(AuthError::MalformedToken)
    );
    // Case games do not help.
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"None","typ":"JWT"}"#);
    assert_eq!(
        hs_verifier().verify(&format!("{header}.{body}.")),
        Err(AuthError::WrongAlgorithm)
    );
}

#[test]
fn an_rs256_token_is_refused_by_an_hs256_configuration() {
    assert_eq!(
        hs_verifier().verify(&rs256(&valid())),
        Err(AuthError::WrongAlgorithm)
    );
}

#[test]
fn an_hs256_token_signed_with_the_public_key_is_refused_by_rs256() {
    // The classic key-confusion attack: the public key used as an HMAC secret.
    let token = hs256_with(RSA_PUBLIC, &valid());
    assert_eq!(rs_verifier().verify(&token), Err(AuthError::WrongAlgorithm));
    let token = hs256_with(EC_PUBLIC, &valid());
    assert_eq!(es_verifier().verify(&token), Err(AuthError::WrongAlgorithm));
}

#[test]
fn rs256_and_es256_accept_their_own_tokens() {
    assert_eq!(
        rs_verifier().verify(&rs256(&valid())).unwrap().subject,
        "alice"
    );
    let es = es_verifier();
    assert_eq!(es.verify(&es256(&valid())).unwrap().subject, "alice");
    assert_eq!(es.verify(&rs256(&valid())), Err(AuthError::WrongAlgorithm));
    assert_eq!(
        rs_verifier().verify(&es256(&valid())),
        Err(AuthError::WrongAlgorithm)
    );
}

#[test]
fn a_missing_subject_is_refused() {
    for claims in [
        json!({"exp": now() + 600}),
        json!({"sub": null, "exp": now() + 600}),
    ] {
        assert_eq!(
            hs_verifier().verify(&hs256(&claims)),
            Err(AuthError::MissingSubject),
            "{claims}"
        );
    }
    // RS256 too: the check does not depend on the algorithm.
    assert_eq!(
        rs_verifier().verify(&rs256(&json!({"exp": now() + 600}))),
        Err(AuthError::MissingSubject)
    );
}

#[test]
fn a_subject_outside_the_user_id_charset_is_refused() {
    for sub in [
        json!("bob smith"),
        json!("x".repeat(129)),
        json!(""),
        json!("a/b"),
        json!(42),
    ] {
        let token = hs256(&json!({"sub": sub, "exp": now() + 600}));
        assert_eq!(
            hs_verifier().verify(&token),
            Err(AuthError::InvalidSubject),
            "{sub}"
        );
    }
    // jsonwebtoken's own claim parsing already chokes on a non-string
    // sequence, before the subject is looked at.
    let token = hs256(&json!({"sub": ["alice"], "exp": now() + 600}));
    assert_eq!(hs_verifier().verify(&token), Err(AuthError::MalformedToken));
    let token = hs256(&json!({"sub": "a.b:c@d-e_f", "exp": now() + 600}));
    assert!(hs_verifier().verify(&token).is_ok());
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let verifier = TokenVerifier::new(&JwtSettings {
        algorithm: JwtAlgorithm::Hs256,
        key: JwtKey::Secret(SECRET.to_vec()),
        issuer: Some("https://id.example".into()),
        audience: Some("chat".into()),
    })
    .unwrap();
    let exp = now() + 600;
    let good = hs256(&json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "chat"}));
    assert!(verifier.verify(&good).is_ok());
    let cases = [
        (
            json!({"sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "chat"}),
            AuthError::InvalidIssuer,
        ),
        (
            json!({"sub": "a", "exp": exp, "aud": "chat"}),
            AuthError::InvalidIssuer,
        ),
        (
            json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "billing"}),
            AuthError::InvalidAudience,
        ),
        (
            json!({"sub": "a", "exp": exp, "iss": "https://id.example"}),
            AuthError::InvalidAudience,
        ),
    ];
    for (claims, expected) in cases {
        assert_eq!(verifier.verify(&hs256(&claims)), Err(expected), "{claims}");
    }
}

#[test]
fn an_audience_is_accepted_when_none_is_configured() {
    let token =
        hs256(&json!({"sub": "a", "exp": now() + 600, "aud": "anything", "iss": "whoever"}));
    assert_eq!(hs_verifier().verify(&token).unwrap().subject, "a");
}

#[test]
fn issued_tokens_round_trip() {
    let issuer = TokenIssuer::new(SECRET, None, None);
    let token = issuer
        .issue("alice", Role::User, Duration::from_secs(60))
        .unwrap();
    assert_eq!(hs_verifier().verify(&token).unwrap().subject, "alice");
    let token = issuer
        .issue("jobs", Role::Service, Duration::from_secs(60))
        .unwrap();
    assert_eq!(hs_verifier().verify(&token).unwrap().role, Role::Service);
    assert_eq!(
        issuer.issue("bad id", Role::User, Duration::from_secs(60)),
        Err(IssueError::InvalidSubject)
    );

    let strict = TokenVerifier::new(&JwtSettings {
        algorithm: JwtAlgorithm::Hs256,
        key: JwtKey::Secret(SECRET.to_vec()),
        issuer: Some("iss-1".into()),
        audience: Some("aud-1".into()),
    })
    .unwrap();
    let with_claims = TokenIssuer::new(SECRET, Some("iss-1".into()), Some("aud-1".into()));
    let token = with_claims
        .issue("alice", Role::User, Duration::from_secs(60))
        .unwrap();
    assert_eq!(strict.verify(&token).unwrap().subject, "alice");
}

#[test]
fn user_ids() {
    assert!(is_valid_user_id("alice"));
    assert!(is_valid_user_id(&"a".repeat(128)));
    assert!(!is_valid_user_id(&"a".repeat(129)));
    assert!(!is_valid_user_id(""));
    assert!(!is_valid_user_id("ålice"));
    assert!(!is_valid_user_id("a,b"));
}

fn from_env(vars: &[(&str, &str)]) -> Result<Option<JwtSettings>, chat_auth::JwtConfigError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    JwtSettings::from_env(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}

#[test]
fn configuration_from_the_environment() {
    assert_eq!(from_env(&[]).unwrap(), None);
    assert_eq!(from_env(&[("JWT_SECRET", "")]).unwrap(), None);
    let hs = from_env(&[("JWT_SECRET", "s3cret"), ("JWT_ISSUER", "me")])
        .unwrap()
        .unwrap();
    assert_eq!(hs.algorithm, JwtAlgorithm::Hs256);
    assert_eq!(hs.issuer.as_deref(), Some("me"));
    assert!(
        !format!("{hs:?}").contains("s3cret"),
        "Debug must not show the secret"
    );

    let rsa_path = key_path("rsa-public.pem");
    let ec_path = key_path("ec-public.pem");
    let not_a_key = key_path("README.md");
    let rs = from_env(&[
        ("JWT_ALGORITHM", "RS256"),
        ("JWT_PUBLIC_KEY_FILE", &rsa_path),
        ("JWT_AUDIENCE", "chat"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(rs.algorithm, JwtAlgorithm::Rs256);
    assert_eq!(rs.key, JwtKey::PublicKeyPem(RSA_PUBLIC.to_vec()));
    assert_eq!(rs.audience.as_deref(), Some("chat"));
    assert_eq!(
        TokenVerifier::new(&rs)
            .unwrap()
            .verify(&rs256(
                &json!({"sub": "a", "exp": now() + 60, "aud": "chat"})
            ))
            .unwrap()
            .subject,
        "a"
    );
    let es = from_env(&[
        ("JWT_ALGORITHM", "es256"),
        ("JWT_PUBLIC_KEY_FILE", &ec_path),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(es.algorithm, JwtAlgorithm::Es256);

    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("JWT_ALGORITHM", "HS512"), ("JWT_SECRET", "s")],
            "JWT_ALGORITHM",
        ),
        (vec![("JWT_ALGORITHM", "HS256")], "JWT_SECRET"),
        (
            vec![("JWT_ALGORITHM", "HS256"), ("JWT_SECRET", "")],
            "JWT_SECRET",
        ),
        (vec![("JWT_ALGORITHM", "RS256")], "JWT_PUBLIC_KEY_FILE"),
        (vec![("JWT_PUBLIC_KEY_FILE", &rsa_path)], "JWT_ALGORITHM"),
        (
            vec![
                ("JWT_ALGORITHM", "RS256"),
                ("JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem"),
            ],
            "JWT_PUBLIC_KEY_FILE",
        ),
        (
            vec![
                ("JWT_ALGORITHM", "ES256"),
                ("JWT_PUBLIC_KEY_FILE", &rsa_path),
            ],
            "JWT_PUBLIC_KEY_FILE",
        ),
        (
            vec![
                ("JWT_ALGORITHM", "RS256"),
                ("JWT_PUBLIC_KEY_FILE", &ec_path),
            ],
            "JWT_PUBLIC_KEY_FILE",
        ),
        (
            vec![
                ("JWT_ALGORITHM", "RS256"),
                ("JWT_PUBLIC_KEY_FILE", &not_a_key),
            ],
            "JWT_PUBLIC_KEY_FILE",
        ),
        (
            vec![
                ("JWT_SECRET", "s"),
                ("JWT_PUBLIC_KEY_FILE", &rsa_path),
                ("JWT_ALGORITHM", "HS256"),
            ],
            "JWT_PUBLIC_KEY_FILE",
        ),
    ];
    for (vars, variable) in cases {
        let err = from_env(&vars).unwrap_err();
        assert_eq!(err.variable(), variable, "{vars:?}: {err}");
        assert!(err.to_string().starts_with(variable), "{err}");
    }
    let err = from_env(&[("JWT_ALGORITHM", "XYZ"), ("JWT_SECRET", "topsecret")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"JWT_ALGORITHM: expected HS256, RS256 or ES256, got "XYZ""#
    );
    assert!(!err.to_string().contains("topsecret"));
}

#[test]
fn debug_output_never_shows_the_secret() {
    let key = JwtKey::Secret(b"hunter2-secret".to_vec());
    assert!(!format!("{key:?}").contains("hunter2"));
    let verifier = TokenVerifier::new(&settings(JwtAlgorithm::Hs256, key)).unwrap();
    assert!(!format!("{verifier:?}").contains("hunter2"));
    let issuer = TokenIssuer::new(b"hunter2-secret", None, None);
    assert!(!format!("{issuer:?}").contains("hunter2"));
}

#[test]
fn the_verifier_is_shared_across_threads() {
    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
    assert_shareable::<TokenVerifier>();
    let verifier = hs_verifier();
    let token = hs256(&valid());
    std::thread::spawn(move || verifier.verify(&token).unwrap())
        .join()
        .unwrap();
}

fn key_path(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}
