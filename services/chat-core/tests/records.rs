//! Dispute-grade records, on both backends through a real gRPC client:
//! full-text search of the caller's messages, and hash-chained signed
//! transcripts, recomputed here by code that shares nothing with the
//! service's (its own RFC 8785 canonicalization and chain).

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chat_core::transcript::verify::{Failure, KeyRing, verify};
use chat_proto::v1::{self as pb, MessageType};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{Client, TestApp, create, send};
use tonic::Code;

on_both_backends!(
    search_needs_every_word_ignores_case_and_accents_and_prefixes_the_last,
    search_sees_only_the_callers_threads,
    search_finds_edits_by_their_new_words_and_never_deleted_messages,
    search_pages_newest_first_with_cursors,
    search_finds_old_messages_behind_many_newer_ones,
    a_prefix_finds_every_word_it_starts_however_many,
    bad_searches_are_refused,
    transcripts_chain_messages_edits_and_deletions_in_commit_order,
    only_service_tokens_export_transcripts,
    a_tampered_export_fails_at_the_tampered_entry,
    a_row_changed_behind_the_service_fails_verification,
    concurrent_sends_chain_in_seq_order,
    disputes_carry_the_head_hash_they_were_requested_at,
    rotated_keys_still_verify_old_exports,
    the_verify_transcript_command_checks_an_export_file,
);

// ---------------------------------------------------------------- helpers

