//! Tokens already verified, remembered until they expire.
//!
//! Why: chat-core checks the token of every call the gateways pass it over
//! their call streams, thousands a second, and those are the same few
//! thousand tokens over and over. A signature check and two JSON parses per
//! call cost chat-core more than a tenth of its send path; a token that
//! verified once stays valid until its `exp` (every other check it passed,
//! `nbf` and `iat` included, cannot turn false later), so the answer can be
//! kept until then.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{AuthError, Identity, TokenVerifier};

/// How many tokens are remembered. Beyond it, expired ones are forgotten
/// first and then everything, so memory stays bounded whatever callers send.
const CAPACITY: usize = 16_384;

/// A [`TokenVerifier`] that remembers who each good token names until the
/// token expires. Failures are never remembered: a bad token costs a full
/// check every time, as it would without this. Cheap to clone.
#[derive(Clone)]
pub struct VerifiedTokens {
    verifier: TokenVerifier,
    seen: Arc<Mutex<Remembered>>,
}

/// Each good token, with who it names and its `exp` (Unix seconds).
type Remembered = HashMap<Box<str>, (Identity, u64)>;

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl VerifiedTokens {
    /// Remembers what `verifier` says of good tokens.
    pub fn new(verifier: TokenVerifier) -> Self {
        VerifiedTokens {
            verifier,
            seen: Arc::default(),
        }
    }

    /// Who `token` names, as [`TokenVerifier::verify`] says, from memory
    /// while the token is unexpired.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp())
    }

    /// Checks an `Authorization` header value (`Bearer <token>`), as
    /// [`TokenVerifier::verify_bearer`] does.
    pub fn verify_bearer(&self, header: Option<&str>) -> Result<Identity, AuthError> {
        self.verify(crate::bearer_token(header)?)
    }

    /// [`Self::verify`] at `now` (Unix seconds), for tests.
    fn verify_at(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        if let Some(identity) = self.recall(token, now) {
            return Ok(identity);
        }
        let (identity, valid_until) = self.verifier.verify_until(token)?;
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= CAPACITY {
                seen.retain(|_, (_, until)| *until > now);
                if seen.len() >= CAPACITY {
                    seen.clear();
                }
            }
            seen.insert(token.into(), (identity.clone(), valid_until));
        }
        Ok(identity)
    }

    /// The remembered identity of `token`, if it is still valid at `now`.
    fn recall(&self, token: &str, now: u64) -> Option<Identity> {
        let seen = self.seen.lock().ok()?;
        // Valid while `exp` is not in the past, as jsonwebtoken checks it
        // (with no leeway); the last second is left to a full check.
        let (identity, _) = seen.get(token).filter(|(_, until)| *until > now)?;
        Some(identity.clone())
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.seen.lock().map(|seen| seen.len()).unwrap_or(0)
    }

    /// Whether no token is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{JwtAlgorithm, JwtKey, JwtSettings, Role, TokenIssuer};

    const SECRET: &[u8] = b"a-test-secret-of-enough-length-32b";

    fn tokens() -> (VerifiedTokens, TokenIssuer) {
        let verifier = TokenVerifier::new(&JwtSettings {
            algorithm: JwtAlgorithm::Hs256,
            key: JwtKey::Secret(SECRET.to_vec()),
            issuer: None,
            audience: None,
        })
        .unwrap();
        (
            VerifiedTokens::new(verifier),
            TokenIssuer::new(SECRET, None, None),
        )
    }

    #[test]
    fn a_good_token_is_remembered_with_who_it_names() {
        let (tokens, issuer) = tokens();
        let token = issuer
            .issue("alice", Role::User, Duration::from_secs(600))
            .unwrap();
        let first = tokens.verify(&token).unwrap();
        assert_eq!(first.subject, "alice");
        assert_eq!(first.role, Role::User);
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens.verify(&token).unwrap(), first);
        assert_eq!(tokens.len(), 1);
        let service = issuer
            .issue("disputes", Role::Service, Duration::from_secs(600))
            .unwrap();
        assert_eq!(tokens.verify(&service).unwrap().role, Role::Service);
        assert_eq!(tokens.len(), 2);
    }

    #[test]
    fn bad_tokens_are_refused_every_time_and_never_remembered() {
        let (tokens, issuer) = tokens();
        let good = issuer
            .issue("alice", Role::User, Duration::from_secs(600))
            .unwrap();
        // One character of the signature changed (not the last, whose low
        // bits are padding).
        let at = good.len() - 5;
        let swapped = if &good[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{swapped}{}", &good[..at], &good[at + 1..]);
        for _ in 0..2 {
            assert_eq!(tokens.verify(&forged), Err(AuthError::InvalidSignature));
            assert_eq!(tokens.verify("not.a.token"), Err(AuthError::MalformedToken));
        }
        assert!(tokens.is_empty());
    }

    #[test]
    fn a_remembered_token_is_refused_once_it_expires() {
        let (tokens, issuer) = tokens();
        let token = issuer
            .issue("alice", Role::User, Duration::from_secs(1))
            .unwrap();
        let (_, exp) = tokens.verifier.verify_until(&token).unwrap();
        assert!(tokens.verify(&token).is_ok());
        // Remembered, yet not past its `exp`: from then on the full check
        // answers, and refuses it.
        assert!(tokens.recall(&token, exp - 1).is_some());
        assert!(tokens.recall(&token, exp).is_none());
        std::thread::sleep(Duration::from_millis(2_100));
        assert_eq!(tokens.verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn memory_stays_bounded_whatever_callers_send() {
        let (tokens, issuer) = tokens();
        for i in 0..=CAPACITY {
            let token = issuer
                .issue(&format!("user{i}"), Role::User, Duration::from_secs(600))
                .unwrap();
            tokens.verify(&token).unwrap();
            assert!(tokens.len() <= CAPACITY);
        }
        // Full of valid tokens, the memory started again.
        assert_eq!(tokens.len(), 1);
    }
}
