-- chat-core schema (SQLite). Same tables, columns and constraints as the
-- PostgreSQL schema (see migrations/postgres for the reasons behind each);
-- UUIDs are 16-byte BLOBs and timestamps microseconds since the Unix epoch.

CREATE TABLE threads (
    id               BLOB    PRIMARY KEY NOT NULL,
    participants_key TEXT    NOT NULL,
    job_key          TEXT    NOT NULL,
    job_id           TEXT,
    title            TEXT,
    created_by       TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    last_message_at  INTEGER,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    activity_at      INTEGER NOT NULL,
    CONSTRAINT threads_one_per_participants_and_job UNIQUE (participants_key, job_key)
);

CREATE INDEX threads_by_activity ON threads (activity_at DESC, id DESC);
CREATE INDEX threads_by_job ON threads (job_id, activity_at DESC, id DESC) WHERE job_id IS NOT NULL;

CREATE TABLE thread_participants (
    thread_id     BLOB    NOT NULL REFERENCES threads (id),
    user_id       TEXT    NOT NULL,
    last_read_seq INTEGER NOT NULL DEFAULT 0,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    activity_at   INTEGER NOT NULL,
    archived_seq  INTEGER,
    PRIMARY KEY (thread_id, user_id)
) WITHOUT ROWID;

CREATE INDEX thread_participants_by_user_activity
    ON thread_participants (user_id, activity_at DESC, thread_id DESC);

CREATE TABLE messages (
    id              BLOB    PRIMARY KEY NOT NULL,
    thread_id       BLOB    NOT NULL REFERENCES threads (id),
    seq             INTEGER NOT NULL,
    sender_id       TEXT,
    message_type    TEXT    NOT NULL
        CHECK (message_type IN ('text', 'system', 'payment', 'dispute', 'job_update')),
    content         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    client_msg_id   TEXT,
    posted_by       TEXT,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL,
    edited_at       INTEGER,
    deleted_at      INTEGER,
    CONSTRAINT messages_thread_seq UNIQUE (thread_id, seq)
);

CREATE UNIQUE INDEX messages_client_msg_id
    ON messages (thread_id, sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL AND sender_id IS NOT NULL;

CREATE UNIQUE INDEX messages_idempotency_key
    ON messages (posted_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE integration_events (
    id          INTEGER PRIMARY KEY NOT NULL,
    event_type  TEXT    NOT NULL,
    thread_id   BLOB    NOT NULL REFERENCES threads (id),
    message_id  BLOB    NOT NULL REFERENCES messages (id),
    actor_id    TEXT,
    payload     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE INDEX integration_events_by_type ON integration_events (event_type, id);

CREATE TABLE integration_event_counter (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    last_id INTEGER NOT NULL
);
INSERT INTO integration_event_counter (id, last_id) VALUES (1, 0);
