-- The outbox relay claims rows for a while instead of holding their row locks (issue #18):
-- it used to keep a transaction open while it waited for the broker's confirms, up to the
-- publish timeout (60 s), an idle-in-transaction session per relay during a broker outage.
-- A claim is one statement; publishing needs no transaction; marking is one more. A relay
-- that dies with a claim leaves it to expire, and its rows are published again (the router
-- drops repeats by message id).
ALTER TABLE outbox ADD COLUMN claimed_until timestamptz;

-- The relay deletes rows a day after they were published: the outbox is a queue, not a
-- history (the messages table is).
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
