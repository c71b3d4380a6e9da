-- Search by participant: every message's `search` also holds a mark for
-- each participant of its thread ('~' and the first 16 hex digits of the
-- SHA-256 of the user id; chat-core's search module computes the same),
-- so a user's search across their threads asks the text index for their
-- mark along with the words, and reads only their own matches.
--
-- Rewrites every message row once; the index is rebuilt after rather than
-- updated row by row.
DROP INDEX IF EXISTS messages_search;

UPDATE messages m SET search = coalesce(m.search, ''::tsvector) || array_to_tsvector(ARRAY(
    SELECT '~' || left(encode(sha256(convert_to(p.user_id, 'UTF8')), 'hex'), 16)
    FROM thread_participants p WHERE p.thread_id = m.thread_id));

CREATE INDEX messages_search ON messages USING GIN (search);
