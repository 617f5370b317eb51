-- Producers on the broker bound to tenants (issue #17, part 2). RabbitMQ checks a message's
-- `user_id` property against the user of the connection that published it; the router
-- maps that user to the one tenant it may publish for, and dead-letters a request that names
-- another (`tenant_mismatch`). Herald's own service users are not in this table: the router
-- knows them from `amqp.service_users`.
CREATE TABLE broker_producers (
    username    text PRIMARY KEY CHECK (length(username) BETWEEN 1 AND 255),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX broker_producers_by_tenant ON broker_producers (tenant_id, username);
