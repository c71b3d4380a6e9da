//! The conformance suite: every ChatService RPC and every rule of docs/api.md
//! (identity, data model, gRPC), run unchanged against both storage backends through a real
//! gRPC client. Each test gets its own database.

mod support;

use std::collections::HashSet;

use chat_proto::v1::{self as pb, MessageType};
use support::{Client, TestApp, create, now, send, send_with, sign};
use tonic::Code;

on_both_backends!(
    create_thread_adds_the_creator_and_is_idempotent,
    create_thread_rejects_bad_input_and_changes_nothing,
    fifty_participants_is_the_limit,
    a_non_participant_learns_nothing,
    messages_get_consecutive_seqs_and_page_both_ways,
    bad_messages_are_refused_and_change_nothing,
    a_repeated_client_msg_id_returns_the_original,
    fifty_concurrent_sends_get_seq_1_to_50,
    concurrent_retries_of_one_message_store_it_once,
    concurrent_creations_of_one_thread_make_one_thread,
    only_the_sender_edits_or_deletes,
    deleted_messages_keep_their_content_for_services,
    read_cursors_only_move_forward,
    unread_counts_per_thread_and_total,
    thread_list_is_ordered_paged_and_filtered,
    archived_threads_return_with_a_new_message,
    titles_can_change_and_are_checked,
    find_by_participants_needs_the_exact_set,
    service_tokens_read_everything_but_never_act_as_users,
    tokens_are_checked_on_every_call,
);

async fn thread(client: &mut Client, id: &str) -> pb::Thread {
    client
        .get_thread(pb::GetThreadRequest {
            thread_id: id.to_owned(),
        })
        .await
        .expect("get thread")
        .into_inner()
        .thread
        .expect("thread")
}

async fn messages(
    client: &mut Client,
    id: &str,
    before: Option<i64>,
    after: Option<i64>,
    limit: i32,
) -> (Vec<i64>, bool) {
    let page = client
        .list_messages(pb::ListMessagesRequest {
            thread_id: id.to_owned(),
            before_seq: before,
            after_seq: after,
            limit,
        })
        .await
        .expect("list messages")
        .into_inner();
    (page.messages.iter().map(|m| m.seq).collect(), page.has_more)
}

async fn list_threads(
    client: &mut Client,
    limit: i32,
    cursor: Option<String>,
) -> pb::ListThreadsResponse {
    client
        .list_threads(pb::ListThreadsRequest {
            limit,
            cursor,
            job_id: None,
        })
        .await
        .expect("list threads")
        .into_inner()
}

async fn unread(client: &mut Client) -> pb::GetUnreadCountsResponse {
    client
        .get_unread_counts(pb::GetUnreadCountsRequest {})
        .await
        .expect("unread counts")
        .into_inner()
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(status) => status.code(),
    }
}

fn text_request(thread_id: &str, content: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        thread_id: thread_id.to_owned(),
        content: content.to_owned(),
        client_msg_id: None,
        metadata_json: None,
        message_type: MessageType::Text.into(),
    }
}

async fn create_thread_adds_the_creator_and_is_idempotent(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let first = alice
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["bob".into()],
            job_id: Some("job-1".into()),
            title: Some("Logo design".into()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let t = first.thread.unwrap();
    assert_eq!(t.participants, vec!["alice", "bob"]);
    assert_eq!(t.job_id.as_deref(), Some("job-1"));
    assert_eq!(t.title.as_deref(), Some("Logo design"));
    assert_eq!(t.created_by, "alice");
    assert_eq!(t.last_seq, 0);
    assert_eq!(t.unread_count, 0);
    assert!(t.last_message_at.is_none());
    assert!(t.created_at.is_some());
    uuid::Uuid::parse_str(&t.id).expect("a UUID id");

    // The same participants (in any order, creator listed or not) and job.
    let again = alice
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["bob".into(), "alice".into()],
            job_id: Some("job-1".into()),
            title: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.thread.unwrap().id, t.id);
    let from_bob = bob
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["alice".into()],
            job_id: Some("job-1".into()),
            title: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!from_bob.created);
    let from_bob = from_bob.thread.unwrap();
    assert_eq!(from_bob.id, t.id);
    assert_eq!(from_bob.title.as_deref(), Some("Logo design"));

    // Another job, or no job, is another thread.
    let other_job = create(&mut alice, &["bob"], Some("job-2")).await;
    let no_job = create(&mut alice, &["bob"], None).await;
    let ids: HashSet<_> = [&t.id, &other_job.id, &no_job.id].into_iter().collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(create(&mut bob, &["alice"], None).await.id, no_job.id);
}

