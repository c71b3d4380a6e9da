//! Dispute-grade records over the chat: full-text search of the caller's
//! messages, and signed transcript exports for the marketplace's services.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use super::{Chat, ChatError, THREAD, thread_id};
use crate::domain::{Caller, Message, now_micros};
use crate::search::SearchTerms;
use crate::store::{SearchCursor, SearchScope, StoredEntry};
use crate::transcript::{self, signing::TranscriptSigner};

/// Results per search page when the caller names no limit, and the most.
const DEFAULT_SEARCH_LIMIT: u32 = 20;
const MAX_SEARCH_LIMIT: u32 = 50;

/// A page of search results, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    pub results: Vec<Message>,
    pub next_cursor: Option<String>,
}

/// A signed transcript, ready for a transport to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptExport {
    pub thread_id: Uuid,
    pub entries: Vec<StoredEntry>,
    pub head_hash: String,
    pub exported_at: String,
    pub key_id: String,
    pub signature: String,
}

/// A public key transcripts verify with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptKey {
    pub key_id: String,
    /// Base64 of the raw 32 bytes.
    pub public_key: String,
}

impl Chat {
    /// Signs transcript exports with `signer` (whose public key the caller
    /// has registered with the store).
    pub fn with_transcript_signer(mut self, signer: Arc<TranscriptSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Messages matching `q` in the caller's threads (or `thread`), newest
    /// first. A user never finds deleted messages; a service searches every
    /// thread.
    pub async fn search(
        &self,
        caller: &Caller,
        q: &str,
        thread: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<SearchPage, ChatError> {
        let terms = SearchTerms::parse(q).map_err(|e| ChatError::InvalidArgument(e.into()))?;
        let limit = match limit {
            None | Some(0) => DEFAULT_SEARCH_LIMIT,
            Some(n) if n <= MAX_SEARCH_LIMIT => n,
            Some(_) => {
                return Err(ChatError::InvalidArgument(
                    "limit: must be an integer from 1 to 50".into(),
                ));
            }
        };
        let cursor = cursor.map(decode_search_cursor).transpose()?;
        let thread = match thread {
            Some(id) => {
                let id = thread_id(id)?;
                if !self.store.can_see(id, caller.user_id()).await? {
                    return Err(ChatError::NotFound(THREAD));
                }
                Some(id)
            }
            None => None,
        };
        let scope = match caller.user_id() {
            Some(user) => SearchScope::User(user),
            None => SearchScope::Service,
        };
        let mut results = self
            .store
            .search_messages(scope, &terms, thread, cursor, limit + 1)
            .await?;
        let next_cursor = if results.len() > limit as usize {
            results.truncate(limit as usize);
            results.last().map(|m| {
                encode_search_cursor(SearchCursor {
                    created_at: m.created_at,
                    message_id: m.id,
                })
            })
        } else {
            None
        };
        Ok(SearchPage {
            results: results.into_iter().map(|m| m.as_seen_by(caller)).collect(),
            next_cursor,
        })
    }

    /// The thread's transcript, signed. Service tokens only: to a user the
    /// thread does not exist, as for any thread they are not in.
    pub async fn export_transcript(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<TranscriptExport, ChatError> {
        if caller.user_id().is_some() {
            return Err(ChatError::NotFound(THREAD));
        }
        let id = thread_id(id)?;
        let stored = self
            .store
            .transcript(id)
            .await?
            .ok_or(ChatError::NotFound(THREAD))?;
        let signer = self.signer.as_ref().ok_or(ChatError::FailedPrecondition(
            "no transcript signing key is configured",
        ))?;
        let head_hash = transcript::hex(&stored.head);
        let exported_at = transcript::at_text(now_micros());
        let thread_text = id.to_string();
        let signature = signer.sign(&thread_text, &head_hash, &exported_at);
        Ok(TranscriptExport {
            thread_id: id,
            entries: stored.entries,
            head_hash,
            exported_at,
            key_id: signer.key_id().to_owned(),
            signature,
        })
    }

    /// Every key that ever signed an export here.
    pub async fn transcript_keys(&self) -> Result<Vec<TranscriptKey>, ChatError> {
        Ok(self
            .store
            .transcript_keys()
            .await?
            .into_iter()
            .map(|(key_id, public_key)| TranscriptKey { key_id, public_key })
            .collect())
    }
}

fn encode_search_cursor(cursor: SearchCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "s1.{}.{}",
        cursor.created_at,
        cursor.message_id.simple()
    ))
}

fn decode_search_cursor(text: &str) -> Result<SearchCursor, ChatError> {
    let bad = || ChatError::InvalidArgument("cursor: not a cursor issued by this server".into());
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    let mut parts = text.split('.');
    let (Some("s1"), Some(at), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if id.len() != 32 {
        return Err(bad());
    }
    Ok(SearchCursor {
        created_at: at.parse().map_err(|_| bad())?,
        message_id: Uuid::try_parse(id).map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_cursors_round_trip_and_refuse_others() {
        let cursor = SearchCursor {
            created_at: 1_795_521_845_123_456,
            message_id: Uuid::now_v7(),
        };
        assert_eq!(
            decode_search_cursor(&encode_search_cursor(cursor)).unwrap(),
            cursor
        );
        for bad in ["", "x", &URL_SAFE_NO_PAD.encode("t1.1.abc")] {
            assert!(matches!(
                decode_search_cursor(bad),
                Err(ChatError::InvalidArgument(_))
            ));
        }
    }
}
