-- chat-core schema (PostgreSQL). Timestamps are microseconds since the Unix
-- epoch (UTC) in BIGINT columns, the same as the SQLite schema, so both
-- backends order and page identically.

CREATE TABLE threads (
    id               UUID PRIMARY KEY,
    -- SHA-256 (hex) of the sorted participant ids joined by ',': the set of
    -- participants in a fixed-size, indexable form.
    participants_key TEXT   NOT NULL,
    -- job_id, or '' for a thread with no job: a unique constraint treats
    -- NULLs as distinct, which would allow duplicate job-less threads.
    job_key          TEXT   NOT NULL,
    job_id           TEXT,
    title            TEXT,
    created_by       TEXT   NOT NULL,
    created_at       BIGINT NOT NULL,
    last_message_at  BIGINT,
    -- The seq of the last message; the next message takes last_seq + 1 in
    -- the same transaction that inserts it (the row lock orders senders).
    last_seq         BIGINT NOT NULL DEFAULT 0,
    -- last_message_at, or created_at before the first message.
    activity_at      BIGINT NOT NULL,
    CONSTRAINT threads_one_per_participants_and_job UNIQUE (participants_key, job_key)
);

-- Service tokens list every thread by activity, optionally for one job.
CREATE INDEX threads_by_activity ON threads (activity_at DESC, id DESC);
CREATE INDEX threads_by_job ON threads (job_id, activity_at DESC, id DESC) WHERE job_id IS NOT NULL;

CREATE TABLE thread_participants (
    thread_id     UUID   NOT NULL REFERENCES threads (id),
    user_id       TEXT   NOT NULL,
    -- Only moves forward.
    last_read_seq BIGINT NOT NULL DEFAULT 0,
    -- Copies of threads.last_seq and threads.activity_at, written in the
    -- same transaction as each message, so that a user's thread list and
    -- unread counts read this table alone.
    last_seq      BIGINT NOT NULL DEFAULT 0,
    activity_at   BIGINT NOT NULL,
    -- Set when the user archived the thread: hidden while last_seq has not
    -- moved past it.
    archived_seq  BIGINT,
    PRIMARY KEY (thread_id, user_id)
);

-- A user's threads by recent activity (the thread list and its pages).
CREATE INDEX thread_participants_by_user_activity
    ON thread_participants (user_id, activity_at DESC, thread_id DESC);

CREATE TABLE messages (
    id              UUID   PRIMARY KEY,
    thread_id       UUID   NOT NULL REFERENCES threads (id),
    seq             BIGINT NOT NULL,
    -- NULL for messages posted by a service.
    sender_id       TEXT,
    message_type    TEXT   NOT NULL
        CHECK (message_type IN ('text', 'system', 'payment', 'dispute', 'job_update')),
    content         TEXT   NOT NULL,
    -- A JSON object, compact, at most 16 KiB.
    metadata        TEXT   NOT NULL,
    client_msg_id   TEXT,
    -- The service that posted a sender-less message, and its idempotency key.
    posted_by       TEXT,
    idempotency_key TEXT,
    created_at      BIGINT NOT NULL,
    edited_at       BIGINT,
    -- Soft delete: the row and its content stay (dispute evidence).
    deleted_at      BIGINT,
    -- Messages by (thread, seq): paging, and no duplicate seq ever.
    CONSTRAINT messages_thread_seq UNIQUE (thread_id, seq)
);

CREATE UNIQUE INDEX messages_client_msg_id
    ON messages (thread_id, sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL AND sender_id IS NOT NULL;

CREATE UNIQUE INDEX messages_idempotency_key
    ON messages (posted_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The transactional outbox: written in the same transaction as its message
-- by the integration RPCs, read by WatchIntegrationEvents.
CREATE TABLE integration_events (
    id          BIGINT  PRIMARY KEY,
    event_type  TEXT   NOT NULL,
    thread_id   UUID   NOT NULL REFERENCES threads (id),
    message_id  UUID   NOT NULL REFERENCES messages (id),
    actor_id    TEXT,
    payload     TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE INDEX integration_events_by_type ON integration_events (event_type, id);

-- Event ids are taken from this one row, in the transaction that writes the
-- event: its row lock orders writers, so ids become visible in id order and
-- a consumer resuming "after id N" can never miss an event committed late.
CREATE TABLE integration_event_counter (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    last_id BIGINT  NOT NULL
);
INSERT INTO integration_event_counter (id, last_id) VALUES (1, 0);