async fn search(
    client: &mut Client,
    q: &str,
    thread_id: Option<&str>,
    limit: i32,
    cursor: Option<String>,
) -> Result<pb::SearchMessagesResponse, tonic::Status> {
    client
        .search_messages(pb::SearchMessagesRequest {
            q: q.to_owned(),
            thread_id: thread_id.map(str::to_owned),
            limit,
            cursor,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The contents found for `q`, in result order.
async fn found(client: &mut Client, q: &str) -> Vec<String> {
    search(client, q, None, 50, None)
        .await
        .expect("search")
        .results
        .into_iter()
        .map(|r| r.message.expect("message").content)
        .collect()
}

async fn export(client: &mut Client, thread_id: &str) -> pb::ExportTranscriptResponse {
    client
        .export_transcript(pb::ExportTranscriptRequest {
            thread_id: thread_id.to_owned(),
        })
        .await
        .expect("export")
        .into_inner()
}

async fn keys(client: &mut Client) -> Value {
    let keys = client
        .list_transcript_keys(pb::ListTranscriptKeysRequest {})
        .await
        .expect("keys")
        .into_inner()
        .keys;
    json!({"keys": keys.iter().map(|k| json!({"key_id": k.key_id, "public_key": k.public_key})).collect::<Vec<_>>()})
}

/// The export as the REST route shows it.
fn export_json(export: &pb::ExportTranscriptResponse) -> Value {
    json!({
        "thread_id": export.thread_id,
        "entries": export.entries.iter().map(|e| json!({
            "n": e.n, "kind": e.kind, "message_id": e.message_id, "seq": e.seq,
            "sender_id": e.sender_id, "message_type": e.message_type, "content": e.content,
            "metadata": e.metadata_json.as_deref().map(|m| serde_json::from_str::<Value>(m).unwrap()),
            "at": e.at, "hash": e.hash,
        })).collect::<Vec<_>>(),
        "head_hash": export.head_hash,
        "exported_at": export.exported_at,
        "key_id": export.key_id,
        "signature": export.signature,
    })
}

/// RFC 8785, written for these tests alone: keys sorted by UTF-16 code
/// units, strings escaped as JSON.stringify does, numbers as the shortest
/// double (the tests' numbers are plain integers and decimals).
fn jcs(value: &Value) -> String {
    match value {
        Value::Null | Value::Bool(_) => value.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            (None, Some(f)) => format!("{f}"),
            _ => unreachable!(),
        },
        Value::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!("[{}]", items.iter().map(jcs).collect::<Vec<_>>().join(",")),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| k.encode_utf16().collect::<Vec<u16>>());
            format!(
                "{{{}}}",
                keys.iter()
                    .map(|k| format!("{}:{}", jcs(&Value::String((*k).clone())), jcs(&map[*k])))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Recomputes the chain of a REST-shaped export: the position of the first
/// entry whose hash does not follow, or the head when all do.
fn recompute(export: &Value) -> Result<String, usize> {
    let thread_id = export["thread_id"].as_str().unwrap();
    let mut previous: Vec<u8> = Sha256::digest(thread_id.as_bytes()).to_vec();
    for (i, entry) in export["entries"].as_array().unwrap().iter().enumerate() {
        let mut hashed = entry.as_object().unwrap().clone();
        let stated = hashed.remove("hash").unwrap();
        let mut hasher = Sha256::new();
        hasher.update(&previous);
        hasher.update(jcs(&Value::Object(hashed)).as_bytes());
        let computed = hasher.finalize().to_vec();
        if stated.as_str() != Some(hex(&computed).as_str()) {
            return Err(i + 1);
        }
        previous = computed;
    }
    Ok(hex(&previous))
}

/// Checks the signature with a key from the key list, independently of the
/// service's verifier.
fn signature_verifies(export: &Value, keys: &Value) -> bool {
    let key = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == export["key_id"])
        .expect("the export's key is listed");
    let public: [u8; 32] = BASE64
        .decode(key["public_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let signature: [u8; 64] = BASE64
        .decode(export["signature"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let signed = format!(
        "{}\n{}\n{}",
        export["thread_id"].as_str().unwrap(),
        export["head_hash"].as_str().unwrap(),
        export["exported_at"].as_str().unwrap()
    );
    VerifyingKey::from_bytes(&public)
        .unwrap()
        .verify(signed.as_bytes(), &Signature::from_bytes(&signature))
        .is_ok()
}

/// Both verifiers agree that `export` verifies.
fn assert_verifies(export: &Value, keys: &Value) {
    let head = recompute(export).expect("the chain recomputes");
    assert_eq!(export["head_hash"], head);
    assert!(signature_verifies(export, keys));
    let ring = KeyRing::from_json(keys).unwrap();
    verify(export, &ring).expect("the service's verifier agrees");
}

/// Both verifiers agree that `export` fails at entry `position`.
fn assert_fails_at(export: &Value, keys: &Value, position: usize, what: &str) {
    assert_eq!(recompute(export), Err(position), "{what}");
    let ring = KeyRing::from_json(keys).unwrap();
    match verify(export, &ring) {
        Err(Failure::Entry { position: p, .. }) => assert_eq!(p, position, "{what}"),
        other => panic!("{what}: expected entry {position} to fail, got {other:?}"),
    }
}

async fn send_meta(
    client: &mut Client,
    thread_id: &str,
    content: &str,
    metadata: &str,
) -> pb::Message {
    client
        .send_message(pb::SendMessageRequest {
            thread_id: thread_id.to_owned(),
            content: content.to_owned(),
            metadata_json: Some(metadata.to_owned()),
            message_type: MessageType::Text.into(),
            client_msg_id: None,
        })
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message")
}

async fn edit(client: &mut Client, id: &str, content: &str) {
    client
        .edit_message(pb::EditMessageRequest {
            message_id: id.to_owned(),
            content: content.to_owned(),
        })
        .await
        .expect("edit");
}

async fn delete(client: &mut Client, id: &str) {
    client
        .delete_message(pb::DeleteMessageRequest {
            message_id: id.to_owned(),
        })
        .await
        .expect("delete");
}

// ------------------------------------------------------------------ search

async fn search_needs_every_word_ignores_case_and_accents_and_prefixes_the_last(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = create(&mut alice, &["bob"], None).await;
    for text in [
        "Please send the invoice today",
        "Café CRÈME, naïve façade",
        "invoice overdue since Monday",
        "nothing to see here",
        "Straße und e-mail",
    ] {
        send(&mut alice, &t.id, text).await;
    }
    // The last word matches as a prefix; newest first.
    assert_eq!(
        found(&mut alice, "invo").await,
        [
            "invoice overdue since Monday",
            "Please send the invoice today"
        ]
    );
    assert_eq!(
        found(&mut alice, "INVOICE today").await,
        ["Please send the invoice today"]
    );
    assert_eq!(
        found(&mut alice, "today invoice").await,
        ["Please send the invoice today"]
    );
    assert_eq!(
        found(&mut alice, "invoice tod").await,
        ["Please send the invoice today"]
    );
    // Only the last word is a prefix.
    assert!(found(&mut alice, "invo today").await.is_empty());
    // Every word must occur.
    assert!(found(&mut alice, "invoice tomorrow").await.is_empty());
    // Accents and case, either way round.
    assert_eq!(
        found(&mut alice, "cafe creme").await,
        ["Café CRÈME, naïve façade"]
    );
    assert_eq!(
        found(&mut alice, "NAÏVE Facade").await,
        ["Café CRÈME, naïve façade"]
    );
    assert_eq!(found(&mut alice, "strasse").await, ["Straße und e-mail"]);
    // Words, not substrings.
    assert!(found(&mut alice, "voice overdue").await.is_empty());
    // Metadata is not searched.
    send_meta(&mut alice, &t.id, "with metadata", r#"{"note":"zebra"}"#).await;
    assert!(found(&mut alice, "zebra").await.is_empty());
    // Punctuation alone matches nothing.
    assert!(found(&mut alice, "?!").await.is_empty());
}

/// PostgreSQL asks its index for the words a prefix starts, when they are
/// few, and for the prefix itself otherwise: both must find the same.
async fn a_prefix_finds_every_word_it_starts_however_many(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = create(&mut alice, &["bob"], None).await;
    let many: Vec<String> = (0..70).map(|i| format!("lot{i}")).collect();
    send(&mut alice, &t.id, &many.join(" ")).await;
    send(&mut alice, &t.id, "lot7 alone").await;
    send(&mut alice, &t.id, "few1 and lot8").await;
    send(&mut alice, &t.id, "few2 again").await;
    send(&mut alice, &t.id, "fewer").await;
    // 70 words start with `lot`, more than are ever listed.
    assert_eq!(
        found(&mut alice, "lot").await,
        ["few1 and lot8", "lot7 alone", many.join(" ").as_str()]
    );
    assert_eq!(found(&mut alice, "alone lo").await, ["lot7 alone"]);
    // Three words start with `few`, and another word must occur too.
    assert_eq!(
        found(&mut alice, "few").await,
        ["fewer", "few2 again", "few1 and lot8"]
    );
    assert_eq!(found(&mut alice, "lot8 few").await, ["few1 and lot8"]);
    assert_eq!(found(&mut alice, "again fe").await, ["few2 again"]);
    // No word starts with it.
    assert!(found(&mut alice, "fewest").await.is_empty());
    assert!(found(&mut alice, "alone fewx").await.is_empty());
    // A word that only an edit brought.
    let later = send(&mut alice, &t.id, "nothing yet").await;
    edit(&mut alice, &later.id, "now a fewmore word").await;
    assert_eq!(found(&mut alice, "fewm").await, ["now a fewmore word"]);
}

async fn search_sees_only_the_callers_threads(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut carol = app.user("carol").await;
    let mine = create(&mut alice, &["bob"], None).await;
    let theirs = create(&mut carol, &["dave"], None).await;
    send(&mut alice, &mine.id, "invoice for alice").await;
    send(&mut carol, &theirs.id, "invoice for carol").await;
    assert_eq!(found(&mut alice, "invoice").await, ["invoice for alice"]);
    assert_eq!(found(&mut carol, "invoice").await, ["invoice for carol"]);

    // Another's thread, an unknown one and a malformed id: all NotFound,
    // and the same message.
    for id in [
        theirs.id.as_str(),
        "0192f0c1-6a2b-7c3d-8e4f-5a6b7c8d9e0f",
        "nope",
    ] {
        let err = search(&mut alice, "invoice", Some(id), 20, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{id}");
        assert_eq!(err.message(), "thread not found");
    }
    let only = search(&mut alice, "invoice", Some(&mine.id), 20, None)
        .await
        .unwrap();
    assert_eq!(only.results.len(), 1);
    assert_eq!(only.results[0].thread_id, mine.id);

    // Archived threads are searched too.
    alice
        .archive_thread(pb::ArchiveThreadRequest {
            thread_id: mine.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(found(&mut alice, "invoice").await, ["invoice for alice"]);

    // A service searches every thread.
    let mut service = app.service("dispute-service").await;
    assert_eq!(
        found(&mut service, "invoice").await,
        ["invoice for carol", "invoice for alice"]
    );
}

async fn search_finds_edits_by_their_new_words_and_never_deleted_messages(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"], None).await;
    let edited = send(&mut alice, &t.id, "the original wording").await;
    let deleted = send(&mut alice, &t.id, "a banana to delete").await;
    edit(&mut alice, &edited.id, "a replacement phrase").await;
    delete(&mut alice, &deleted.id).await;

    assert!(found(&mut alice, "original").await.is_empty());
    assert_eq!(
        found(&mut bob, "replacement").await,
        ["a replacement phrase"]
    );
    assert!(found(&mut alice, "banana").await.is_empty());
    assert!(found(&mut bob, "banana").await.is_empty());
    // Services keep deleted messages as evidence, and find them.
    let mut service = app.service("dispute-service").await;
    assert_eq!(found(&mut service, "banana").await, ["a banana to delete"]);
}

async fn search_pages_newest_first_with_cursors(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = create(&mut alice, &["bob"], None).await;
    for i in 1..=5 {
        send(&mut alice, &t.id, &format!("milestone number {i}")).await;
        send(&mut alice, &t.id, &format!("filler {i}")).await;
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = search(&mut alice, "milestone", None, 2, cursor)
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.results.into_iter().map(|r| r.message.unwrap().content));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (1..=5)
            .rev()
            .map(|i| format!("milestone number {i}"))
            .collect::<Vec<_>>()
    );
    // The default page is 20.
    for i in 0..21 {
        send(&mut alice, &t.id, &format!("bulk {i}")).await;
    }
    let page = search(&mut alice, "bulk", None, 0, None).await.unwrap();
    assert_eq!(page.results.len(), 20);
    assert!(page.next_cursor.is_some());
}

/// Matches older than the newest 20,000 messages: on PostgreSQL a search
/// across threads then asks the text index for the caller's member mark
/// with the words, so this checks the marks written on send, kept on edit,
/// and the participant filter behind them.
async fn search_finds_old_messages_behind_many_newer_ones(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let mut carol = app.user("carol").await;
    let mine = create(&mut alice, &["bob"], None).await;
    let theirs = create(&mut carol, &["dave"], None).await;
    let first = send(&mut alice, &mine.id, "needle in the first place").await;
    let edited = send(&mut bob, &mine.id, "words to replace").await;
    send(&mut carol, &theirs.id, "needle of carol").await;
    let gone = send(&mut alice, &mine.id, "needle then deleted").await;
    edit(&mut bob, &edited.id, "needle after an edit").await;
    delete(&mut alice, &gone.id).await;

    // 20,001 newer messages, none of them the callers', written straight
    // into the table (their own search words do not matter).
    let filler = create(&mut carol, &["erin"], None).await;
    let thread = app.uuid_literal(&filler.id);
    app.execute(&match app.backend {
        support::Backend::Postgres => format!(
            "INSERT INTO messages (id, thread_id, seq, sender_id, message_type, content, \
             metadata, created_at) \
             SELECT gen_random_uuid(), {thread}, i, 'carol', 'text', 'filler', '{{}}', \
             (SELECT max(created_at) FROM messages) + i \
             FROM generate_series(1, 20001) AS i"
        ),
        support::Backend::Sqlite => format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20001) \
             INSERT INTO messages (id, thread_id, seq, sender_id, message_type, content, \
             metadata, created_at) \
             SELECT randomblob(16), {thread}, i, 'carol', 'text', 'filler', '{{}}', \
             (SELECT max(created_at) FROM messages) + i FROM n"
        ),
    })
    .await;

    let newest_first = ["needle after an edit", "needle in the first place"];
    assert_eq!(found(&mut alice, "needle").await, newest_first);
    assert_eq!(found(&mut bob, "needle").await, newest_first);
    assert_eq!(found(&mut alice, "needle aft").await, [newest_first[0]]);
    assert!(found(&mut alice, "replace").await.is_empty());
    assert_eq!(found(&mut carol, "needle").await, ["needle of carol"]);
    // One result a page: the cursor carries on behind the newer messages.
    let page = search(&mut alice, "needle", None, 1, None).await.unwrap();
    assert_eq!(page.results.len(), 1);
    assert_eq!(page.results[0].message.as_ref().unwrap().id, edited.id);
    let page = search(&mut alice, "needle", None, 1, page.next_cursor)
        .await
        .unwrap();
    assert_eq!(page.results.len(), 1);
    assert_eq!(page.results[0].message.as_ref().unwrap().id, first.id);
    if let Some(cursor) = page.next_cursor {
        let last = search(&mut alice, "needle", None, 1, Some(cursor))
            .await
            .unwrap();
        assert!(last.results.is_empty());
    }
}

async fn bad_searches_are_refused(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = create(&mut alice, &["bob"], None).await;
    send(&mut alice, &t.id, "ab cd").await;
    for (q, limit, cursor) in [
        ("a", 20, None),
        ("   a   ", 20, None),
        ("", 20, None),
        (&*"x".repeat(201), 20, None),
        ("ab", 51, None),
        ("ab", -1, None),
        ("ab", 20, Some("not-a-cursor".to_owned())),
    ] {
        let err = search(&mut alice, q, None, limit, cursor)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "q={q:?} limit={limit}");
    }
    // The bounds themselves are fine.
    assert_eq!(found(&mut alice, " ab ").await, ["ab cd"]);
    assert!(
        search(&mut alice, &"x".repeat(200), None, 50, None)
            .await
            .is_ok()
    );
}

// -------------------------------------------------------------- transcripts

async fn transcripts_chain_messages_edits_and_deletions_in_commit_order(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let mut service = app.service("dispute-service").await;
    let t = create(&mut alice, &["bob"], None).await;

    // An empty thread's head is SHA-256 of its id.
    let empty = export(&mut service, &t.id).await;
    assert!(empty.entries.is_empty());
    assert_eq!(empty.head_hash, hex(&Sha256::digest(t.id.as_bytes())));

    let first = send_meta(
        &mut alice,
        &t.id,
        "first \"quoted\"\nline",
        r#"{"z":1,"a":{"y":2.5,"b":[true,null,"é"]}}"#,
    )
    .await;
    let second = send(&mut bob, &t.id, "second").await;
    edit(&mut alice, &first.id, "first, edited").await;
    delete(&mut bob, &second.id).await;
    delete(&mut bob, &second.id).await; // a second deletion records nothing
    let third = send(&mut alice, &t.id, "third").await;

    let exported = export(&mut service, &t.id).await;
    /// n, kind, message id, seq, sender, content.
    type Summary<'a> = (i64, &'a str, &'a str, i64, Option<&'a str>, Option<&'a str>);
    let summary: Vec<Summary> = exported
        .entries
        .iter()
        .map(|e| {
            (
                e.n,
                e.kind.as_str(),
                e.message_id.as_str(),
                e.seq,
                e.sender_id.as_deref(),
                e.content.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                1,
                "message",
                first.id.as_str(),
                1,
                Some("alice"),
                Some("first \"quoted\"\nline")
            ),
            (
                2,
                "message",
                second.id.as_str(),
                2,
                Some("bob"),
                Some("second")
            ),
            (
                3,
                "edit",
                first.id.as_str(),
                1,
                Some("alice"),
                Some("first, edited")
            ),
            (4, "delete", second.id.as_str(), 2, Some("bob"), None),
            (
                5,
                "message",
                third.id.as_str(),
                3,
                Some("alice"),
                Some("third")
            ),
        ]
    );
    // An edit carries the metadata after it; a deletion none.
    assert_eq!(
        exported.entries[2]
            .metadata_json
            .as_deref()
            .map(|m| serde_json::from_str::<Value>(m).unwrap()),
        Some(json!({"z":1,"a":{"y":2.5,"b":[true,null,"é"]}}))
    );
    assert_eq!(exported.entries[3].metadata_json, None);
    assert!(exported.entries.iter().all(|e| e.message_type == "text"));
    // `at`: RFC 3339 UTC with microseconds.
    for entry in &exported.entries {
        assert_eq!(entry.at.len(), 27, "{}", entry.at);
        assert!(entry.at.ends_with('Z') && entry.at.as_bytes()[19] == b'.');
    }
    let doc = export_json(&exported);
    let keys = keys(&mut alice).await;
    assert_verifies(&doc, &keys);
    assert_eq!(exported.head_hash, exported.entries[4].hash);
}

async fn only_service_tokens_export_transcripts(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut service = app.service("dispute-service").await;
    let t = create(&mut alice, &["bob"], None).await;
    send(&mut alice, &t.id, "hello").await;
    // A participant is told what a stranger is told: no such thread.
    for id in [t.id.as_str(), "0192f0c1-6a2b-7c3d-8e4f-5a6b7c8d9e0f"] {
        let err = alice
            .export_transcript(pb::ExportTranscriptRequest {
                thread_id: id.to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "thread not found");
    }
    let err = service
        .export_transcript(pb::ExportTranscriptRequest {
            thread_id: "0192f0c1-6a2b-7c3d-8e4f-5a6b7c8d9e0f".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Any valid token lists the keys.
    assert_eq!(keys(&mut alice).await["keys"].as_array().unwrap().len(), 1);
}

async fn a_tampered_export_fails_at_the_tampered_entry(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut service = app.service("dispute-service").await;
    let t = create(&mut alice, &["bob"], None).await;
    let m1 = send_meta(&mut alice, &t.id, "one", r#"{"k":"v"}"#).await;
    send(&mut alice, &t.id, "two").await;
    edit(&mut alice, &m1.id, "one, edited").await;
    delete(&mut alice, &m1.id).await;
    let doc = export_json(&export(&mut service, &t.id).await);
    let keys = keys(&mut alice).await;
    assert_verifies(&doc, &keys);

    // Every field of every entry kind (message 1, edit 3, delete 4).
    let changes: [(&str, Value); 9] = [
        ("n", json!(99)),
        ("kind", json!("edit")),
        ("message_id", json!("0192f0c1-6a2b-7c3d-8e4f-5a6b7c8d9e0f")),
        ("seq", json!(7)),
        ("sender_id", json!("mallory")),
        ("message_type", json!("payment")),
        ("content", json!("forged")),
        ("metadata", json!({"k": "forged"})),
        ("at", json!("2020-01-01T00:00:00.000000Z")),
    ];
    for position in [1usize, 3, 4] {
        for (field, value) in &changes {
            let mut tampered = doc.clone();
            let mut value = value.clone();
            if tampered["entries"][position - 1][*field] == value {
                // Already so (an edit's kind): a different one.
                value = json!("delete");
            }
            tampered["entries"][position - 1][*field] = value;
            let what = format!("entry {position}, field {field}");
            // `n` is also checked for order, which fails first in the
            // service's verifier; the recomputed chain fails there too.
            assert_fails_at(&tampered, &keys, position, &what);
        }
        let mut tampered = doc.clone();
        tampered["entries"][position - 1]["hash"] = json!("00".repeat(32));
        assert_fails_at(&tampered, &keys, position, "a replaced hash");
    }
    // A dropped entry fails where the gap is.
    let mut dropped = doc.clone();
    dropped["entries"].as_array_mut().unwrap().remove(1);
    assert_fails_at(&dropped, &keys, 2, "a dropped entry");
    // The head and the signature.
    let mut head = doc.clone();
    head["head_hash"] = json!("00".repeat(32));
    assert!(matches!(
        verify(&head, &KeyRing::from_json(&keys).unwrap()),
        Err(Failure::Export(_))
    ));
    let mut when = doc.clone();
    when["exported_at"] = json!("2020-01-01T00:00:00.000000Z");
    assert!(!signature_verifies(&when, &keys));
    assert!(matches!(
        verify(&when, &KeyRing::from_json(&keys).unwrap()),
        Err(Failure::Export(_))
    ));
}

async fn a_row_changed_behind_the_service_fails_verification(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut service = app.service("dispute-service").await;
    let t = create(&mut alice, &["bob"], None).await;
    send(&mut alice, &t.id, "one").await;
    let m2 = send(&mut alice, &t.id, "two").await;
    send(&mut alice, &t.id, "three").await;
    edit(&mut alice, &m2.id, "two, edited").await;
    let keys = keys(&mut alice).await;
    assert_verifies(&export_json(&export(&mut service, &t.id).await), &keys);

    // A message row's content, behind the service's back.
    app.execute(&format!(
        "UPDATE messages SET content = 'forged' WHERE seq = 3 AND thread_id = {}",
        app.uuid_literal(&t.id)
    ))
    .await;
    let doc = export_json(&export(&mut service, &t.id).await);
    assert_fails_at(&doc, &keys, 3, "a changed message row");
    app.execute(&format!(
        "UPDATE messages SET content = 'three' WHERE seq = 3 AND thread_id = {}",
        app.uuid_literal(&t.id)
    ))
    .await;
    assert_verifies(&export_json(&export(&mut service, &t.id).await), &keys);

    // The first content of an edited message.
    app.execute(&format!(
        "UPDATE messages SET original_content = 'forged' WHERE seq = 2 AND thread_id = {}",
        app.uuid_literal(&t.id)
    ))
    .await;
    let doc = export_json(&export(&mut service, &t.id).await);
    assert_fails_at(&doc, &keys, 2, "a changed first content");
    app.execute(&format!(
        "UPDATE messages SET original_content = 'two' WHERE seq = 2 AND thread_id = {}",
        app.uuid_literal(&t.id)
    ))
    .await;

    // An edit entry's row.
    app.execute("UPDATE transcript_entries SET content = 'forged' WHERE n = 4")
        .await;
    let doc = export_json(&export(&mut service, &t.id).await);
    assert_fails_at(&doc, &keys, 4, "a changed edit entry");
}

async fn concurrent_sends_chain_in_seq_order(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut service = app.service("dispute-service").await;
    let t = create(&mut alice, &["bob"], None).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = app.user(if i % 2 == 0 { "alice" } else { "bob" }).await;
        let id = t.id.clone();
        tasks.push(tokio::spawn(async move {
            send(&mut client, &id, &format!("concurrent {i}")).await
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let exported = export(&mut service, &t.id).await;
    let order: Vec<(i64, i64)> = exported.entries.iter().map(|e| (e.n, e.seq)).collect();
    assert_eq!(order, (1..=50).map(|i| (i, i)).collect::<Vec<_>>());
    assert_verifies(&export_json(&exported), &keys(&mut alice).await);
}

async fn disputes_carry_the_head_hash_they_were_requested_at(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut service = app.service("dispute-service").await;
    let t = create(&mut alice, &["bob"], None).await;
    send(&mut alice, &t.id, "the work was not delivered").await;
    send(&mut alice, &t.id, "I want a refund").await;
    let mut integrations = app.integrations(app.user_token("alice")).await;
    integrations
        .request_dispute(pb::RequestDisputeRequest {
            thread_id: t.id.clone(),
            reason: "not_delivered".into(),
            details: None,
        })
        .await
        .expect("dispute");
    let exported = export(&mut service, &t.id).await;
    assert_eq!(exported.entries.len(), 3);
    assert_eq!(exported.entries[2].message_type, "dispute");
    let (_, event_type, _, _, payload) = app
        .outbox()
        .await
        .into_iter()
        .find(|e| e.1 == "dispute.requested")
        .expect("the dispute event");
    assert_eq!(event_type, "dispute.requested");
    let payload: Value = serde_json::from_str(&payload).unwrap();
    // The record as it stood when the dispute was requested.
    assert_eq!(payload["head_hash"], exported.entries[1].hash);
    assert_eq!(payload["reason"], "not_delivered");
}

async fn rotated_keys_still_verify_old_exports(mut app: TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let old_key = dir.path().join("old.pem");
    let new_key = dir.path().join("new.pem");
    for (path, seed) in [(&old_key, 1u8), (&new_key, 2u8)] {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let pem = ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .to_pkcs8_pem(Default::default())
            .unwrap();
        std::fs::write(path, pem.as_bytes()).unwrap();
    }
    app.stop();
    let old_path = old_key.to_str().unwrap().to_owned();
    let mut old = app
        .restart_with(&[("TRANSCRIPT_SIGNING_KEY_FILE", &old_path)])
        .await;
    let mut alice = old.user("alice").await;
    let t = create(&mut alice, &["bob"], None).await;
    send(&mut alice, &t.id, "before the rotation").await;
    let before = export_json(&export(&mut old.service("dispute-service").await, &t.id).await);
    old.stop();

    let new_path = new_key.to_str().unwrap().to_owned();
    let new = app
        .restart_with(&[("TRANSCRIPT_SIGNING_KEY_FILE", &new_path)])
        .await;
    let mut alice = new.user("alice").await;
    send(&mut alice, &t.id, "after the rotation").await;
    let after = export_json(&export(&mut new.service("dispute-service").await, &t.id).await);
    assert_ne!(before["key_id"], after["key_id"]);
    let keys = keys(&mut alice).await;
    // The key list holds both (and the first run's own key).
    assert_eq!(keys["keys"].as_array().unwrap().len(), 3);
    assert_verifies(&before, &keys);
    assert_verifies(&after, &keys);
    // A missing key file stops start-up rather than signing with another.
    let missing = dir.path().join("missing.pem");
    let settings = chat_core::config::Settings::from_lookup(|name| match name {
        "DATABASE_URL" => Some(app.db_url.clone()),
        "JWT_SECRET" => Some("x".into()),
        "CHAT_CORE_GRPC_ADDR" | "CHAT_CORE_HTTP_ADDR" => Some("127.0.0.1:0".into()),
        "TRANSCRIPT_SIGNING_KEY_FILE" => Some(missing.to_str().unwrap().to_owned()),
        _ => None,
    })
    .unwrap();
    let err = chat_core::startup::Application::build(&settings)
        .await
        .err()
        .expect("a missing key file is refused");
    assert!(
        format!("{err:#}").contains("TRANSCRIPT_SIGNING_KEY_FILE"),
        "{err:#}"
    );
}

async fn the_verify_transcript_command_checks_an_export_file(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut service = app.service("dispute-service").await;
    let t = create(&mut alice, &["bob"], None).await;
    send(&mut alice, &t.id, "one").await;
    send(&mut alice, &t.id, "two").await;
    let doc = export_json(&export(&mut service, &t.id).await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    let keys_file = dir.path().join("keys.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    std::fs::write(&keys_file, keys(&mut alice).await.to_string()).unwrap();
    let run = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_chat-core"))
            .arg("verify-transcript")
            .arg(file)
            .arg("--keys")
            .arg(&keys_file)
            .env("DATABASE_URL", "sqlite://unused.db")
            .env("JWT_SECRET", "unused")
            .output()
            .expect("run chat-core verify-transcript")
    };
    let good = run(&file);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).starts_with(&format!(
        "verified: thread {}, 2 entries, head {}",
        t.id,
        doc["head_hash"].as_str().unwrap()
    )));

    let mut tampered = doc.clone();
    tampered["entries"][1]["content"] = json!("forged");
    std::fs::write(&file, tampered.to_string()).unwrap();
    let bad = run(&file);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("entry 2 does not verify"), "{stderr}");
}

#[tokio::test]
async fn an_export_made_on_one_replica_verifies_with_keys_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("shared.pem");
    let key_path = key.to_str().unwrap().to_owned();
    {
        // Both replicas are given the same key file, as a Secret would.
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let pem = ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .to_pkcs8_pem(Default::default())
            .unwrap();
        std::fs::write(&key, pem.as_bytes()).unwrap();
    }
    let a = support::spawn_app_with(
        support::Backend::Postgres,
        &[("TRANSCRIPT_SIGNING_KEY_FILE", &key_path)],
    )
    .await;
    let b = a
        .restart_with(&[("TRANSCRIPT_SIGNING_KEY_FILE", &key_path)])
        .await;
    let mut alice = a.user("alice").await;
    let t = create(&mut alice, &["bob"], None).await;
    send(&mut alice, &t.id, "written on replica a").await;
    send(&mut b.user("bob").await, &t.id, "written on replica b").await;
    let doc = export_json(&export(&mut a.service("dispute-service").await, &t.id).await);
    let keys_b = keys(&mut b.user("bob").await).await;
    assert_eq!(keys_b["keys"].as_array().unwrap().len(), 1);
    assert_eq!(doc["entries"].as_array().unwrap().len(), 2);
    assert_verifies(&doc, &keys_b);
}
