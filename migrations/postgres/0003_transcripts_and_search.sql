-- Dispute-grade transcripts and full-text search.
--
-- Transcript: each thread's hash chain. Its head (the last entry's number
-- and hash) lives on the thread row, which every write to the thread
-- already locks and updates, so extending the chain costs no extra row
-- lock. A message's own entry is stored on its row (the entry number and
-- hash, and the content as first stored once an edit replaces it), so
-- the send path writes no extra row; edits and deletions, rarer, are rows
-- of transcript_entries.
ALTER TABLE threads
    ADD COLUMN transcript_n    BIGINT NOT NULL DEFAULT 0,
    -- NULL before the first entry: the head is then SHA-256(thread id).
    ADD COLUMN transcript_head BYTEA;

ALTER TABLE messages
    ADD COLUMN transcript_n     BIGINT,
    ADD COLUMN transcript_hash  BYTEA,
    -- The content as first stored, kept once an edit replaces `content`.
    ADD COLUMN original_content TEXT,
    -- The normalized words of the content (see chat-core's search module),
    -- parsed by the 'simple' configuration: no stemming, no stop words.
    ADD COLUMN search           TSVECTOR;

CREATE TABLE transcript_entries (
    thread_id  UUID   NOT NULL REFERENCES threads (id),
    n          BIGINT NOT NULL,
    kind       TEXT   NOT NULL CHECK (kind IN ('edit', 'delete')),
    message_id UUID   NOT NULL REFERENCES messages (id),
    -- Who edited or deleted the message.
    sender_id  TEXT   NOT NULL,
    -- NULL for a deletion.
    content    TEXT,
    metadata   TEXT,
    at         BIGINT NOT NULL,
    hash       BYTEA  NOT NULL,
    PRIMARY KEY (thread_id, n)
);

-- Every key that ever signed an export, so rotated keys still verify.
CREATE TABLE transcript_keys (
    key_id     TEXT   PRIMARY KEY,
    public_key TEXT   NOT NULL,
    added_at   BIGINT NOT NULL
);

-- Messages stored before this migration have no chain entry; their
-- words are indexed as PostgreSQL's parser splits them.
UPDATE messages SET search = to_tsvector('simple', lower(content));

CREATE INDEX messages_search ON messages USING GIN (search);
-- Search results come newest first.
CREATE INDEX messages_by_time ON messages (created_at DESC, id DESC);
