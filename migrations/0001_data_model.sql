-- Herald's data model. Everything but the global admin's keys belongs to exactly one tenant
-- (R10); every tenant-owned table carries tenant_id so that every query can filter on it.
-- Enumerations are text with CHECK constraints rather than PostgreSQL enums: adding a channel
-- is then a migration of one constraint, not an ALTER TYPE that cannot run in a transaction.

CREATE TABLE tenants (
    id           uuid PRIMARY KEY,
    key          text NOT NULL UNIQUE CHECK (key ~ '^[a-z][a-z0-9-]{0,62}$'),
    name         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- API keys are shown once and stored as SHA-256 of the key (R19): keys are long and random,
-- so a fast hash is safe and lets every request be checked with one indexed lookup.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    tenant_id    uuid REFERENCES tenants (id) ON DELETE CASCADE,   -- NULL: global admin
    role         text NOT NULL CHECK (role IN ('global_admin', 'tenant_admin', 'user')),
    user_id      text,                                              -- the tenant's id of the person, for role user
    name         text NOT NULL,
    prefix       text NOT NULL,                                     -- first characters, to tell keys apart
    hash         bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CHECK ((role = 'global_admin') = (tenant_id IS NULL)),
    CHECK (role <> 'user' OR user_id IS NOT NULL)
);

-- People, by the tenant's own id for them (R1).
CREATE TABLE users (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    external_id       text NOT NULL,
    locale            text,
    preferred_channel text CHECK (preferred_channel IN ('telegram', 'discord', 'xmpp', 'email', 'sms')),
    delivery_mode     text NOT NULL DEFAULT 'all' CHECK (delivery_mode IN ('all', 'preferred')),   -- R2
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, external_id)
);

-- A person's addresses, one per chat, mailbox or number (R2, R3, R5, R6).
CREATE TABLE addresses (
    id                        uuid PRIMARY KEY,
    tenant_id                 uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id                   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel                   text NOT NULL CHECK (channel IN ('telegram', 'discord', 'xmpp', 'email', 'sms')),
    kind                      text NOT NULL CHECK (kind IN ('telegram', 'discord', 'xmpp', 'xmpp_room', 'email', 'sms')),
    value                     text NOT NULL,
    display_name              text,
    verified                  boolean NOT NULL DEFAULT false,
    state                     text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'unreachable', 'removed')),
    state_reason              text,
    state_changed_at          timestamptz,
    last_success_at           timestamptz,
    failure_streak_started_at timestamptz,       -- first failure of the current streak (R3)
    failure_count             integer NOT NULL DEFAULT 0,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, kind, value)
);
CREATE INDEX addresses_active_by_user ON addresses (user_id) WHERE state = 'active';
CREATE INDEX addresses_by_tenant ON addresses (tenant_id, user_id);

-- Every change of an address's state, with its reason: R3 asks that removals are recorded.
CREATE TABLE address_state_changes (
    id          bigserial PRIMARY KEY,
    address_id  uuid NOT NULL REFERENCES addresses (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL,
    state       text NOT NULL,
    reason      text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX address_state_changes_by_address ON address_state_changes (address_id, changed_at);

-- Topics people opt into (R11).
CREATE TABLE subscriptions (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key             text NOT NULL CHECK (key ~ '^[A-Za-z_]{1,64}$'),
    label           text NOT NULL,
    description     text NOT NULL DEFAULT '',
    system          boolean NOT NULL DEFAULT false,
    enabled         boolean NOT NULL DEFAULT true,
    fallback_locale text NOT NULL DEFAULT 'en',
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text NOT NULL,
    UNIQUE (tenant_id, key)
);

-- A person subscribed on one channel address (R12).
CREATE TABLE registrations (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    subscription_id uuid NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('telegram', 'discord', 'xmpp', 'email', 'sms')),
    address         text NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subscription_id, user_id, channel, address)
);
-- The router streams a subscription's enabled registrations in id order (keyset pagination).
CREATE INDEX registrations_fanout ON registrations (subscription_id, id) WHERE enabled;
CREATE INDEX registrations_by_user ON registrations (tenant_id, user_id, id);

