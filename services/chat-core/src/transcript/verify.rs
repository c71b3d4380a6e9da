//! Offline verification of an exported transcript (the JSON the REST route
//! serves): the chain from the thread id through every entry to the head,
//! then the signature over the head. Independent of the database: what is
//! checked is only the file and the public keys.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{hex, jcs, signing};

/// The fields every entry has, besides its `hash`.
const ENTRY_FIELDS: [&str; 9] = [
    "n",
    "kind",
    "message_id",
    "seq",
    "sender_id",
    "message_type",
    "content",
    "metadata",
    "at",
];

/// Public keys by key id.
#[derive(Debug, Default, Clone)]
pub struct KeyRing {
    keys: HashMap<String, VerifyingKey>,
}

impl KeyRing {
    /// The keys of a saved `transcript-keys` answer
    /// (`{"keys": [{"key_id", "public_key"}]}`).
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the key file has no \"keys\" array")?;
        let mut ring = KeyRing::default();
        for key in keys {
            let key_id = key
                .get("key_id")
                .and_then(Value::as_str)
                .ok_or("a key has no key_id")?;
            let public = key
                .get("public_key")
                .and_then(Value::as_str)
                .and_then(|text| BASE64.decode(text).ok())
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
                .ok_or_else(|| format!("key {key_id}: public_key is not a base64 Ed25519 key"))?;
            ring.keys.insert(key_id.to_owned(), public);
        }
        Ok(ring)
    }

    /// A ring holding one key, under its own id.
    pub fn single(key: VerifyingKey) -> Self {
        let mut ring = KeyRing::default();
        ring.keys.insert(signing::key_id(&key), key);
        ring
    }
}

/// Why an export does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The first entry that does not verify (its position, from 1, which
    /// is also the `n` it must carry).
    #[error("entry {position} does not verify: {reason}")]
    Entry { position: usize, reason: String },
    /// The export as a whole (its shape, head or signature).
    #[error("{0}")]
    Export(String),
}

/// What a verified export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub thread_id: String,
    pub entries: usize,
    pub head_hash: String,
    pub key_id: String,
}

/// Checks `export` against `keys`: every entry's hash chains from the one
/// before (from SHA-256 of the thread id), `head_hash` is the last one,
/// and the signature over the head verifies with the named key.
pub fn verify(export: &Value, keys: &KeyRing) -> Result<Verified, Failure> {
    let text = |name: &str| {
        export
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::Export(format!("the export has no \"{name}\" string")))
    };
    let thread_id = text("thread_id")?;
    let head_hash = text("head_hash")?;
    let exported_at = text("exported_at")?;
    let key_id = text("key_id")?;
    let signature = text("signature")?;
    let entries = export
        .get("entries")
        .and_then(Value::as_array)
        .ok_or_else(|| Failure::Export("the export has no \"entries\" array".into()))?;

    let mut previous: [u8; 32] = Sha256::digest(thread_id.as_bytes()).into();
    for (index, entry) in entries.iter().enumerate() {
        let position = index + 1;
        let fail = |reason: String| Failure::Entry { position, reason };
        let object = entry
            .as_object()
            .ok_or_else(|| fail("not a JSON object".into()))?;
        let stated = object
            .get("hash")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("no \"hash\" string".into()))?;
        if object.len() != ENTRY_FIELDS.len() + 1
            || ENTRY_FIELDS
                .iter()
                .any(|field| !object.contains_key(*field))
        {
            return Err(fail(format!(
                "an entry has exactly the fields {} and hash",
                ENTRY_FIELDS.join(", ")
            )));
        }
        if object.get("n").and_then(Value::as_u64) != Some(position as u64) {
            return Err(fail(format!(
                "n must be {position}: entries run from 1 without gaps"
            )));
        }
        let kind = object.get("kind").and_then(Value::as_str);
        if !matches!(kind, Some("message" | "edit" | "delete")) {
            return Err(fail("kind must be message, edit or delete".into()));
        }
        let mut hashed = object.clone();
        hashed.remove("hash");
        let mut hasher = Sha256::new();
        hasher.update(previous);
        hasher.update(jcs::canonical(&Value::Object(hashed)).as_bytes());
        let computed: [u8; 32] = hasher.finalize().into();
        if hex(&computed) != stated {
            return Err(fail(format!(
                "its hash is {stated}, but its content chained to the entries before it hashes to {}",
                hex(&computed)
            )));
        }
        previous = computed;
    }
    if hex(&previous) != head_hash {
        return Err(Failure::Export(format!(
            "head_hash {head_hash} is not the chain's last hash {}",
            hex(&previous)
        )));
    }

    let key = keys
        .keys
        .get(key_id)
        .ok_or_else(|| Failure::Export(format!("no public key with key_id {key_id}")))?;
    let signature = BASE64
        .decode(signature)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .map(|bytes| Signature::from_bytes(&bytes))
        .ok_or_else(|| Failure::Export("signature is not a base64 Ed25519 signature".into()))?;
    key.verify(
        signing::signed_text(thread_id, head_hash, exported_at).as_bytes(),
        &signature,
    )
    .map_err(|_| {
        Failure::Export(format!(
            "the signature does not verify with key {key_id} over thread_id, head_hash and exported_at"
        ))
    })?;
    Ok(Verified {
        thread_id: thread_id.to_owned(),
        entries: entries.len(),
        head_hash: head_hash.to_owned(),
        key_id: key_id.to_owned(),
    })
}