async fn create_thread_rejects_bad_input_and_changes_nothing(app: TestApp) {
    let mut alice = app.user("alice").await;
    let long_id = "x".repeat(129);
    let fifty_others: Vec<String> = (0..50).map(|i| format!("user{i}")).collect();
    let cases: Vec<(Vec<String>, Option<String>, Option<String>)> = vec![
        (vec![], None, None),
        (vec!["alice".into()], None, None),
        (vec!["bob".into(), "bob".into()], None, None),
        (vec!["bob smith".into()], None, None),
        (vec!["bob/1".into()], None, None),
        (vec![String::new()], None, None),
        (vec![long_id.clone()], None, None),
        (fifty_others, None, None),
        (vec!["bob".into()], Some(long_id.clone()), None),
        (vec!["bob".into()], Some(String::new()), None),
        (vec!["bob".into()], Some("job\u{0}1".into()), None),
        (vec!["bob".into()], Some("job\u{85}1".into()), None),
        (vec!["bob".into()], None, Some("t".repeat(201))),
        (vec!["bob".into()], None, Some("bell\u{7}".into())),
        (vec!["bob".into()], None, Some("line\nbreak".into())),
    ];
    for (participants, job_id, title) in cases {
        let status = alice
            .create_thread(pb::CreateThreadRequest {
                participants: participants.clone(),
                job_id: job_id.clone(),
                title: title.clone(),
            })
            .await
            .expect_err("must be refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{participants:?} {job_id:?} {title:?}: {status:?}"
        );
        assert!(!status.message().is_empty());
    }
    // A 128-character id and a 200-character title are fine.
    let ok = alice
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["y".repeat(128)],
            job_id: Some("j".repeat(128)),
            title: Some("t".repeat(200)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.created);
    let listed = list_threads(&mut alice, 0, None).await;
    assert_eq!(listed.threads.len(), 1, "only the valid thread exists");
}

