-- The off-platform contact guard (see the PostgreSQL migration of the same
-- name).
ALTER TABLE threads ADD COLUMN contact_policy TEXT
    CHECK (contact_policy IN ('off', 'flag', 'mask', 'block'));

ALTER TABLE messages ADD COLUMN flags TEXT;
ALTER TABLE messages ADD COLUMN masked_content TEXT;

-- SQLite cannot drop a NOT NULL: the outbox is rebuilt with message_id
-- optional, rows and ids unchanged.
CREATE TABLE integration_events_rebuilt (
    id          INTEGER PRIMARY KEY NOT NULL,
    event_type  TEXT    NOT NULL,
    thread_id   BLOB    NOT NULL REFERENCES threads (id),
    message_id  BLOB    REFERENCES messages (id),
    actor_id    TEXT,
    payload     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
INSERT INTO integration_events_rebuilt (id, event_type, thread_id, message_id, actor_id, payload, created_at)
SELECT id, event_type, thread_id, message_id, actor_id, payload, created_at FROM integration_events;
DROP TABLE integration_events;
ALTER TABLE integration_events_rebuilt RENAME TO integration_events;
CREATE INDEX integration_events_by_type ON integration_events (event_type, id);
