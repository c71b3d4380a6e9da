//! The Ed25519 key that signs transcript exports, read from a PKCS#8 PEM
//! file. On the embedded default the file is created on first start, so a
//! new user's exports are signed without any set-up.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Why the signing key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the transcript signing key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the transcript signing key {path} is not an Ed25519 PKCS#8 PEM key")]
    Format { path: PathBuf },
    #[error("writing a new transcript signing key to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The key exports are signed with, and the id that names it.
#[derive(Clone)]
pub struct TranscriptSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for TranscriptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        f.debug_struct("TranscriptSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl TranscriptSigner {
    /// The key in `path`; when the file is missing and `create` is set, a
    /// new key written there (owner-only permissions).
    pub fn load(path: &Path, create: bool) -> Result<Self, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::Format {
                    path: path.to_owned(),
                })?;
                Ok(Self::from_key(key))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && create => {
                let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
                write_new_key(path, &key)?;
                Ok(Self::from_key(key))
            }
            Err(source) => Err(KeyError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// A signer over `key` (tests).
    pub fn from_key(key: SigningKey) -> Self {
        let key_id = key_id(&key.verifying_key());
        TranscriptSigner { key, key_id }
    }

    /// Names the key in exports and in the key list.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half, base64 of its 32 raw bytes.
    pub fn public_key_base64(&self) -> String {
        BASE64.encode(self.key.verifying_key().as_bytes())
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The export signature: Ed25519 over `thread_id\nhead_hash\nexported_at`,
    /// base64.
    pub fn sign(&self, thread_id: &str, head_hash: &str, exported_at: &str) -> String {
        let signature = self
            .key
            .sign(signed_text(thread_id, head_hash, exported_at).as_bytes());
        BASE64.encode(signature.to_bytes())
    }
}

/// What an export's signature covers.
pub fn signed_text(thread_id: &str, head_hash: &str, exported_at: &str) -> String {
    format!("{thread_id}\n{head_hash}\n{exported_at}")
}

/// A key's id: the first 16 hex digits of SHA-256 of its raw public key,
/// so the same key always has the same id on every replica.
pub fn key_id(key: &VerifyingKey) -> String {
    super::hex(&Sha256::digest(key.as_bytes())[..8])
}

fn write_new_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let failed = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| failed(std::io::Error::other("encoding the key")))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(failed)?;
    std::io::Write::write_all(&mut file, pem.as_bytes()).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn creates_a_key_once_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/transcript.pem");
        let created = TranscriptSigner::load(&path, true).unwrap();
        let again = TranscriptSigner::load(&path, false).unwrap();
        assert_eq!(created.key_id(), again.key_id());
        assert_eq!(created.key_id().len(), 16);
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));

        let signature = created.sign("t", "h", "2026-01-01T00:00:00.000000Z");
        let bytes: [u8; 64] = BASE64.decode(signature).unwrap().try_into().unwrap();
        again
            .verifying_key()
            .verify(
                b"t\nh\n2026-01-01T00:00:00.000000Z",
                &ed25519_dalek::Signature::from_bytes(&bytes),
            )
            .unwrap();
    }

    #[test]
    fn refuses_a_missing_key_unless_asked_to_create_and_a_bad_one_always() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.pem");
        assert!(matches!(
            TranscriptSigner::load(&missing, false),
            Err(KeyError::Read { .. })
        ));
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a key").unwrap();
        assert!(matches!(
            TranscriptSigner::load(&bad, true),
            Err(KeyError::Format { .. })
        ));
    }
}