async fn fifty_participants_is_the_limit(app: TestApp) {
    let mut alice = app.user("alice").await;
    let others: Vec<String> = (0..49).map(|i| format!("user{i}")).collect();
    let created = alice
        .create_thread(pb::CreateThreadRequest {
            participants: others,
            job_id: None,
            title: None,
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap();
    assert_eq!(created.participants.len(), 50);
    let mut sorted = created.participants.clone();
    sorted.sort();
    assert_eq!(created.participants, sorted);
}

async fn a_non_participant_learns_nothing(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut carol = app.user("carol").await;
    let t = create(&mut alice, &["bob"], Some("job-9")).await;
    let m = send(&mut alice, &t.id, "private").await;
    let unknown = uuid::Uuid::new_v4().to_string();

    for thread_id in [t.id.clone(), unknown.clone(), "not-a-uuid".to_owned()] {
        let statuses = vec![
            carol
                .get_thread(pb::GetThreadRequest {
                    thread_id: thread_id.clone(),
                })
                .await
                .map(|_| ()),
            carol
                .update_thread(pb::UpdateThreadRequest {
                    thread_id: thread_id.clone(),
                    title: Some("mine".into()),
                })
                .await
                .map(|_| ()),
            carol
                .archive_thread(pb::ArchiveThreadRequest {
                    thread_id: thread_id.clone(),
                })
                .await
                .map(|_| ()),
            carol
                .send_message(text_request(&thread_id, "hi"))
                .await
                .map(|_| ()),
            carol
                .list_messages(pb::ListMessagesRequest {
                    thread_id: thread_id.clone(),
                    before_seq: None,
                    after_seq: None,
                    limit: 0,
                })
                .await
                .map(|_| ()),
            carol
                .mark_read(pb::MarkReadRequest {
                    thread_id: thread_id.clone(),
                    up_to_seq: None,
                })
                .await
                .map(|_| ()),
        ];
        for status in statuses {
            let status = status.expect_err("must be refused");
            assert_eq!(status.code(), Code::NotFound, "{thread_id}: {status:?}");
            assert_eq!(status.message(), "thread not found");
        }
    }
    for message_id in [m.id.clone(), unknown.clone(), "nope".to_owned()] {
        let statuses = vec![
            carol
                .get_message(pb::GetMessageRequest {
                    message_id: message_id.clone(),
                })
                .await
                .map(|_| ()),
            carol
                .edit_message(pb::EditMessageRequest {
                    message_id: message_id.clone(),
                    content: "changed".into(),
                })
                .await
                .map(|_| ()),
            carol
                .delete_message(pb::DeleteMessageRequest {
                    message_id: message_id.clone(),
                })
                .await
                .map(|_| ()),
        ];
        for status in statuses {
            let status = status.expect_err("must be refused");
            assert_eq!(status.code(), Code::NotFound, "{message_id}: {status:?}");
            assert_eq!(status.message(), "message not found");
        }
    }
    let found = carol
        .find_thread_by_participants(pb::FindThreadByParticipantsRequest {
            participants: vec!["alice".into(), "bob".into()],
            job_id: Some("job-9".into()),
        })
        .await
        .expect_err("must be refused");
    assert_eq!(found.code(), Code::NotFound);
    assert!(list_threads(&mut carol, 0, None).await.threads.is_empty());
    assert_eq!(unread(&mut carol).await.total, 0);

    // Nothing carol tried changed anything.
    let after = thread(&mut alice, &t.id).await;
    assert_eq!(after.last_seq, 1);
    assert_eq!(after.title, None);
    let kept = alice
        .get_message(pb::GetMessageRequest {
            message_id: m.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(kept.content, "private");
    assert!(kept.deleted_at.is_none());
}

async fn messages_get_consecutive_seqs_and_page_both_ways(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"], None).await;
    let first = send(&mut alice, &t.id, "one").await;
    assert_eq!(first.seq, 1);
    assert_eq!(first.sender_id.as_deref(), Some("alice"));
    assert_eq!(first.message_type, MessageType::Text as i32);
    assert_eq!(first.metadata_json, "{}");
    assert_eq!(first.thread_id, t.id);
    assert!(first.created_at.is_some() && first.edited_at.is_none() && first.deleted_at.is_none());
    assert_eq!(send(&mut bob, &t.id, "two").await.seq, 2);
    assert_eq!(send(&mut alice, &t.id, "three").await.seq, 3);
    assert_eq!(send(&mut bob, &t.id, "four").await.seq, 4);

    assert_eq!(
        messages(&mut bob, &t.id, None, None, 0).await,
        (vec![1, 2, 3, 4], false)
    );
    assert_eq!(
        messages(&mut bob, &t.id, None, None, 2).await,
        (vec![3, 4], true)
    );
    assert_eq!(
        messages(&mut bob, &t.id, Some(3), None, 2).await,
        (vec![1, 2], false)
    );
    assert_eq!(
        messages(&mut bob, &t.id, Some(4), None, 2).await,
        (vec![2, 3], true)
    );
    assert_eq!(
        messages(&mut bob, &t.id, None, Some(1), 2).await,
        (vec![2, 3], true)
    );
    assert_eq!(
        messages(&mut bob, &t.id, None, Some(2), 2).await,
        (vec![3, 4], false)
    );
    assert_eq!(
        messages(&mut bob, &t.id, None, Some(4), 0).await,
        (vec![], false)
    );
    assert_eq!(
        messages(&mut bob, &t.id, Some(1), None, 0).await,
        (vec![], false)
    );

    let page = bob
        .list_messages(pb::ListMessagesRequest {
            thread_id: t.id.clone(),
            before_seq: None,
            after_seq: None,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let contents: Vec<_> = page.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["one", "two", "three", "four"]);

    for (before, after, limit) in [
        (Some(1), Some(1), 0),
        (Some(-1), None, 0),
        (None, Some(-5), 0),
        (None, None, 201),
        (None, None, -1),
    ] {
        let status = bob
            .list_messages(pb::ListMessagesRequest {
                thread_id: t.id.clone(),
                before_seq: before,
                after_seq: after,
                limit,
            })
            .await
            .expect_err("must be refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{before:?} {after:?} {limit}"
        );
    }
    assert_eq!(messages(&mut bob, &t.id, None, None, 200).await.0.len(), 4);
    let t = thread(&mut bob, &t.id).await;
    assert_eq!(t.last_seq, 4);
    assert!(t.last_message_at.is_some());
}

async fn bad_messages_are_refused_and_change_nothing(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = create(&mut alice, &["bob"], None).await;
    let big_metadata = format!(r#"{{"blob":"{}"}}"#, "x".repeat(16 * 1024));
    let base = text_request(&t.id, "hello");
    let cases: Vec<pb::SendMessageRequest> = vec![
        pb::SendMessageRequest {
            content: String::new(),
            ..base.clone()
        },
        pb::SendMessageRequest {
            content: "x".repeat(4001),
            ..base.clone()
        },
        pb::SendMessageRequest {
            content: "nul\u{0}byte".into(),
            ..base.clone()
        },
        pb::SendMessageRequest {
            content: "escape\u{1b}[31m".into(),
            ..base.clone()
        },
        pb::SendMessageRequest {
            content: "del\u{7f}".into(),
            ..base.clone()
        },
        pb::SendMessageRequest {
            content: "c1\u{85}".into(),
            ..base.clone()
        },
        pb::SendMessageRequest {
            metadata_json: Some("not json".into()),
            ..base.clone()
        },
        pb::SendMessageRequest {
            metadata_json: Some("[1,2]".into()),
            ..base.clone()
        },
        pb::SendMessageRequest {
            metadata_json: Some("\"text\"".into()),
            ..base.clone()
        },
        pb::SendMessageRequest {
            metadata_json: Some(big_metadata),
            ..base.clone()
        },
        pb::SendMessageRequest {
            client_msg_id: Some(String::new()),
            ..base.clone()
        },
        pb::SendMessageRequest {
            client_msg_id: Some("c".repeat(129)),
            ..base.clone()
        },
        pb::SendMessageRequest {
            client_msg_id: Some("tab\there".into()),
            ..base.clone()
        },
        pb::SendMessageRequest {
            message_type: MessageType::System.into(),
            ..base.clone()
        },
        pb::SendMessageRequest {
            message_type: MessageType::Payment.into(),
            ..base.clone()
        },
        pb::SendMessageRequest {
            message_type: 99,
            ..base.clone()
        },
    ];
    for request in cases {
        let status = alice
            .send_message(request.clone())
            .await
            .expect_err("must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
    }
    assert_eq!(thread(&mut alice, &t.id).await.last_seq, 0);

    // The edges of the rules are accepted, verbatim.
    let edge = "é".repeat(4000);
    let stored = alice
        .send_message(pb::SendMessageRequest {
            content: edge.clone(),
            client_msg_id: Some("k".repeat(128)),
            metadata_json: Some(r#"{"job": {"id": 7}, "tags": ["a"]}"#.into()),
            ..base.clone()
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(stored.content, edge);
    let metadata: serde_json::Value = serde_json::from_str(&stored.metadata_json).unwrap();
    assert_eq!(
        metadata,
        serde_json::json!({"job": {"id": 7}, "tags": ["a"]})
    );
    let markup = send(&mut alice, &t.id, "<b>not html</b>\n\ttabbed\r\n").await;
    assert_eq!(markup.content, "<b>not html</b>\n\ttabbed\r\n");
    assert_eq!(thread(&mut alice, &t.id).await.last_seq, 2);
}

async fn a_repeated_client_msg_id_returns_the_original(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"], None).await;
    let (first, created) = send_with(&mut alice, &t.id, "hello", Some("c-1")).await;
    assert!(created);
    let (again, created) = send_with(&mut alice, &t.id, "hello (retry)", Some("c-1")).await;
    assert!(!created);
    assert_eq!(again.id, first.id);
    assert_eq!(again.seq, 1);
    assert_eq!(again.content, "hello");
    assert_eq!(again.client_msg_id.as_deref(), Some("c-1"));
    // Keys are per sender.
    let (bobs, created) = send_with(&mut bob, &t.id, "mine", Some("c-1")).await;
    assert!(created);
    assert_eq!(bobs.seq, 2);
    assert_eq!(thread(&mut alice, &t.id).await.last_seq, 2);
    assert_eq!(
        messages(&mut alice, &t.id, None, None, 0).await.0,
        vec![1, 2]
    );
}

async fn fifty_concurrent_sends_get_seq_1_to_50(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = create(&mut alice, &["bob"], None).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = if i % 2 == 0 {
            app.user("alice").await
        } else {
            app.user("bob").await
        };
        let id = t.id.clone();
        tasks.push(tokio::spawn(async move {
            send(&mut client, &id, &format!("message {i}")).await.seq
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<i64>>());
    assert_eq!(thread(&mut alice, &t.id).await.last_seq, 50);
    let (stored, _) = messages(&mut alice, &t.id, None, None, 200).await;
    assert_eq!(stored, (1..=50).collect::<Vec<i64>>());
}

async fn concurrent_retries_of_one_message_store_it_once(app: TestApp) {
    let mut alice = app.user("alice").await;
    let t = create(&mut alice, &["bob"], None).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut client = app.user("alice").await;
        let id = t.id.clone();
        tasks.push(tokio::spawn(async move {
            send_with(&mut client, &id, "once", Some("retry-key")).await
        }));
    }
    let mut created = 0;
    let mut ids = HashSet::new();
    for task in tasks {
        let (message, was_created) = task.await.unwrap();
        created += usize::from(was_created);
        ids.insert(message.id);
        assert_eq!(message.seq, 1);
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(thread(&mut alice, &t.id).await.last_seq, 1);
}

async fn concurrent_creations_of_one_thread_make_one_thread(app: TestApp) {
    // The same participants and job, created by both sides at once (the
    // creator is always a participant): one thread, created once, with its
    // participants listed once each.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (me, other) = if i % 2 == 0 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        let mut client = app.user(me).await;
        tasks.push(tokio::spawn(async move {
            let response = client
                .create_thread(pb::CreateThreadRequest {
                    participants: vec![other.to_owned()],
                    job_id: Some("job-7".to_owned()),
                    title: None,
                })
                .await
                .expect("create thread")
                .into_inner();
            (response.thread.expect("thread"), response.created)
        }));
    }
    let mut created = 0;
    let mut ids = HashSet::new();
    for task in tasks {
        let (thread, was_created) = task.await.unwrap();
        created += usize::from(was_created);
        assert_eq!(thread.participants, vec!["alice", "bob"]);
        ids.insert(thread.id);
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM threads").await, 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM thread_participants").await,
        2
    );
    // Another job is another thread.
    let mut alice = app.user("alice").await;
    let other = create(&mut alice, &["bob"], Some("job-8")).await;
    assert!(!ids.contains(&other.id));
}

async fn only_the_sender_edits_or_deletes(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"], None).await;
    let m = send(&mut alice, &t.id, "original").await;

    let status = bob
        .edit_message(pb::EditMessageRequest {
            message_id: m.id.clone(),
            content: "hijacked".into(),
        })
        .await
        .expect_err("not the sender");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = bob
        .delete_message(pb::DeleteMessageRequest {
            message_id: m.id.clone(),
        })
        .await
        .expect_err("not the sender");
    assert_eq!(status.code(), Code::PermissionDenied);
    for content in ["", "bad\u{0}"] {
        let status = alice
            .edit_message(pb::EditMessageRequest {
                message_id: m.id.clone(),
                content: content.into(),
            })
            .await
            .expect_err("invalid content");
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    let edited = alice
        .edit_message(pb::EditMessageRequest {
            message_id: m.id.clone(),
            content: "corrected".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(edited.content, "corrected");
    assert_eq!(edited.seq, 1);
    assert!(edited.edited_at.is_some());
    let seen = bob
        .get_message(pb::GetMessageRequest {
            message_id: m.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(seen.content, "corrected");
    assert_eq!(seen.edited_at, edited.edited_at);

    alice
        .delete_message(pb::DeleteMessageRequest {
            message_id: m.id.clone(),
        })
        .await
        .unwrap();
    // Deleting again changes nothing.
    alice
        .delete_message(pb::DeleteMessageRequest {
            message_id: m.id.clone(),
        })
        .await
        .unwrap();
    let status = alice
        .edit_message(pb::EditMessageRequest {
            message_id: m.id.clone(),
            content: "resurrect".into(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(thread(&mut alice, &t.id).await.last_seq, 1);
}

async fn deleted_messages_keep_their_content_for_services(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let mut disputes = app.service("dispute-service").await;
    let t = create(&mut alice, &["bob"], None).await;
    let m = alice
        .send_message(pb::SendMessageRequest {
            metadata_json: Some(r#"{"k":"v"}"#.into()),
            ..text_request(&t.id, "evidence")
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    alice
        .delete_message(pb::DeleteMessageRequest {
            message_id: m.id.clone(),
        })
        .await
        .unwrap();

    for client in [&mut alice, &mut bob] {
        let seen = client
            .get_message(pb::GetMessageRequest {
                message_id: m.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .message
            .unwrap();
        assert_eq!(seen.content, "");
        assert_eq!(seen.metadata_json, "{}");
        assert!(seen.deleted_at.is_some());
        let page = client
            .list_messages(pb::ListMessagesRequest {
                thread_id: t.id.clone(),
                before_seq: None,
                after_seq: None,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].content, "");
        let listed = list_threads(client, 0, None).await;
        assert_eq!(listed.threads[0].last_message.as_ref().unwrap().content, "");
    }
    let evidence = disputes
        .get_message(pb::GetMessageRequest {
            message_id: m.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(evidence.content, "evidence");
    assert_eq!(evidence.metadata_json, r#"{"k":"v"}"#);
    assert!(evidence.deleted_at.is_some());
}

async fn read_cursors_only_move_forward(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"], None).await;
    for text in ["a", "b", "c"] {
        send(&mut alice, &t.id, text).await;
    }
    // Sending moved alice's own cursor.
    let seen_by_alice = thread(&mut alice, &t.id).await;
    assert_eq!(
        (seen_by_alice.last_read_seq, seen_by_alice.unread_count),
        (3, 0)
    );
    let seen_by_bob = thread(&mut bob, &t.id).await;
    assert_eq!(
        (seen_by_bob.last_read_seq, seen_by_bob.unread_count),
        (0, 3)
    );

    let mark = async |client: &mut Client, up_to: Option<i64>| {
        let r = client
            .mark_read(pb::MarkReadRequest {
                thread_id: t.id.clone(),
                up_to_seq: up_to,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.thread_id, t.id);
        (r.last_read_seq, r.unread_count)
    };
    assert_eq!(mark(&mut bob, Some(2)).await, (2, 1));
    assert_eq!(mark(&mut bob, Some(1)).await, (2, 1), "never backwards");
    assert_eq!(mark(&mut bob, Some(0)).await, (2, 1));
    assert_eq!(
        mark(&mut bob, Some(99)).await,
        (3, 0),
        "clamped to last_seq"
    );
    send(&mut alice, &t.id, "d").await;
    assert_eq!(thread(&mut bob, &t.id).await.unread_count, 1);
    assert_eq!(mark(&mut bob, None).await, (4, 0), "default: the latest");

    let status = bob
        .mark_read(pb::MarkReadRequest {
            thread_id: t.id.clone(),
            up_to_seq: Some(-1),
        })
        .await
        .expect_err("negative");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(thread(&mut bob, &t.id).await.last_read_seq, 4);

    // A thread with no message: the cursor stays at 0.
    let empty = create(&mut alice, &["bob"], Some("job-empty")).await;
    let r = bob
        .mark_read(pb::MarkReadRequest {
            thread_id: empty.id.clone(),
            up_to_seq: Some(5),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.last_read_seq, r.unread_count), (0, 0));
}

async fn unread_counts_per_thread_and_total(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t1 = create(&mut alice, &["bob"], Some("job-1")).await;
    let t2 = create(&mut alice, &["bob", "carol"], None).await;
    let t3 = create(&mut alice, &["bob"], Some("job-3")).await;
    for _ in 0..3 {
        send(&mut alice, &t1.id, "x").await;
    }
    send(&mut alice, &t2.id, "y").await;
    send(&mut bob, &t3.id, "z").await;

    let counts = unread(&mut bob).await;
    assert_eq!(counts.total, 4);
    assert_eq!(counts.threads.len(), 2);
    assert_eq!(counts.threads[&t1.id], 3);
    assert_eq!(counts.threads[&t2.id], 1);
    let counts = unread(&mut alice).await;
    assert_eq!(counts.total, 1);
    assert_eq!(counts.threads.len(), 1);
    assert_eq!(counts.threads[&t3.id], 1);

    bob.mark_read(pb::MarkReadRequest {
        thread_id: t1.id.clone(),
        up_to_seq: Some(1),
    })
    .await
    .unwrap();
    let counts = unread(&mut bob).await;
    assert_eq!(counts.total, 3);
    assert_eq!(counts.threads[&t1.id], 2);
    let carol = unread(&mut app.user("carol").await).await;
    assert_eq!(carol.total, 1);
    assert_eq!(carol.threads[&t2.id], 1);
}

async fn thread_list_is_ordered_paged_and_filtered(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            create(&mut alice, &["bob"], Some(&format!("job-{i}")))
                .await
                .id,
        );
    }
    // Activity order, most recent first: job-2 (message), then job-4 ... job-0
    // by creation, except job-2 moved to the top.
    send(&mut bob, &ids[2], "bump").await;
    let expected = vec![
        ids[2].clone(),
        ids[4].clone(),
        ids[3].clone(),
        ids[1].clone(),
        ids[0].clone(),
    ];

    let all = list_threads(&mut alice, 0, None).await;
    let order: Vec<_> = all.threads.iter().map(|t| t.id.clone()).collect();
    assert_eq!(order, expected);
    assert_eq!(all.next_cursor, None);
    let top = &all.threads[0];
    assert_eq!(top.unread_count, 1);
    assert_eq!(top.participants, vec!["alice", "bob"]);
    let last = top.last_message.as_ref().expect("last message");
    assert_eq!(
        (last.seq, last.content.as_str(), last.sender_id.as_deref()),
        (1, "bump", Some("bob"))
    );
    assert!(all.threads[1].last_message.is_none());

    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = list_threads(&mut alice, 2, cursor).await;
        assert!(page.threads.len() <= 2);
        paged.extend(page.threads.into_iter().map(|t| t.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, expected);

    let filtered = alice
        .list_threads(pb::ListThreadsRequest {
            limit: 0,
            cursor: None,
            job_id: Some("job-3".into()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.threads.len(), 1);
    assert_eq!(filtered.threads[0].id, ids[3]);

    for (limit, cursor) in [
        (101, None),
        (-1, None),
        (0, Some("garbage".to_owned())),
        (0, Some(String::new())),
    ] {
        let status = alice
            .list_threads(pb::ListThreadsRequest {
                limit,
                cursor: cursor.clone(),
                job_id: None,
            })
            .await
            .expect_err("must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{limit} {cursor:?}");
    }
    assert_eq!(list_threads(&mut alice, 100, None).await.threads.len(), 5);
}

async fn archived_threads_return_with_a_new_message(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"], None).await;
    let other = create(&mut alice, &["carol"], None).await;
    send(&mut bob, &t.id, "first").await;
    alice
        .archive_thread(pb::ArchiveThreadRequest {
            thread_id: t.id.clone(),
        })
        .await
        .unwrap();
    let listed: Vec<_> = list_threads(&mut alice, 0, None)
        .await
        .threads
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, vec![other.id.clone()]);
    assert_eq!(
        unread(&mut alice).await.total,
        0,
        "archived threads do not count"
    );
    // Only for alice.
    assert_eq!(list_threads(&mut bob, 0, None).await.threads.len(), 1);
    // Still readable directly.
    assert_eq!(thread(&mut alice, &t.id).await.id, t.id);

    send(&mut bob, &t.id, "are you there?").await;
    let listed: Vec<_> = list_threads(&mut alice, 0, None)
        .await
        .threads
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, vec![t.id.clone(), other.id.clone()]);
    assert_eq!(unread(&mut alice).await.total, 2);

    // Re-creating an archived thread brings it back too.
    alice
        .archive_thread(pb::ArchiveThreadRequest {
            thread_id: t.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(list_threads(&mut alice, 0, None).await.threads.len(), 1);
    assert_eq!(create(&mut alice, &["bob"], None).await.id, t.id);
    assert_eq!(list_threads(&mut alice, 0, None).await.threads.len(), 2);
}

async fn titles_can_change_and_are_checked(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let t = create(&mut alice, &["bob"], None).await;
    let updated = bob
        .update_thread(pb::UpdateThreadRequest {
            thread_id: t.id.clone(),
            title: Some("Kitchen remodel".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap();
    assert_eq!(updated.title.as_deref(), Some("Kitchen remodel"));
    assert_eq!(
        thread(&mut alice, &t.id).await.title.as_deref(),
        Some("Kitchen remodel")
    );
    for bad in ["t".repeat(201), "tab\tin title".to_owned()] {
        let status = alice
            .update_thread(pb::UpdateThreadRequest {
                thread_id: t.id.clone(),
                title: Some(bad),
            })
            .await
            .expect_err("bad title");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    assert_eq!(
        thread(&mut alice, &t.id).await.title.as_deref(),
        Some("Kitchen remodel")
    );
    let cleared = alice
        .update_thread(pb::UpdateThreadRequest {
            thread_id: t.id.clone(),
            title: None,
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap();
    assert_eq!(cleared.title, None);
    assert_eq!(thread(&mut bob, &t.id).await.title, None);
}

async fn find_by_participants_needs_the_exact_set(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut bob = app.user("bob").await;
    let pair = create(&mut alice, &["bob"], None).await;
    let pair_job = create(&mut alice, &["bob"], Some("job-7")).await;
    let trio = create(&mut alice, &["bob", "carol"], None).await;

    let find = async |client: &mut Client, who: &[&str], job: Option<&str>| {
        client
            .find_thread_by_participants(pb::FindThreadByParticipantsRequest {
                participants: who.iter().map(|s| s.to_string()).collect(),
                job_id: job.map(str::to_owned),
            })
            .await
            .map(|r| r.into_inner().thread.unwrap().id)
            .map_err(|s| s.code())
    };
    assert_eq!(
        find(&mut bob, &["alice", "bob"], None).await,
        Ok(pair.id.clone())
    );
    assert_eq!(
        find(&mut bob, &["bob", "alice"], Some("job-7")).await,
        Ok(pair_job.id)
    );
    assert_eq!(
        find(&mut alice, &["carol", "alice", "bob"], None).await,
        Ok(trio.id)
    );
    assert_eq!(
        find(&mut alice, &["alice", "bob"], Some("job-8")).await,
        Err(Code::NotFound)
    );
    assert_eq!(
        find(&mut alice, &["alice", "dave"], None).await,
        Err(Code::NotFound)
    );
    // The caller must be among the participants.
    assert_eq!(
        find(&mut alice, &["bob", "carol"], None).await,
        Err(Code::NotFound)
    );
    assert_eq!(
        find(&mut alice, &["alice"], None).await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        find(&mut alice, &["alice", "bad id"], None).await,
        Err(Code::InvalidArgument)
    );
    // A service may look up any thread.
    let mut jobs = app.service("job-service").await;
    assert_eq!(find(&mut jobs, &["alice", "bob"], None).await, Ok(pair.id));
}

async fn service_tokens_read_everything_but_never_act_as_users(app: TestApp) {
    let mut alice = app.user("alice").await;
    let mut service = app.service("payment-service").await;
    let t = create(&mut alice, &["bob"], Some("job-1")).await;
    send(&mut alice, &t.id, "hello").await;

    let seen = thread(&mut service, &t.id).await;
    assert_eq!(seen.participants, vec!["alice", "bob"]);
    assert_eq!(
        (seen.last_seq, seen.last_read_seq, seen.unread_count),
        (1, 0, 0)
    );
    assert_eq!(
        messages(&mut service, &t.id, None, None, 0).await.0,
        vec![1]
    );
    let listed = list_threads(&mut service, 0, None).await;
    assert_eq!(listed.threads.len(), 1);
    assert_eq!(listed.threads[0].id, t.id);

    assert_eq!(
        code(service.send_message(text_request(&t.id, "as alice?")).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            service
                .mark_read(pb::MarkReadRequest {
                    thread_id: t.id.clone(),
                    up_to_seq: None,
                })
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            service
                .archive_thread(pb::ArchiveThreadRequest {
                    thread_id: t.id.clone(),
                })
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            service
                .get_unread_counts(pb::GetUnreadCountsRequest {})
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            service
                .update_thread(pb::UpdateThreadRequest {
                    thread_id: t.id.clone(),
                    title: Some("renamed by a service".into()),
                })
                .await
        ),
        Code::PermissionDenied
    );
    let unchanged = thread(&mut alice, &t.id).await;
    assert_eq!((unchanged.last_seq, unchanged.title), (1, None));

    // A service creating a thread is not added to it.
    let created = create(&mut service, &["alice", "carol"], Some("job-2")).await;
    assert_eq!(created.participants, vec!["alice", "carol"]);
    assert_eq!(created.created_by, "payment-service");
    let status = service
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["alice".into()],
            job_id: None,
            title: None,
        })
        .await
        .expect_err("one participant");
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn tokens_are_checked_on_every_call(app: TestApp) {
    let expired = sign(&app.secret, "alice", None, now() - 3600);
    let forged = sign("another-secret", "alice", None, now() + 3600);
    let bad_sub = sign(&app.secret, "alice smith", None, now() + 3600);
    for token in [
        None,
        Some("garbage".to_owned()),
        Some(expired),
        Some(forged),
        Some(bad_sub),
    ] {
        let mut client = app.with_token(token.clone()).await;
        let status = client
            .list_threads(pb::ListThreadsRequest::default())
            .await
            .expect_err("must be refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        let status = client
            .create_thread(pb::CreateThreadRequest {
                participants: vec!["bob".into()],
                job_id: None,
                title: None,
            })
            .await
            .expect_err("must be refused");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let mut alice = app.user("alice").await;
    assert!(list_threads(&mut alice, 0, None).await.threads.is_empty());
}
