-- Outbox rows the broker refuses for good (issue: a poison row blocked the relay).
--
-- A row no queue is bound for (or whose exchange does not exist) would fail its batch on every
-- pass and hold up every row behind it. The relay now counts such refusals per row and, after
-- a few, gives the row up: `failed_at` takes it out of the relay's sight, and `last_error`
-- says why, for an operator to fix the topology and clear `failed_at` to send it again.
-- Broker outages are not counted: a row waits through an outage however long it lasts.
-- Refusals are spaced out (`retry_at`, doubling from 15 s), so a binding missing only for a
-- moment (a topology being redeclared) does not use the row's attempts up in one second.
ALTER TABLE outbox
    ADD COLUMN attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    ADD COLUMN retry_at   timestamptz,
    ADD COLUMN failed_at  timestamptz;

-- What the relay claims, and what the backlog gauge counts: given-up rows are neither.
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL AND failed_at IS NULL;

-- The `herald_outbox_failed` gauge, and an operator looking for rows to send again.
CREATE INDEX outbox_failed ON outbox (id) WHERE published_at IS NULL AND failed_at IS NOT NULL;
