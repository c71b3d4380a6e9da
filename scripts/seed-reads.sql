-- The read-path dataset of BENCHMARKS.md ("Reads at scale"), written
-- straight into chat-core's PostgreSQL schema (run chat-core once first so
-- it has migrated the database):
--
--   psql -v threads=100000 -v per_thread=100 -v reader_threads=10000 -f scripts/seed-reads.sql
--
-- `threads` threads of two participants with `per_thread` messages each
-- (100,000 × 100 = 10 million messages). The first `reader_threads` of them
-- belong to the user `reader`, who has read everything except in every
-- 20th thread (500 of 10,000), where 1 to 7 messages are unread; the
-- others belong to users `peer-i` and `other-i`. Activity is spread
-- so that the reader's threads are interleaved with everyone else's.
\set ON_ERROR_STOP on
SET synchronous_commit = off;
SET maintenance_work_mem = '512MB';

BEGIN;
CREATE TEMP TABLE seed_threads AS
SELECT i,
       md5('thread-' || i)::uuid AS id,
       CASE WHEN i <= :reader_threads THEN 'reader' ELSE 'other-' || i END AS a,
       'peer-' || i AS b,
       -- 2026-09-21 plus a shuffled second per thread.
       1790000000000000 + ((i::bigint * 7919) % :threads) * 1000000 AS activity_at
FROM generate_series(1, :threads) AS i;

INSERT INTO threads (id, participants_key, job_key, job_id, title, created_by,
                     created_at, last_message_at, last_seq, activity_at)
SELECT id,
       encode(sha256(convert_to(least(a, b) || ',' || greatest(a, b), 'UTF8')), 'hex'),
       'job-' || i, 'job-' || i, 'Job ' || i, a,
       activity_at - :per_thread::bigint * 60000000, activity_at, :per_thread, activity_at
FROM seed_threads;

INSERT INTO thread_keys (participants_key, job_key, thread_id)
SELECT participants_key, job_key, id FROM threads;

INSERT INTO thread_participants (thread_id, user_id, last_read_seq, last_seq, activity_at)
SELECT id, a, CASE WHEN i % 20 = 0 THEN :per_thread - 1 - i % 7 ELSE :per_thread END,
       :per_thread, activity_at FROM seed_threads
UNION ALL
SELECT id, b, :per_thread, :per_thread, activity_at FROM seed_threads;
COMMIT;

-- Messages in slices, so progress shows and no one transaction is huge.
SELECT format(
    'INSERT INTO messages (id, thread_id, seq, sender_id, message_type, content, metadata, client_msg_id, created_at)
     SELECT md5(t.id::text || ''-'' || s)::uuid, t.id, s,
            CASE WHEN s %% 2 = 0 THEN t.a ELSE t.b END, ''text'',
            ''message '' || s || '' of job '' || t.i || '': the quick brown fox jumps over the lazy dog'',
            ''{}'', ''c-'' || s,
            t.activity_at - (%s - s)::bigint * 60000000
     FROM seed_threads t, generate_series(1, %s) AS s
     WHERE t.i > %s AND t.i <= %s',
    :per_thread, :per_thread, lo, lo + 10000)
FROM generate_series(0, :threads - 1, 10000) AS lo
\gexec

ANALYZE threads;
ANALYZE thread_participants;
ANALYZE messages;
