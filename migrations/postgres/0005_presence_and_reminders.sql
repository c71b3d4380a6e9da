-- Presence and offline reminders.
--
-- Gateways report transitions only (a user's first socket on a gateway
-- opened, their last one closed) and renew one lease each; nothing here is
-- written per socket or per heartbeat.

-- One row per gateway that reported presence: its users count as connected
-- while expires_at (microseconds since the epoch) lies ahead.
CREATE TABLE gateway_leases (
    gateway_id TEXT   PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- A user holds at least one socket on this gateway.
CREATE TABLE presence (
    user_id    TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    PRIMARY KEY (user_id, gateway_id)
);

-- The sweeper drops a dead gateway's rows.
CREATE INDEX presence_by_gateway ON presence (gateway_id);

-- What the user's co-participants were last told. `offline_since` is set
-- when the user's last socket closed and the grace period is running; the
-- sweeper announces them offline once it has passed with no socket back.
CREATE TABLE user_presence (
    user_id       TEXT    PRIMARY KEY,
    online        BOOLEAN NOT NULL DEFAULT FALSE,
    last_seen_at  BIGINT,
    offline_since BIGINT
);

CREATE INDEX user_presence_going_offline ON user_presence (offline_since)
    WHERE offline_since IS NOT NULL;

-- The read cursor at the time of the last unread reminder for this
-- (thread, user): no further reminder until the cursor moves past it.
ALTER TABLE thread_participants ADD COLUMN reminded_read_seq BIGINT;
