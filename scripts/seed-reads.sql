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

-- A vocabulary for search: each message carries three of these words, so
-- one word occurs in about 3 % of messages and two given words together
-- in about 0.1 %. Its search vector also holds its participants' member
-- marks, as chat-core writes them (migration 0006).
CREATE TEMP TABLE seed_words AS
SELECT array_agg(w ORDER BY w) AS words FROM unnest(string_to_array(
  'invoice milestone deadline payment refund contract revision draft logo website '
  'mockup wireframe budget estimate schedule meeting feedback approval delivery upload '
  'download attachment screenshot bug feature release deploy server database backend frontend '
  'design color palette font layout banner brochure flyer poster video animation '
  'voiceover script translation proofread article blog copy keyword audit report '
  'spreadsheet invoice2 receipt tax quote proposal scope hourly fixed bonus '
  'tip review rating dispute support account profile portfolio sample prototype '
  'sprint ticket issue branch merge commit test staging production launch '
  'campaign audience analytics conversion funnel landing checkout cart shipping warehouse '
  'inventory catalog product photo retouch illustration icon vector print label', ' ')) AS w;

-- Bulk loading is faster without the search indexes; they are rebuilt after.
DROP INDEX IF EXISTS messages_search;
DROP INDEX IF EXISTS messages_by_time;

-- Messages in slices, so progress shows and no one transaction is huge.
SELECT format(
    'INSERT INTO messages (id, thread_id, seq, sender_id, message_type, content, metadata, client_msg_id, created_at, search)
     SELECT id, thread_id, seq, sender_id, ''text'', content, ''{}'', client_msg_id, created_at,
            to_tsvector(''simple'', lower(content)) || marks
     FROM (SELECT md5(t.id::text || ''-'' || s)::uuid AS id, t.id AS thread_id, s AS seq, t.marks,
            CASE WHEN s %% 2 = 0 THEN t.a ELSE t.b END AS sender_id,
            ''message '' || s || '' of job '' || t.i || '': '' ||
              w.words[1 + (t.i * 7 + s * 13) %% 100] || '' '' ||
              w.words[1 + (t.i * 11 + s * 17 + 29) %% 100] || '' '' ||
              w.words[1 + (t.i * 3 + s * 31 + 53) %% 100] ||
              '', the quick brown fox jumps over the lazy dog'' AS content,
            ''c-'' || s AS client_msg_id,
            t.activity_at - (%s - s)::bigint * 60000000 AS created_at
     FROM (SELECT *, array_to_tsvector(ARRAY[
                  ''~'' || left(encode(sha256(convert_to(a, ''UTF8'')), ''hex''), 16),
                  ''~'' || left(encode(sha256(convert_to(b, ''UTF8'')), ''hex''), 16)]) AS marks
           FROM seed_threads) t, seed_words w, generate_series(1, %s) AS s
     WHERE t.i > %s AND t.i <= %s) m',
    :per_thread, :per_thread, lo, lo + 10000)
FROM generate_series(0, :threads - 1, 10000) AS lo
\gexec

-- The search vocabulary, as chat-core keeps it (migration 0007 filled it
-- before these messages existed).
INSERT INTO search_words (word)
SELECT DISTINCT s.lexeme
FROM messages m, unnest(m.search) AS s(lexeme, positions, weights)
WHERE left(s.lexeme, 1) <> '~'
ON CONFLICT DO NOTHING;

CREATE INDEX messages_search ON messages USING GIN (search);
CREATE INDEX messages_by_time ON messages (created_at DESC, id DESC);

ANALYZE threads;
ANALYZE thread_participants;
ANALYZE messages;
ANALYZE search_words;
