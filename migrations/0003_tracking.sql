-- Delivery tracking and outcomes (issue #4).
--
-- A message's outcome (R4) is published after the transaction that completed the message.
-- This marks it published, so a router that died in between publishes it on redelivery of
-- the event, and a repeat does not publish it twice.
ALTER TABLE messages ADD COLUMN outcome_published_at timestamptz;

-- Finished messages whose outcome is still to be published.
CREATE INDEX messages_outcome_unpublished ON messages (id)
    WHERE status IN ('completed', 'failed') AND outcome_published_at IS NULL;
