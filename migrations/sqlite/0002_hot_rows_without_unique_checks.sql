-- Thread identities (participants and job) in their own table, written
-- once at creation, as on PostgreSQL, where unique checks on the rows
-- updated by every message proved costly. SQLite updates rows in place,
-- so its threads and thread_participants keep their constraints; the
-- table is here so that both backends run the same statements.

CREATE TABLE thread_keys (
    participants_key TEXT NOT NULL,
    job_key          TEXT NOT NULL,
    thread_id        BLOB NOT NULL,
    PRIMARY KEY (participants_key, job_key)
) WITHOUT ROWID;

INSERT INTO thread_keys (participants_key, job_key, thread_id)
SELECT participants_key, job_key, id FROM threads;
