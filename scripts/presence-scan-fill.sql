-- 1,000,000 participant rows (500,000 threads of two), 10% with unread
-- messages, one message per unread row; then the reminder scan's probe.
INSERT INTO threads (id, participants_key, job_key, created_by, created_at, activity_at, last_seq)
SELECT md5(i::text)::uuid, md5(i::text), '', 'u' || i, 0, 0, CASE WHEN i % 10 = 0 THEN 1 ELSE 0 END
FROM generate_series(1, 500000) i;
INSERT INTO thread_participants (thread_id, user_id, last_read_seq, last_seq, activity_at)
SELECT md5(i::text)::uuid, 'u' || i || '-' || p, CASE WHEN p = 0 THEN (CASE WHEN i % 10 = 0 THEN 1 ELSE 0 END) ELSE 0 END,
       CASE WHEN i % 10 = 0 THEN 1 ELSE 0 END, 0
FROM generate_series(1, 500000) i, generate_series(0, 1) p;
INSERT INTO messages (id, thread_id, seq, sender_id, message_type, content, metadata, created_at)
SELECT md5('m' || i)::uuid, md5(i::text)::uuid, 1, 'u' || i || '-0', 'text', 'hi', '{}', 0
FROM generate_series(1, 500000) i WHERE i % 10 = 0;
-- Everyone due was reminded already (the steady state: the probe finds nothing).
UPDATE thread_participants SET reminded_read_seq = 0 WHERE last_seq > last_read_seq;
VACUUM ANALYZE;
