-- The fan-out router (issue #4).
--
-- A delivery row is written before its send job is published, and marked here only after the
-- broker confirmed the job. When the router dies between the two, the redelivered request
-- publishes exactly the rows that are still unmarked; rows already marked are not sent again.
ALTER TABLE deliveries ADD COLUMN job_published_at timestamptz;

-- What a redelivered request (and the sweep at the end of a fan-out) looks for.
CREATE INDEX deliveries_unpublished ON deliveries (message_id)
    WHERE status = 'pending' AND job_published_at IS NULL;

