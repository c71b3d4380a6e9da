-- Dispute-grade transcripts and full-text search (see the PostgreSQL
-- migration of the same name for the layout).
ALTER TABLE threads ADD COLUMN transcript_n INTEGER NOT NULL DEFAULT 0;
ALTER TABLE threads ADD COLUMN transcript_head BLOB;

ALTER TABLE messages ADD COLUMN transcript_n INTEGER;
ALTER TABLE messages ADD COLUMN transcript_hash BLOB;
ALTER TABLE messages ADD COLUMN original_content TEXT;

CREATE TABLE transcript_entries (
    thread_id  BLOB    NOT NULL REFERENCES threads (id),
    n          INTEGER NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('edit', 'delete')),
    message_id BLOB    NOT NULL REFERENCES messages (id),
    sender_id  TEXT    NOT NULL,
    content    TEXT,
    metadata   TEXT,
    at         INTEGER NOT NULL,
    hash       BLOB    NOT NULL,
    PRIMARY KEY (thread_id, n)
) WITHOUT ROWID;

CREATE TABLE transcript_keys (
    key_id     TEXT    PRIMARY KEY,
    public_key TEXT    NOT NULL,
    added_at   INTEGER NOT NULL
) WITHOUT ROWID;

-- The normalized words of each message (chat-core's search module makes
-- them), keyed by the message's rowid. Contentless: the words are not
-- stored twice, only indexed.
CREATE VIRTUAL TABLE message_search USING fts5(
    words, content = '', contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);

INSERT INTO message_search (rowid, words) SELECT rowid, content FROM messages;

