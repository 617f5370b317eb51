-- The per-notification path, measured with `just bench-e2e` (issue #4).
--
-- Every index on `deliveries` is written for each of the three versions a delivery row goes
-- through (written, job published, final), and `messages` is updated twice per message.
-- Indexes nothing reads are dropped:
-- * `deliveries_by_message`: the unique key (message_id, user_id, channel, address) starts
--   with message_id and serves the same lookups;
-- * `deliveries_unpublished`: a pass that finds rows of an earlier, interrupted pass reads the
--   message's pending rows (`deliveries_pending`) and checks `job_published_at` on them; that
--   is rare, the index cost every row.
DROP INDEX deliveries_by_message;
DROP INDEX deliveries_unpublished;

-- The end of a fan-out, in one round trip: lock the message (delivery events lock it too, so
-- neither misses the other's last change), fail what an interrupted earlier pass wrote and
-- this one did not plan again, and set `fanned_out` or `completed`. PL/pgSQL takes a fresh
-- snapshot per statement, so the pending check sees every event committed before the lock.
CREATE FUNCTION herald_finish_fanout(p_message uuid, p_started timestamptz, p_sweep boolean,
                                     OUT status text, OUT abandoned integer)
LANGUAGE plpgsql AS $$
BEGIN
    abandoned := 0;
    SELECT m.status INTO status FROM messages m WHERE m.id = p_message FOR UPDATE;
    IF status IS DISTINCT FROM 'accepted' THEN
        RETURN;
    END IF;
    IF p_sweep THEN
        UPDATE deliveries d SET status = 'failed', failure_class = 'permanent',
            failure_code = 'recipient_changed',
            failure_message = 'the address or registration was removed while the message was being fanned out',
            updated_at = now()
        WHERE d.message_id = p_message AND d.status = 'pending' AND d.job_published_at IS NULL
          AND d.created_at < p_started;
        GET DIAGNOSTICS abandoned = ROW_COUNT;
    END IF;
    UPDATE messages m SET
        status = CASE WHEN p.pending THEN 'fanned_out' ELSE 'completed' END,
        completed_at = CASE WHEN p.pending THEN NULL ELSE now() END
    FROM (SELECT EXISTS (SELECT 1 FROM deliveries d
                         WHERE d.message_id = p_message AND d.status = 'pending') AS pending) p
    WHERE m.id = p_message
    RETURNING m.status INTO status;
END
$$;

-- Room in each page for the row's next version: marking a job published changes no indexed
-- column, so with space on the page the update is HOT and touches no index. Measured with
-- bench-e2e's 100k fan-out: the mark went from 10.2 ms to 2.5 ms per 1,000 rows. The table
-- takes more pages for it.
ALTER TABLE deliveries SET (fillfactor = 60);
