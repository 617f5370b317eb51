-- What the router's send-queue watchdog last saw of each channel's senders (issue #18), so
-- the API can tell a producer why a delivery is still pending (R4 c) while the channel's
-- provider is down and its senders wait for it, or while no sender runs at all.
-- One row per channel, overwritten by every router replica's watchdog on every tick.
CREATE UNLOGGED TABLE channel_health (
    channel    text        PRIMARY KEY,
    -- Consumers of the channel's send queue: senders taking jobs.
    senders    integer     NOT NULL,
    -- Consumers of its standby queue: senders paused by their circuit breaker.
    paused     integer     NOT NULL,
    -- Jobs ready in the send queue.
    waiting    integer     NOT NULL,
    checked_at timestamptz NOT NULL
);
