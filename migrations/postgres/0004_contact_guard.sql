-- The off-platform contact guard.
--
-- A thread may carry its own policy (NULL: the deployment's CONTACT_POLICY
-- applies). A message whose text held contact details keeps what was
-- found (`flags`, comma-separated kinds) and, under the `mask` policy, the
-- content users are shown; `content` stays as sent (services read it).
ALTER TABLE threads
    ADD COLUMN contact_policy TEXT CHECK (contact_policy IN ('off', 'flag', 'mask', 'block'));

ALTER TABLE messages
    ADD COLUMN flags          TEXT,
    ADD COLUMN masked_content TEXT;

-- A blocked message is never stored, but its moderation event is: an
-- integration event need not name a message.
ALTER TABLE integration_events ALTER COLUMN message_id DROP NOT NULL;