-- Subject and body per channel and locale (R13). channel NULL: any channel without its own.
CREATE TABLE templates (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    subscription_id uuid NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    channel         text CHECK (channel IN ('telegram', 'discord', 'xmpp', 'email', 'sms')),
    locale          text NOT NULL,
    subject         text,
    body            text NOT NULL,
    html            text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (subscription_id, channel, locale)
);

-- One accepted request (R1, R4, R14). The idempotency key is unique per tenant (R44).
CREATE TABLE messages (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    idempotency_key  text,
    source           text NOT NULL CHECK (source IN ('api', 'amqp', 'legacy', 'schedule', 'event')),
    subscription_id  uuid REFERENCES subscriptions (id) ON DELETE SET NULL,
    request          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'accepted' CHECK (status IN ('accepted', 'fanned_out', 'completed', 'failed')),
    error_code       text,
    error_message    text,
    reply_to         text,
    correlation_id   text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX messages_by_tenant ON messages (tenant_id, created_at DESC, id);

-- One row per (message, address): the unique key is what makes fan-out exactly once (R15).
CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    message_id      uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    subscription_id uuid REFERENCES subscriptions (id) ON DELETE SET NULL,
    user_id         uuid REFERENCES users (id) ON DELETE SET NULL,
    address_id      uuid REFERENCES addresses (id) ON DELETE SET NULL,
    channel         text CHECK (channel IN ('telegram', 'discord', 'xmpp', 'email', 'sms')),
    address         text,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    failure_class   text CHECK (failure_class IN ('temporary', 'permanent', 'unhealthy')),
    failure_code    text,
    failure_message text,
    attempts        integer NOT NULL DEFAULT 0,
    next_retry_at   timestamptz,
    sent_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (message_id, user_id, channel, address)
);
CREATE INDEX deliveries_by_message ON deliveries (message_id);
CREATE INDEX deliveries_by_tenant ON deliveries (tenant_id, created_at DESC, id);
CREATE INDEX deliveries_by_user ON deliveries (tenant_id, user_id, created_at DESC);
CREATE INDEX deliveries_by_subscription ON deliveries (tenant_id, subscription_id, created_at DESC);
CREATE INDEX deliveries_pending ON deliveries (message_id) WHERE status = 'pending';

-- Cron-like triggers (R14); the router claims due rows with FOR UPDATE SKIP LOCKED.
CREATE TABLE schedules (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    subscription_id  uuid NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    cron             text NOT NULL,
    time_zone        text NOT NULL DEFAULT 'UTC',
    event_parameters jsonb NOT NULL DEFAULT '{}',
    enabled          boolean NOT NULL DEFAULT true,
    next_run_at      timestamptz NOT NULL,
    last_run_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE enabled;

-- Subscriptions fired by an event type (R14): `audit.login` -> login_alerts.
CREATE TABLE event_bindings (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    event_type      text NOT NULL CHECK (event_type ~ '^[a-z0-9_-]+(\.[a-z0-9_-]+)*$'),
    subscription_id uuid NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, event_type, subscription_id)
);

-- Single-use, short-lived codes a person sends to a chat bot to link that chat (R5).
-- Stored hashed, like API keys: a leaked table does not leak usable codes.
CREATE TABLE link_codes (
    code_hash   bytea PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel     text CHECK (channel IN ('telegram', 'discord', 'xmpp', 'email', 'sms')),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Messages accepted over HTTP wait here, written in the same transaction as the message, until
-- the relay has them confirmed by the broker: 202 Accepted survives a broker outage.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    exchange     text NOT NULL,
    routing_key  text NOT NULL,
    message_id   text NOT NULL,
    payload      bytea NOT NULL,
    reply_to     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- The first response to a request with an Idempotency-Key header, returned again for repeats.
CREATE TABLE idempotent_responses (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key         text NOT NULL,
    method      text NOT NULL,
    path        text NOT NULL,
    status      integer NOT NULL,
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
