//! Upgrading a database written by an earlier schema: what it holds stays
//! found. Each test starts from the first migration only, writes a thread
//! as that schema stored it, then lets chat-core migrate the rest.

mod support;

use std::path::Path;

use chat_core::store::participants_key;
use chat_proto::v1 as pb;
use sqlx::{Connection as _, PgConnection, SqliteConnection, migrate::Migrator};
use support::{Backend, TestDatabase};

/// The thread written under the first schema: alice and bob, no job.
const THREAD: &str = "0190a9c4-0000-7000-8000-000000000001";

async fn first_migration_only(backend: Backend) -> Migrator {
    let dir = match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../migrations")
        .join(dir);
    let mut migrator = Migrator::new(root).await.expect("migrations directory");
    assert!(migrator.migrations.len() >= 2, "later migrations exist");
    migrator.migrations = migrator.migrations[..1].to_vec().into();
    migrator
}

const THREAD_ROW: &str = "INSERT INTO threads (id, participants_key, job_key, job_id, title, \
    created_by, created_at, last_seq, activity_at) VALUES ($1, $2, '', NULL, 'old', 'alice', 1, 0, 1)";
const PARTICIPANT_ROW: &str =
    "INSERT INTO thread_participants (thread_id, user_id, activity_at) VALUES ($1, $2, 1)";

async fn a_thread_from_the_first_schema_is_still_found(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let id: uuid::Uuid = THREAD.parse().expect("uuid");
    let key = participants_key(&["alice".to_owned(), "bob".to_owned()]);
    let migrator = first_migration_only(backend).await;
    // The same rows on either backend's connection type.
    macro_rules! write_first_schema {
        ($conn:expr) => {{
            let conn = $conn;
            migrator.run(&mut *conn).await.expect("first migration");
            sqlx::query(THREAD_ROW)
                .bind(id)
                .bind(&key)
                .execute(&mut *conn)
                .await
                .expect("thread");
            for user in ["alice", "bob"] {
                sqlx::query(PARTICIPANT_ROW)
                    .bind(id)
                    .bind(user)
                    .execute(&mut *conn)
                    .await
                    .expect("participant");
            }
        }};
    }
    match backend {
        Backend::Postgres => {
            write_first_schema!(&mut PgConnection::connect(&db.url).await.expect("connect"));
        }
        Backend::Sqlite => {
            let url = format!("{}?mode=rwc", db.url);
            write_first_schema!(&mut SqliteConnection::connect(&url).await.expect("connect"));
        }
    }

    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    let app = support::spawn_on(db, backend, secret).await;
    let mut bob = app.user("bob").await;
    let response = bob
        .create_thread(pb::CreateThreadRequest {
            participants: vec!["alice".to_owned()],
            job_id: None,
            title: None,
        })
        .await
        .expect("create thread")
        .into_inner();
    assert!(!response.created, "the old thread, not a new one");
    assert_eq!(response.thread.expect("thread").id, THREAD);
    let found = bob
        .find_thread_by_participants(pb::FindThreadByParticipantsRequest {
            participants: vec!["alice".to_owned(), "bob".to_owned()],
            job_id: None,
        })
        .await
        .expect("find")
        .into_inner();
    assert_eq!(found.thread.expect("thread").id, THREAD);
    let sent = support::send(&mut bob, THREAD, "after the upgrade").await;
    assert_eq!(sent.seq, 1);
}

#[tokio::test]
async fn sqlite_upgrade_keeps_threads_found() {
    a_thread_from_the_first_schema_is_still_found(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_upgrade_keeps_threads_found() {
    a_thread_from_the_first_schema_is_still_found(Backend::Postgres).await;
}
