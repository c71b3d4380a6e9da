-- Every message updates its thread's row and both participants' rows, and
-- each such update adds a new entry to every index of the row (the changed
-- activity_at is indexed, so the update cannot be heap-only). A unique
-- index then checks the new entry against every earlier version of the
-- row still in the index: until vacuum catches up, the busiest threads pay
-- the most. Measured here, the unique checks made up about 40% of the cost
-- of each update. So the rows updated per message keep no unique index:
--
-- * a thread's identity (its participants and job) moves to thread_keys,
--   written once when the thread is created; creation inserts there first
--   and only the winner of that insert creates the thread;
-- * thread_participants gets a plain index for its lookups. Its rows are
--   only ever inserted by the transaction that created the thread, once
--   per (deduplicated) participant, so the key stays unique by
--   construction.

CREATE TABLE thread_keys (
    participants_key TEXT NOT NULL,
    job_key          TEXT NOT NULL,
    thread_id        UUID NOT NULL,
    PRIMARY KEY (participants_key, job_key)
);

INSERT INTO thread_keys (participants_key, job_key, thread_id)
SELECT participants_key, job_key, id FROM threads;

ALTER TABLE threads DROP CONSTRAINT threads_one_per_participants_and_job;

ALTER TABLE thread_participants DROP CONSTRAINT thread_participants_pkey;
CREATE INDEX thread_participants_by_thread ON thread_participants (thread_id, user_id);
