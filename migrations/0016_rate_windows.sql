-- Request counts per rate-limit key and minute, shared by every API replica (issue #17):
-- each replica adds what it let through a few times a second and reads the others' counts
-- back, so a limit holds for the service as a whole rather than per replica.
-- Unlogged: counts of the last two minutes are worth neither WAL nor replication, and a
-- crash that empties the table only gives every caller a fresh minute.
CREATE UNLOGGED TABLE rate_windows (
    key    text   NOT NULL,
    -- Unix time in whole minutes.
    minute bigint NOT NULL,
    count  bigint NOT NULL,
    PRIMARY KEY (key, minute)
);
